"""training.export: bundle written by export_bundle runs in the runtime, ORT and TorchScript
match torch, one provenance schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_bilevel_fusion.backends import create_backend
from ros2_bilevel_fusion.core.bundle import load_bundle
from training import export
from training.models import build_export_model

torch.set_num_threads(1)
FULL_ARCHITECTURE = {"fusion": "realtime", "detector": {"num_classes": 3},
                     "segmenter": {"num_classes": 4}}
# multiples of the pad multiple (32), one square and one not, small to keep CI fast
PARITY_SIZES = [(64, 64), (96, 160)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_export_model(FULL_ARCHITECTURE).eval()
    out = tmp_path_factory.mktemp("bundle") / "untrained_realtime"
    export.export_bundle(model, out, name="untrained_realtime", sample_hw=(64, 96),
                         provenance={"config": {"note": "untrained, test only"}})
    return model, out


def test_bundle_is_complete_and_loadable(exported: tuple[torch.nn.Module, Path]) -> None:
    _, out = exported
    assert {p.name for p in out.iterdir()} >= {"model.yaml", "model.onnx", "model.pt"}
    bundle = load_bundle(out)
    assert bundle.name == "untrained_realtime"
    assert bundle.inputs.pad_multiple == 32 and bundle.inputs.height == 0
    assert bundle.detection is not None and bundle.segmentation is not None
    assert [level.stride for level in bundle.detection.levels] == [8, 16, 32]
    assert bundle.detection.classes == ("person", "bicycle", "car")
    assert bundle.segmentation.classes[0] == "background"
    assert bundle.provenance["architecture"] == FULL_ARCHITECTURE
    assert bundle.provenance["config"] == {"note": "untrained, test only"}
    assert len(bundle.provenance["git_commit"]) in (40, len("unknown"))


def test_onnxruntime_matches_torch(exported: tuple[torch.nn.Module, Path]) -> None:
    model, out = exported
    report = export.check_parity(model, out, PARITY_SIZES)
    assert set(report) == {"64x64", "96x160", "max"}
    assert report["max"]["fused_y"] < 1e-3
    for name, diff in report["max"].items():
        assert diff < 1e-3, (name, diff)


def test_runtime_backends_accept_the_bundle(exported: tuple[torch.nn.Module, Path]) -> None:
    model, out = exported
    bundle = load_bundle(out)
    rng = np.random.default_rng(0)
    ir = rng.random((1, 1, 96, 128), dtype=np.float32)
    visible = rng.random((1, 3, 96, 128), dtype=np.float32)
    ort_outputs = create_backend("onnxruntime", bundle, threads=1).infer(ir, visible)
    assert list(ort_outputs) == bundle.output_names
    assert ort_outputs["fused_y"].shape == (1, 1, 96, 128)
    assert ort_outputs["det_cls_s8"].shape == (1, 3, 12, 16)
    assert ort_outputs["seg_logits"].shape == (1, 4, 96, 128)
    # the torch backend loads the TorchScript file named in model.yaml
    assert bundle.torchscript_path == bundle.folder / "model.pt"
    torch_outputs = create_backend("torch", bundle, threads=1).infer(ir, visible)
    for name in bundle.output_names:
        np.testing.assert_allclose(torch_outputs[name], ort_outputs[name], atol=1e-3)


def test_paper_fusion_only_bundle(tmp_path: Path) -> None:
    torch.manual_seed(0)
    architecture = {"fusion": "paper", "detector": None, "segmenter": None}
    model = build_export_model(architecture).eval()
    export.export_bundle(model, tmp_path, name="paper_only", provenance={}, sample_hw=(32, 64))
    bundle = load_bundle(tmp_path)
    assert bundle.output_names == ["fused_y"] and bundle.detection is None
    report = export.check_parity(model, tmp_path, [(32, 32), (64, 96)])
    assert report["max"]["fused_y"] < 1e-3


def trainer_checkpoint(path: Path) -> dict:
    """A checkpoint in the trainer's format (untrained weights)."""
    torch.manual_seed(1)
    model = build_export_model(FULL_ARCHITECTURE)
    checkpoint = {
        "architecture": FULL_ARCHITECTURE,
        "fusion": model.fusion.state_dict(),
        "detector": model.detector.state_dict(),
        "segmenter": model.segmenter.state_dict(),
        "config": {"steps": 0},
        "step": 0,
        "metrics": {"score": 0.5, "eval/fusion/EN": float("nan"), "note": "untrained"},
    }
    torch.save(checkpoint, path)
    return checkpoint


def test_cli_exports_a_trainer_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = trainer_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "models" / "from_ckpt"
    assert export.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(out),
                        "--check-parity", "--score-threshold", "0.45"]) == 0
    printed = capsys.readouterr().out
    assert "parity ORT vs torch" in printed
    bundle = load_bundle(out)
    assert bundle.name == "from_ckpt"
    assert bundle.detection is not None and bundle.detection.score_threshold == 0.45
    assert bundle.detection.nms_iou == 0.5 and bundle.detection.max_detections == 100
    assert bundle.fused_stretch is None  # not asked for: the network's output as it is
    # one provenance schema: finite metrics only, under "metrics"
    assert bundle.provenance["step"] == 0 and bundle.provenance["metrics"] == {"score": 0.5}
    assert set(bundle.provenance) == {
        "architecture", "checkpoint", "step", "config", "metrics", "git_commit", "exported_at",
        "opset",
    }
    # the checkpoint's weights, not fresh ones, are what was exported
    state = export.model_from_torchscript(out / "model.pt", FULL_ARCHITECTURE).state_dict()
    torch.testing.assert_close(
        state["fusion.detail_in.0.weight"], checkpoint["fusion"]["detail_in.0.weight"]
    )


def test_export_defaults_are_the_bundle_contracts(tmp_path: Path) -> None:
    """No threshold is restated in training: unset, the export writes core.bundle's defaults."""
    from ros2_bilevel_fusion.core.bundle import DetectionSpec

    trainer_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "b"
    export.export_checkpoint(tmp_path / "ckpt.pt", out)
    written = load_bundle(out).detection
    contract = DetectionSpec(classes=(), levels=())
    assert written is not None
    assert (written.score_threshold, written.nms_iou, written.max_detections) == (
        contract.score_threshold, contract.nms_iou, contract.max_detections
    )


def test_export_writes_the_fused_stretch_it_is_given(tmp_path: Path) -> None:
    from ros2_bilevel_fusion.core.bundle import FusedStretchSpec

    trainer_checkpoint(tmp_path / "ckpt.pt")
    assert export.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "b"),
                        "--fused-stretch", "0.5:99.5"]) == 0
    assert load_bundle(tmp_path / "b").fused_stretch == FusedStretchSpec(0.5, 99.5)
    with pytest.raises(SystemExit):  # argparse's message, not a traceback
        export.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "c"),
                     "--fused-stretch", "min-max"])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_eager_at_sizes_other_than_the_trace(
    exported: tuple[torch.nn.Module, Path],
) -> None:
    model, out = exported  # traced at 64x96
    with torch.no_grad():
        for hw in ((32, 32), (96, 160), (128, 64)):
            ir, visible = torch.rand(1, 1, *hw), torch.rand(1, 3, *hw)
            scripted = torch.jit.load(str(out / "model.pt"))(ir, visible)
            for a, b in zip(model(ir, visible), scripted, strict=True):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_torch_backend_runs_without_the_training_package(
    exported: tuple[torch.nn.Module, Path],
) -> None:
    _, out = exported
    code = (
        "import sys, numpy as np\n"
        "sys.modules['training'] = None  # any import of training now fails\n"
        "from ros2_bilevel_fusion.backends import create_backend\n"
        "from ros2_bilevel_fusion.core.bundle import load_bundle\n"
        f"b = create_backend('torch', load_bundle({str(out)!r}), threads=1)\n"
        "o = b.infer(np.zeros((1, 1, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.float32))\n"
        "assert o['fused_y'].shape == (1, 1, 32, 32)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_checkpoint_missing_detector_weights_is_an_error(tmp_path: Path) -> None:
    checkpoint = trainer_checkpoint(tmp_path / "ckpt.pt")
    checkpoint["detector"] = None
    with pytest.raises(ValueError, match="no weights"):
        export.model_from_checkpoint(checkpoint)


def test_tensorrt_without_tensorrt_exits_clearly(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    trainer_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="tensorrt"):
        export.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "b"),
                     "--tensorrt"])


def test_last_stage_export_of_the_shipped_weights_is_the_shipped_bundle(
    tmp_path: Path, repo_root: Path
) -> None:
    """training.train's export path (export.export_checkpoint with the export section of the
    config the shipped bundle names, configs/perception_semantic.yaml) on a trainer checkpoint
    of the shipped weights writes models/default again: the same model.yaml apart from when and
    from which commit, and the same ONNX outputs (to float rounding)."""
    from ros2_bilevel_fusion.core.bundle import bundle_to_dict, parse_fused_stretch
    from training.config import load_config

    shipped_dir = repo_root / "models" / "default"
    shipped = load_bundle(shipped_dir)
    architecture = shipped.provenance["architecture"]
    model = export.model_from_torchscript(shipped_dir / "model.pt", architecture)
    stage = shipped.provenance["config"]["name"]
    config = load_config(repo_root / "training" / "configs" / f"{stage}.yaml")
    checkpoint = {
        "architecture": architecture,
        "fusion": model.fusion.state_dict(),
        "detector": model.detector.state_dict(),
        "segmenter": model.segmenter.state_dict(),
        "config": config.to_dict(),
        "step": shipped.provenance["step"],  # best.pt: the best msrs_det:val mAP@0.5
        "data": shipped.provenance["data"],
        "metrics": shipped.provenance["metrics"],
        "detector_provenance": {
            k: v for k, v in shipped.provenance.items() if k.startswith("pretrained_detector")
        },
        "segmenter_provenance": {
            k: v for k, v in shipped.provenance.items()
            if k.startswith("pretrained_segmenter") or k == "segmenter_backbone"
        },
    }
    run_dir = tmp_path / "runs" / stage
    run_dir.mkdir(parents=True)
    torch.save(checkpoint, run_dir / "last.pt")
    out = tmp_path / "bundle"
    export.export_checkpoint(
        run_dir / "last.pt", out, name=config.export.name,
        score_threshold=config.export.score_threshold, nms_iou=config.export.nms_iou,
        max_detections=config.export.max_detections,
        fused_stretch=parse_fused_stretch(config.export.fused_stretch),
    )
    rebuilt = load_bundle(out)
    mine, theirs = bundle_to_dict(rebuilt), bundle_to_dict(shipped)
    mine_provenance, theirs_provenance = mine.pop("provenance"), theirs.pop("provenance")
    # the int8 graph is added afterwards by python -m training.quantize (test_precision.py)
    for key in ("precisions", "default_precision"):
        theirs.pop(key, None)
    theirs_provenance.pop("quantization", None)
    assert mine == theirs  # name, inputs, detection (yolox, threshold 0.35), segmentation, ...
    assert set(mine_provenance) == set(theirs_provenance)
    assert rebuilt.torchscript_path.name == shipped.torchscript_path.name == "model.pt"
    for key in ("architecture", "step", "data", "opset", "metrics", "pretrained_detector_sha256",
                "pretrained_segmenter_sha256"):
        assert mine_provenance[key] == theirs_provenance[key], key
    ir, visible = export._sample_inputs((96, 128), seed=5)
    feeds = {"ir": ir.numpy(), "visible_ycrcb": visible.numpy()}
    got = create_backend("onnxruntime", rebuilt, threads=1).infer(*feeds.values())
    want = create_backend("onnxruntime", shipped, threads=1).infer(*feeds.values())
    worst = {name: float(np.abs(got[name] - want[name]).max()) for name in shipped.output_names}
    # not bit for bit: the exporter's constant folding orders a few float sums differently
    assert worst["fused_y"] < 1e-6 and max(worst.values()) < 1e-5, worst
