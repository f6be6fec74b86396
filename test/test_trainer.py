"""The trainer end to end at a tiny size: smoke training + export + parity, exact resume, the
baseline modes, and data-parallel training under torchrun (gloo, 2 processes).

Uses the real data folder (../shared/data) and SYNTHETIC labelled scenes; skipped when the
data folder is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.trainer import DistInfo, Trainer, batch_indices, load_config

SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke.yaml"
TINY = [
    "steps=4", "warmup_steps=1", "crop=64", "batch_size=1", "eval.every=0",
    "checkpoint_every=0", "no_tensorboard=true", "export.enabled=false",
    "data.synthetic_train=4", "data.synthetic_eval=2",
]


@pytest.fixture(autouse=True)
def _one_thread(shared_data: Path) -> None:  # shared_data: skip without the real data
    torch.set_num_threads(1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tiny_config(tmp_path: Path, *extra: str) -> dict:
    return load_config(SMOKE, [*TINY, f"out_dir={tmp_path}", *extra])


def _comparable(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def test_smoke_config_trains_exports_and_passes_parity(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "smoke"
    result = subprocess.run(
        [
            sys.executable, "-m", "training.train", "--config", str(SMOKE), "--quiet",
            "--override", f"out_dir={out}", f"export.out={out / 'bundle'}",
        ],
        cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "parity max abs diff" in result.stdout
    for name in ("last.pt", "best.pt", "history.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert rows[0]["mode/bilevel"] == 0.0 and rows[-1]["mode/bilevel"] == 1.0  # warm start
    assert "eval/fusion/VIF" in rows[-1] and "eval/msrs/mAP50" in rows[-1]
    weights = [rows[-1][f"weight/{k}"] for k in ("discriminator", "detector", "segmenter")]
    assert sum(weights) == pytest.approx(1.0)
    model_yaml = yaml.safe_load((out / "bundle" / "model.yaml").read_text())
    assert model_yaml["provenance"]["config"]["name"] == "smoke"
    assert model_yaml["provenance"]["architecture"]["fusion"] == "realtime"
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    for key in ("architecture", "fusion", "detector", "segmenter", "discriminator",
                "optimizers", "aggregator", "rng", "config", "step", "best_metric"):
        assert key in checkpoint, key
    assert checkpoint["step"] == 4


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path / "a", "aggregation.kind=loss_rate", "aggregation.ema=0.5")
    config["steps"] = 2
    uninterrupted = Trainer(config, quiet=True)
    uninterrupted.train()
    saved = tmp_path / "at_step_2.pt"
    uninterrupted.save_checkpoint(saved)
    uninterrupted.config["steps"] = 5
    reference = uninterrupted.train()[2:]

    config_b = _tiny_config(tmp_path / "b", "aggregation.kind=loss_rate", "aggregation.ema=0.5")
    config_b["steps"] = 5
    resumed = Trainer(config_b, resume=saved, quiet=True)
    assert resumed.step == 2
    got = resumed.train()
    assert len(got) == len(reference) == 3
    for a, b in zip(reference, got, strict=True):
        assert _comparable(a) == _comparable(b)
    assert got[-1]["mode/bilevel"] == 1.0 and "weight/detector" in got[-1]
    for p, q in zip(uninterrupted.fusion.parameters(), resumed.fusion.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_different_step_draws_different_data_and_losses(tmp_path: Path) -> None:
    history = Trainer(_tiny_config(tmp_path), quiet=True).train()
    assert history[1]["fusion/fusion"] != history[2]["fusion/fusion"]


@pytest.mark.parametrize("mode", ["joint", "fusion_only"])
def test_baseline_modes_train(tmp_path: Path, mode: str) -> None:
    trainer = Trainer(_tiny_config(tmp_path, f"mode={mode}", "steps=2"), quiet=True)
    before = [p.detach().clone() for p in trainer.fusion.parameters()]
    history = trainer.train()
    assert all(row["mode/bilevel"] == 0.0 for row in history)
    changed = any(
        not torch.equal(a, b) for a, b in zip(before, trainer.fusion.parameters(), strict=True)
    )
    assert changed
    if mode == "fusion_only":
        assert "discriminator" not in trainer.nets and "lower/detector" in history[-1]
    else:
        assert "upper/detector" in history[-1] and "lower/discriminator" in history[-1]


def test_fixed_and_grad_norm_aggregation(tmp_path: Path) -> None:
    fixed = Trainer(
        _tiny_config(
            tmp_path / "f", "aggregation.kind=fixed",
            "aggregation.fixed_weights={discriminator: 2, detector: 1, segmenter: 1}",
        ),
        quiet=True,
    ).train()
    assert fixed[-1]["weight/discriminator"] == pytest.approx(0.5)
    norm = Trainer(
        _tiny_config(tmp_path / "g", "aggregation.kind=grad_norm"), quiet=True
    ).train()
    assert sum(norm[-1][f"weight/{k}"] for k in ("discriminator", "detector", "segmenter")) == (
        pytest.approx(1.0)
    )


def test_batch_indices_are_deterministic_and_split_between_ranks() -> None:
    a = batch_indices(10, 3, seed=0, stream=0, step=5, info=DistInfo(0, 2))
    assert a == batch_indices(10, 3, seed=0, stream=0, step=5, info=DistInfo(0, 2))
    b = batch_indices(10, 3, seed=0, stream=0, step=5, info=DistInfo(1, 2))
    assert set(a).isdisjoint(b) or len(set(a) | set(b)) > 3  # ranks draw different samples
    epoch = [batch_indices(10, 1, 0, 0, s, DistInfo()) for s in range(10)]
    assert sorted(i for (i,) in epoch) == list(range(10))  # one epoch = one permutation


def test_config_overrides_and_validation(tmp_path: Path) -> None:
    config = load_config(SMOKE, ["lambdas.detector=0.5", "aggregation.kind=fixed"])
    assert config["lambdas"]["detector"] == 0.5 and config["aggregation"]["kind"] == "fixed"
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {SMOKE}\nmode: joint\n")
    assert load_config(child)["mode"] == "joint"
    assert load_config(child)["crop"] == load_config(SMOKE)["crop"]
    with pytest.raises(ValueError):
        load_config(SMOKE, ["mode=random"])
    with pytest.raises(ValueError):
        load_config(SMOKE, ["crop=100"])
    with pytest.raises(ValueError):
        load_config(SMOKE, ["steps"])


def test_torchrun_two_processes_gloo(tmp_path: Path, repo_root: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            torchrun, "--standalone", "--nproc_per_node", "2", "-m", "training.train",
            "--config", str(SMOKE), "--quiet", "--override", f"out_dir={out}", "steps=3",
            "eval.every=3", "eval.max_images=1", "data.synthetic_train=4",
            "data.synthetic_eval=1", "export.enabled=false",
        ],
        cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world 2" in result.stdout
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["step"] == 3
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["mode/bilevel"] == 1.0


def test_fusion_loss_weights_come_from_the_config(tmp_path: Path) -> None:
    trainer = Trainer(_tiny_config(tmp_path, "fusion_loss={gradient: 20.0}", "steps=1"),
                      quiet=True)
    assert trainer.fusion_loss_weights.gradient == 20.0
    assert trainer.fusion_loss_weights.intensity == 1.0  # losses' default kept
    row = trainer.train()[-1]
    prefix = "fusion_parts/fusion/"
    parts = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
    assert row["fusion/fusion"] == pytest.approx(
        parts["intensity"] + 20.0 * parts["gradient"] + 0.5 * parts["ssim"], rel=1e-5
    )


def test_labelled_pool_repeat_crop_and_defaults(tmp_path: Path) -> None:
    from training.trainer import build_data

    default = build_data(_tiny_config(tmp_path))
    counts = default.provenance["counts"]
    assert counts["labelled/msrs"] == len(default.provenance["msrs_train_names"])
    assert default.pools["labelled"][0]["ir"].shape[-2:] == (64, 64)  # labelled_crop = crop

    data = build_data(_tiny_config(
        tmp_path, "data.msrs_repeat=3", "data.labelled_crop=96",
        "data.labelled_scale_range=[0.5,1.0]",
    ))
    n_msrs = len(data.provenance["msrs_train_names"])
    assert data.provenance["counts"]["labelled/msrs"] == 3 * n_msrs
    assert len(data.pools["labelled"]) == 3 * n_msrs + 4  # + data.synthetic_train scenes
    first, repeated = data.pools["labelled"][0], data.pools["labelled"][n_msrs]
    assert first["name"] == repeated["name"]  # the same pair, listed again
    assert first["ir"].shape[-2:] == (96, 96)
    assert data.pools["labelled"][len(data.pools["labelled"]) - 1]["ir"].shape[-2:] == (96, 96)
    assert data.pools["fusion"][0]["ir"].shape[-2:] == (64, 64)  # fusion pool keeps crop
    with pytest.raises(ValueError):
        build_data(_tiny_config(tmp_path, "data.labelled_crop=100"))
    with pytest.raises(ValueError):
        build_data(_tiny_config(tmp_path, "data.msrs_repeat=-1"))


def test_second_stage_starts_from_weights_and_keeps_a_frozen_fusion_net(tmp_path: Path) -> None:
    """init_from + fusion_only with lr.fusion 0, as configs/default_semantic.yaml."""
    first = Trainer(_tiny_config(tmp_path / "stage1", "steps=2"), quiet=True)
    first.train()
    stage1 = tmp_path / "stage1.pt"
    first.save_checkpoint(stage1)
    second = Trainer(
        _tiny_config(
            tmp_path / "stage2", "steps=2", "mode=fusion_only", "lr.fusion=0.0",
            f"init_from={stage1}", "modules.discriminator=false", "modules.segmenter=false",
        ),
        quiet=True,
    )
    assert second.step == 0 and second.fusion_frozen
    detector_before = [p.detach().clone() for p in second.nets["detector"].parameters()]
    for p, q in zip(first.nets["detector"].parameters(), detector_before, strict=True):
        assert torch.equal(p, q)  # the stage-1 detector is the starting point
    history = second.train()
    assert [row["mode/bilevel"] for row in history] == [0.0, 0.0]
    assert "lower/detector" in history[-1] and "fusion/fusion" not in history[-1]
    for p, q in zip(first.fusion.parameters(), second.fusion.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(detector_before, second.nets["detector"].parameters(), strict=True)
    )
