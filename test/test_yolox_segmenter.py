"""The YOLOX-backbone segmenter (training.models.YoloxSegmenter): COCO features in, a bundle
out, and a few REAL pseudo-labelled steps that move it (skips without ../shared/weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ros2_bilevel_fusion.backends import create_backend  # noqa: E402
from ros2_bilevel_fusion.core.bundle import load_bundle  # noqa: E402
from training import export  # noqa: E402
from training.config import load_config  # noqa: E402
from training.models import (  # noqa: E402
    Architecture,
    ExportModel,
    YoloxSegmenter,
    build_detector,
    build_fusion,
    build_segmenter,
    segmenter_arch,
)
from training.yolox import load_yolox_nano_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "yolox_nano_coco.onnx"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="no ../shared/weights")
ARCH = {
    "fusion": "realtime",
    "detector": {"num_classes": 3, "arch": "yolox_nano"},
    "segmenter": {"num_classes": 4, "arch": "yolox_nano"},
}


def test_architecture_dict_round_trips_and_compact_dicts_stay_as_they_were():
    parsed = Architecture.from_dict(ARCH)
    assert parsed.segmenter_arch == "yolox_nano" and parsed.to_dict() == ARCH
    compact = {"fusion": "realtime", "detector": None, "segmenter": {"num_classes": 4}}
    assert Architecture.from_dict(compact).to_dict() == compact
    with pytest.raises(ValueError, match="segmenter.arch"):
        Architecture.from_dict({"fusion": "realtime", "segmenter": {"num_classes": 4, "arch": "x"}})
    with pytest.raises(ValueError, match="segmenter"):  # module and architecture must agree
        ExportModel(build_fusion("realtime"), None, build_segmenter(4), {
            "fusion": "realtime", "detector": None, "segmenter": ARCH["segmenter"]})


def test_config_section_is_checked():
    smoke = REPO / "training" / "configs" / "smoke.yaml"
    assert load_config(smoke).segmenter.arch == "compact"
    with pytest.raises(ValueError, match="segmenter.arch"):
        load_config(smoke, ["segmenter.arch=unet"])
    with pytest.raises(ValueError, match="pretrained"):
        load_config(smoke, ["segmenter.pretrained=x.onnx"])


@needs_weights
def test_segmenter_starts_from_the_coco_backbone_and_has_no_detection_head():
    segmenter = build_segmenter(4, "yolox_nano", WEIGHTS)
    assert isinstance(segmenter, YoloxSegmenter) and segmenter_arch(segmenter) == "yolox_nano"
    assert len(segmenter.net.heads) == 0
    # the backbone is frozen unless asked: only the head's 4 convolutions learn
    trainable = [n for n, p in segmenter.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("net.") for n in trainable)
    assert all(p.requires_grad for p in build_segmenter(4, "yolox_nano", train_backbone=True)
               .parameters())
    coco = load_yolox_nano_onnx(WEIGHTS, [0])
    for name, value in segmenter.net.state_dict().items():
        torch.testing.assert_close(value, coco.state_dict()[name])
    logits = segmenter(torch.rand(1, 3, 96, 128))
    assert logits.shape == (1, 4, 96, 128)


@needs_weights
def test_bundle_with_the_yolox_segmenter_exports_with_parity_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(3, "yolox_nano", WEIGHTS, [0, 1, 2])
    segmenter = build_segmenter(4, "yolox_nano", WEIGHTS)
    model = ExportModel(build_fusion("realtime"), detector, segmenter, ARCH).eval()
    checkpoint = {
        "architecture": ARCH, "fusion": model.fusion.state_dict(),
        "detector": detector.state_dict(), "segmenter": segmenter.state_dict(), "step": 0,
        "segmenter_provenance": {"pretrained_segmenter": WEIGHTS.name},
    }
    torch.save(checkpoint, tmp_path / "last.pt")
    _, report = export.export_checkpoint(
        tmp_path / "last.pt", tmp_path / "bundle", parity_sizes=[(256, 320)]
    )
    assert not export.parity_failed(report), report
    bundle = load_bundle(tmp_path / "bundle" / "model.yaml")
    assert bundle.provenance["architecture"]["segmenter"]["arch"] == "yolox_nano"
    assert bundle.provenance["pretrained_segmenter"] == WEIGHTS.name
    rebuilt = export.checkpoint_from_bundle(tmp_path / "bundle" / "model.pt")
    for key, value in segmenter.state_dict().items():
        torch.testing.assert_close(rebuilt["segmenter"][key], value)
    ir = np.random.default_rng(0).random((1, 1, 96, 128), dtype=np.float32)
    visible = np.random.default_rng(1).random((1, 3, 96, 128), dtype=np.float32)
    out = create_backend("onnxruntime", bundle, threads=1).infer(ir, visible)
    with torch.no_grad():
        want = model(torch.from_numpy(ir), torch.from_numpy(visible))[-1].numpy()
    assert out["seg_logits"].shape == (1, 4, 96, 128)
    assert np.abs(out["seg_logits"] - want).max() < 1e-3


def test_colour_conversion_as_one_convolution_matches_the_training_path():
    """The exported graph's YCrCb -> BGR 0-255 1x1 conv equals what the YOLOX nets compute from
    the clamped RGB in training (synthetic random YCrCb, including out-of-gamut values)."""
    from training.colour import ycrcb_to_bgr255_affine, ycrcb_to_rgb

    ycrcb = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    weight, bias = ycrcb_to_bgr255_affine()
    fast = torch.nn.functional.conv2d(ycrcb, weight, bias).clamp(0.0, 255.0)
    reference = ycrcb_to_rgb(ycrcb).flip(1) * 255.0
    assert float((fast - reference).abs().max()) < 1e-3  # 0-255 scale: float rounding only
    assert float(reference.min()) == 0.0 and float(reference.max()) == 255.0  # clamps exercised


def test_a_copied_backbone_is_computed_once_and_gives_the_two_networks_outputs(tmp_path):
    """segmenter.backbone_from_detector: the graph runs one backbone for both heads, with the
    outputs the two separate networks give (untrained random weights, synthetic inputs)."""
    from training.colour import colour_image
    from training.models import copy_yolox_backbone, same_yolox_backbone

    torch.manual_seed(0)
    detector = build_detector(3, "yolox_nano")
    segmenter = build_segmenter(4, "yolox_nano")
    model = ExportModel(build_fusion("realtime"), detector, segmenter, ARCH).eval()
    assert not model.shares_backbone()
    copy_yolox_backbone(detector.net, segmenter.net)
    assert same_yolox_backbone(detector.net, segmenter.net) and model.shares_backbone()
    ir = torch.rand(1, 1, 64, 96)
    visible = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        outputs = model(ir, visible)
        fused = model.fusion(ir, visible[:, :1])
        rgb = colour_image(fused, visible)
        reference = [t for level in detector(rgb) for t in level] + [segmenter(rgb)]
    assert len(outputs) == 1 + len(reference)
    for got, want in zip(outputs[1:], reference, strict=True):
        assert float((got - want).abs().max()) < 1e-3
    # the ONNX graph holds one backbone: the shared export has far fewer convolutions
    import onnx

    shared = export.export_onnx(model, tmp_path / "shared.onnx", sample_hw=(64, 96))
    segmenter.net.stem.conv.conv.bias.data += 1.0  # the two backbones differ again
    assert not model.shares_backbone()
    separate = export.export_onnx(model, tmp_path / "separate.onnx", sample_hw=(64, 96))

    def convs(path):
        return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)

    backbone_convs = sum(isinstance(m, torch.nn.Conv2d) for m in segmenter.net.modules())
    assert convs(separate) - convs(shared) == backbone_convs


def test_backbone_from_detector_is_checked_and_copies_the_loaded_detector(tmp_path, shared_data):
    smoke = REPO / "training" / "configs" / "smoke.yaml"
    with pytest.raises(ValueError, match="backbone_from_detector"):
        load_config(smoke, ["segmenter.backbone_from_detector=true"])
    config = load_config(smoke, [
        "detector.arch=yolox_nano", "segmenter.arch=yolox_nano",
        "segmenter.backbone_from_detector=true", f"out_dir={tmp_path / 'run'}",
        "lr.detector=0.0", "steps=2",
    ])
    from training.engine import Trainer
    from training.models import same_yolox_backbone

    trainer = Trainer(config, quiet=True)
    detector, segmenter = trainer.nets["detector"], trainer.nets["segmenter"]
    assert same_yolox_backbone(detector.net, segmenter.net)
    assert trainer.segmenter_provenance["segmenter_backbone"] == "copied from the detector"
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    trainer.train_step()
    trainer.train_step()
    # lr.detector 0 and a frozen segmenter backbone: the graph still shares one backbone
    for key, value in detector.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert same_yolox_backbone(detector.net, segmenter.net)
