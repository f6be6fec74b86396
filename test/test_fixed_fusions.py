"""Parameter-free fusion baselines (visible / infrared / mean) and the detector ablation configs."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from training.config import load_config
from training.models import FIXED_FUSION_NAMES, build_export_model, build_fusion

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ir = torch.rand(2, 1, 12, 16, generator=generator)
    vis_y = torch.rand(2, 1, 12, 16, generator=generator)
    return ir, vis_y


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("visible", lambda ir, y: y),
        ("infrared", lambda ir, y: ir),
        ("mean", lambda ir, y: (ir + y) / 2),
    ],
)
def test_fixed_fusion_gives_the_expected_fused_y(name: str, expected) -> None:
    ir, vis_y = _inputs()
    fusion = build_fusion(name)
    assert sum(p.numel() for p in fusion.parameters()) == 0
    fused = fusion(ir, vis_y)
    assert fused.shape == ir.shape
    assert torch.equal(fused, expected(ir, vis_y))


@pytest.mark.parametrize("name", FIXED_FUSION_NAMES)
def test_fixed_fusion_exports_to_torchscript_and_onnx(name: str) -> None:
    ir, vis_y = _inputs()
    visible_ycrcb = torch.cat((vis_y, torch.full_like(vis_y, 0.5), torch.full_like(vis_y, 0.5)), 1)
    model = build_export_model({"fusion": name, "detector": None, "segmenter": None}).eval()
    reference = model(ir, visible_ycrcb)[0]
    scripted = torch.jit.trace(model, (ir, visible_ycrcb))
    assert torch.equal(scripted(ir, visible_ycrcb)[0], reference)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (ir, visible_ycrcb), buffer, input_names=["ir", "visible_ycrcb"],
        output_names=model.output_names, opset_version=17, dynamo=False,
    )
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ir", "visible_ycrcb"]  # both kept
    (got,) = session.run(None, {"ir": ir.numpy(), "visible_ycrcb": visible_ycrcb.numpy()})
    assert torch.allclose(torch.from_numpy(got), reference, atol=1e-7)


@pytest.mark.parametrize("name", FIXED_FUSION_NAMES)
def test_ablation_config_differs_from_yolox_semantic_only_in_the_fusion(name: str) -> None:
    stem = f"ablation_det_{name}"
    ours = dataclasses.asdict(load_config(CONFIGS / f"{stem}.yaml"))
    base = dataclasses.asdict(load_config(CONFIGS / "yolox_semantic.yaml"))
    assert ours["name"] == stem and ours["fusion"] == name
    assert ours["init_modules"] == ["segmenter"]
    assert ours["export"]["out"] == f"runs/{stem}/bundle" and ours["export"]["name"] == stem
    for key in ("name", "fusion", "init_modules", "export"):
        ours.pop(key), base.pop(key)
    assert ours == base


def test_two_steps_of_the_mean_ablation_train_the_detector_only(
    tmp_path: Path, shared_data: Path, repo_root: Path, stage2_model_pt: Path
) -> None:
    from training.engine import Trainer

    torch.set_num_threads(1)
    config = load_config(
        CONFIGS / "ablation_det_mean.yaml",
        [
            "steps=2", "batch_size=1", "eval.every=0", "checkpoint_every=0",
            "tensorboard=false", "export.enabled=false", "data.labelled_crop=64",
            f"out_dir={tmp_path}", f"init_from={stage2_model_pt}",
        ],
    )
    trainer = Trainer(config, quiet=True)
    assert "fusion" not in trainer.optimizers
    segmenter_before = {k: v.clone() for k, v in trainer.nets["segmenter"].state_dict().items()}
    detector_before = [p.detach().clone() for p in trainer.nets["detector"].parameters()]
    history = trainer.train()
    assert len(history) == 2
    assert all(torch.isfinite(torch.tensor(row["lower/detector"])) for row in history)
    # the segmenter is init_from's (lr 0, eval mode), the detector learned
    for k, v in trainer.nets["segmenter"].state_dict().items():
        assert torch.equal(v, segmenter_before[k]), k
    assert any(
        not torch.equal(p, q)
        for p, q in zip(trainer.nets["detector"].parameters(), detector_before, strict=True)
    )
    checkpoint = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["architecture"]["fusion"] == "mean"
    # the one export path (training.train's): bundle with the fixed fusion, ORT parity
    from training.export import export_checkpoint, parity_failed

    _, report = export_checkpoint(
        tmp_path / "last.pt", tmp_path / "bundle", name="ablation_det_mean",
        parity_sizes=[(64, 96)],
    )
    assert report is not None and not parity_failed(report), report
    assert (tmp_path / "bundle" / "model.onnx").is_file()
    assert (tmp_path / "bundle" / "model.pt").is_file()
