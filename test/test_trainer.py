"""The trainer end to end at a tiny size: smoke training + export + parity, exact resume, the
baseline modes, and data-parallel training under torchrun (gloo, 2 processes).

Uses the real data folder (../shared/data) and SYNTHETIC labelled scenes; skipped when the
data folder is absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.config import TrainConfig, load_config
from training.data import build_data
from training.distributed import DistInfo, batch_indices
from training.engine import Trainer

SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke.yaml"
TINY = [
    "steps=4", "warmup_steps=1", "crop=64", "batch_size=1", "eval.every=0",
    "checkpoint_every=0", "tensorboard=false", "export.enabled=false",
    "data.synthetic_train=4", "data.synthetic_eval=2",
]


@pytest.fixture(autouse=True)
def _one_thread(shared_data: Path) -> None:  # shared_data: skip without the real data
    torch.set_num_threads(1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tiny_config(tmp_path: Path, *extra: str) -> TrainConfig:
    return load_config(SMOKE, [*TINY, f"out_dir={tmp_path}", *extra])


def checkpoint_score(run_dir: Path) -> float:
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    return float(best["metrics"]["score"])


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
    assert "parity ORT vs torch" in result.stdout
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
    assert model_yaml["torchscript"] == "model.pt"
    assert "metrics_at_checkpoint" not in model_yaml["provenance"]  # one schema: "metrics"
    assert model_yaml["provenance"]["metrics"]["score"] == pytest.approx(checkpoint_score(out))
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    for key in ("architecture", "fusion", "detector", "segmenter", "discriminator",
                "optimizers", "aggregator", "rng", "config", "step", "best_metric"):
        assert key in checkpoint, key
    assert checkpoint["step"] == 4


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path / "a", "aggregation.kind=loss_rate", "aggregation.ema=0.5")
    config.steps = 2
    uninterrupted = Trainer(config, quiet=True)
    uninterrupted.train()
    saved = tmp_path / "at_step_2.pt"
    uninterrupted.save_checkpoint(saved)
    uninterrupted.config.steps = 5
    reference = uninterrupted.train()[2:]

    config_b = _tiny_config(tmp_path / "b", "aggregation.kind=loss_rate", "aggregation.ema=0.5")
    config_b.steps = 5
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
    epoch = [batch_indices(10, 1, 0, 0, s, DistInfo()) for s in range(10)]
    assert sorted(i for (i,) in epoch) == list(range(10))  # one epoch = one permutation
    # Within an epoch the ranks' shards are disjoint and together cover the data exactly once:
    # 3 ranks x batch 2 x 4 steps = 24 positions = 2 epochs of 12 samples.
    world = 3
    for epoch_steps in (range(0, 2), range(2, 4)):
        shards = [
            [i for step in epoch_steps
             for i in batch_indices(12, 2, seed=7, stream=1, step=step, info=DistInfo(r, world))]
            for r in range(world)
        ]
        for r in range(world):
            for q in range(r + 1, world):
                assert set(shards[r]).isdisjoint(shards[q]), (r, q, shards)
        assert sorted(i for shard in shards for i in shard) == list(range(12))


def test_config_overrides_and_validation(tmp_path: Path) -> None:
    config = load_config(SMOKE, ["lambdas.detector=0.5", "aggregation.kind=fixed"])
    assert config.lambdas.detector == 0.5 and config.aggregation.kind == "fixed"
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {SMOKE}\nmode: joint\n")
    assert load_config(child).mode == "joint"
    assert load_config(child).crop == load_config(SMOKE).crop
    with pytest.raises(ValueError):
        load_config(SMOKE, ["mode=random"])
    with pytest.raises(ValueError):
        load_config(SMOKE, ["crop=100"])
    with pytest.raises(ValueError):
        load_config(SMOKE, ["steps"])
    # unknown keys are errors that name the key, at any depth
    with pytest.raises(ValueError, match="image_every"):
        load_config(SMOKE, ["image_every=0"])
    with pytest.raises(ValueError, match=r"data\.msrs_reps"):
        load_config(SMOKE, ["data.msrs_reps=3"])
    with pytest.raises(ValueError, match=r"export\.threshold"):
        load_config(SMOKE, ["export.threshold=0.5"])


def test_every_shipped_config_loads_and_the_yolox_stage_sets_the_shipped_threshold() -> None:
    from ros2_bilevel_fusion.core.bundle import load_bundle

    configs = sorted(SMOKE.parent.glob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        assert load_config(path).name == path.stem
    stage2 = load_config(SMOKE.parent / "default_semantic.yaml")
    assert stage2.export.score_threshold == 0.6  # the FCOS stage 2 of the previous default
    assert stage2.init_from == "runs/default/last.pt" and stage2.steps == 4500
    yolox = load_config(SMOKE.parent / "yolox_semantic.yaml")
    assert yolox.init_from == "runs/default_semantic/bundle/model.pt" and yolox.steps == 2000
    # the shipped bundle names the config of its last stage, and that config still says what
    # it was trained with (keys that exist in both)
    shipped = load_bundle(SMOKE.parents[2] / "models" / "default")
    assert shipped.detection is not None and shipped.detection.head == "yolox"
    recorded = shipped.provenance["config"]
    assert recorded["name"] == "fusion_reach_b1_shared_s1"
    stage = load_config(SMOKE.parent / f"{recorded['name']}.yaml")
    assert stage.export.score_threshold == shipped.detection.score_threshold
    assert stage.export.name == shipped.name == "default"
    # stage 6 starts from stage 5's checkpoint, which starts from stage 4's (seed 1, picked by
    # stop 14's rules), which starts from stage 3's bundle; every stage with the
    # realtime_global fusion net and the reach objective; stages 5 and 6 with seed 1
    # (docs/fusion_protocol.md)
    assert stage.init_from == "runs/fusion_reach_b1_semantic_s1/best.pt"
    assert stage.segmenter.backbone_from_detector and stage.lr.detector == 0.0
    stage5 = load_config(SMOKE.parent / "fusion_reach_b1_semantic_s1.yaml")
    stage4 = load_config(SMOKE.parent / "fusion_reach_bilevel_s1.yaml")
    assert stage5.init_from == "runs/fusion_reach_bilevel_s1/best.pt"
    assert stage4.init_from == "runs/yolox_semantic/bundle/model.pt"
    assert {stage.fusion, stage5.fusion, stage4.fusion} == {"realtime_global"}
    assert stage.fusion_loss == stage5.fusion_loss == stage4.fusion_loss
    objective = stage4.fusion_loss
    assert (objective.detail_gain, objective.contrast, objective.mean_weight,
            objective.region_weight) == (0.3, 1.5, 0.5, 0.0)
    assert (stage.seed, stage5.seed, stage4.seed) == (1, 1, 1)
    assert stage4.data.fusion_sets == ["roadscene:train", "msrs_det:train"]
    # the previous default's stages 4 and 5 stay as they were
    assert load_config(SMOKE.parent / "perception_semantic.yaml").init_from == (
        "runs/perception_bilevel/best.pt")
    bilevel = load_config(SMOKE.parent / "perception_bilevel.yaml")
    row_g = load_config(SMOKE.parent / "ablation_yolox_bilevel_dynamic.yaml")
    # stage 4 is ablation row (g), seed 0: the same config but for its name and export
    differs = {k for k, v in bilevel.to_dict().items() if row_g.to_dict()[k] != v}
    assert differs == {"name", "export"}, differs
    current = stage.to_dict()
    for key in ("seed", "mode", "steps", "batch_size", "crop", "lambdas", "lr", "fusion_loss",
                "aggregation", "init_from", "init_modules", "detector", "segmenter", "data",
                "segmentation_dice"):
        value = current[key]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in recorded[key]}
        assert recorded[key] == value, key


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


def _fusion_delta(trainer: Trainer) -> torch.Tensor:
    before = torch.cat([p.detach().flatten().clone() for p in trainer.fusion.parameters()])
    trainer.train_step()
    after = torch.cat([p.detach().flatten() for p in trainer.fusion.parameters()])
    return after - before


def test_a_bilevel_step_moves_fusion_differently_from_a_fusion_only_step(tmp_path: Path) -> None:
    """Same seed, same initial fusion net, same batches: the semantic and adversarial feedback
    of the bi-level step must change theta's update (the fusion-only step ignores it)."""
    common = ("steps=1", "warmup_steps=0")
    bilevel = Trainer(_tiny_config(tmp_path / "b", *common, "mode=bilevel"), quiet=True)
    fusion_only = Trainer(_tiny_config(tmp_path / "f", *common, "mode=fusion_only"), quiet=True)
    for p, q in zip(bilevel.fusion.parameters(), fusion_only.fusion.parameters(), strict=True):
        assert torch.equal(p, q)  # same starting point
    delta_b, delta_f = _fusion_delta(bilevel), _fusion_delta(fusion_only)
    assert delta_b.norm() > 0 and delta_f.norm() > 0
    assert (delta_b - delta_f).norm() > 0.05 * delta_f.norm()
    # and the bi-level update is deterministic: the same run again gives the same update
    again = Trainer(_tiny_config(tmp_path / "b2", *common, "mode=bilevel"), quiet=True)
    assert torch.equal(_fusion_delta(again), delta_b)


@pytest.mark.parametrize("mode", ["bilevel", "fusion_only"])
def test_the_fusion_loss_falls_on_a_fixed_batch(tmp_path: Path, mode: str) -> None:
    trainer = Trainer(
        _tiny_config(tmp_path, "steps=8", "warmup_steps=0", f"mode={mode}", "lr.fusion=0.003"),
        quiet=True,
    )
    fixed: dict[tuple[str, int], dict] = {}
    draw = trainer._batch

    def same_batch(pool: str, stream: int) -> dict:
        if (pool, stream) not in fixed:
            fixed[(pool, stream)] = draw(pool, stream)
        return fixed[(pool, stream)]

    trainer._batch = same_batch  # type: ignore[method-assign]
    losses = [trainer.train_step()["fusion/fusion"] for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert min(losses[4:]) < min(losses[:2]), losses


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


def test_yolox_detector_trains_in_the_bilevel_loop_from_the_shipped_bundle(
    tmp_path: Path, repo_root: Path
) -> None:
    """REAL weights: detector.arch yolox_nano from the COCO file, init_from the shipped bundle's
    TorchScript file: its fusion net (and segmenter) are loaded, its FCOS detector skipped; two
    bi-level steps give finite YOLOX lower/upper losses and a detector hypergradient; the
    checkpoint names the arch and the pretrained file's sha256; a FCOS checkpoint cannot
    resume a YOLOX run."""
    weights = repo_root.parent / "shared" / "weights" / "yolox_nano_coco.onnx"
    if not weights.is_file():
        pytest.skip("no ../shared/weights/yolox_nano_coco.onnx")
    from training.export import checkpoint_from_bundle
    from training.models import YoloxDetector, build_detector

    config = _tiny_config(
        tmp_path, "detector.arch=yolox_nano",
        "detector.pretrained=../shared/weights/yolox_nano_coco.onnx",
        "init_from=models/default/model.pt", "init_modules=[fusion, segmenter]", "steps=2",
        "warmup_steps=0", "fusion=realtime_global",  # the shipped bundle's fusion net
    )
    trainer = Trainer(config, quiet=True)
    shipped = checkpoint_from_bundle(repo_root / "models" / "default" / "model.pt")
    for key, value in shipped["fusion"].items():
        torch.testing.assert_close(trainer.fusion.state_dict()[key], value)
    detector = trainer.nets["detector"]
    assert isinstance(detector, YoloxDetector)
    coco = build_detector(3, "yolox_nano", weights, [0, 1, 2])
    for key, value in coco.state_dict().items():
        torch.testing.assert_close(detector.state_dict()[key], value)
    history = trainer.train()
    last = history[-1]
    assert torch.isfinite(torch.tensor(last["lower/detector"]))
    assert any(k.startswith("hypergrad_norm/detector") for k in last), sorted(last)
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert state["architecture"]["detector"] == {"num_classes": 3, "arch": "yolox_nano"}
    assert state["detector_provenance"]["pretrained_detector_sha256"].startswith("695e750a")
    fcos_checkpoint = tmp_path / "fcos.pt"
    discriminator = trainer.nets["discriminator"].state_dict()
    fcos = {
        **shipped, "discriminator": discriminator, "step": 0,
        "architecture": {**shipped["architecture"], "detector": {"num_classes": 3}},  # FCOS form
        "detector": build_detector(3, "fcos").state_dict(),
    }
    torch.save(fcos, fcos_checkpoint)
    with pytest.raises(ValueError, match="yolox_nano"):
        trainer.load_checkpoint(fcos_checkpoint)


def test_a_module_with_lr_zero_changes_nothing_batchnorm_statistics_included(
    tmp_path: Path,
) -> None:
    """A stage that fine-tunes only some modules ships the others bit for bit: a module whose
    learning rate is 0 stays in eval mode, so its BatchNorm running statistics do not move
    either (they did: a detector-only YOLOX stage changed 1.8 % of the segmenter's argmax)."""
    config = _tiny_config(tmp_path, "lr.segmenter=0", "steps=3", "warmup_steps=0")
    trainer = Trainer(config, quiet=True)
    segmenter = trainer.nets["segmenter"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.modules())
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    detector_before = [p.detach().clone() for p in trainer.nets["detector"].parameters()]
    trainer.train()
    for key, value in segmenter.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert any(  # while the modules that learn do learn
        not torch.equal(a, b)
        for a, b in zip(detector_before, trainer.nets["detector"].parameters(), strict=True)
    )


def test_init_modules_loads_only_the_listed_modules(tmp_path: Path) -> None:
    first = _tiny_config(tmp_path / "first", "steps=2", "warmup_steps=0")
    Trainer(first, quiet=True).train()
    source = torch.load(tmp_path / "first" / "last.pt", map_location="cpu", weights_only=False)
    config = _tiny_config(
        tmp_path / "second", f"init_from={tmp_path / 'first' / 'last.pt'}",
        "init_modules=[fusion]", "seed=7",
    )
    trainer = Trainer(config, quiet=True)
    for key, value in source["fusion"].items():
        torch.testing.assert_close(trainer.fusion.state_dict()[key], value)
    loaded = trainer.nets["detector"].state_dict()
    assert any(not torch.equal(loaded[k], v) for k, v in source["detector"].items())
    with pytest.raises(ValueError, match="unknown modules"):
        _tiny_config(tmp_path, f"init_from={tmp_path}", "init_modules=[critic]")


def test_device_option_resolves_and_fails_clearly() -> None:
    from training.engine import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device 'tpu'"):
        load_config(SMOKE, ["device=tpu"])


def test_a_collated_batch_moves_to_the_training_device_whole(tmp_path: Path) -> None:
    from training.engine import to_device

    trainer = Trainer(_tiny_config(tmp_path, "steps=0"), quiet=True)
    batch = trainer._batch("labelled", 1)
    # "meta" stands in for a GPU here: every tensor must move, and nothing else may change.
    moved = to_device(batch, torch.device("meta"))
    assert moved.keys() == batch.keys() and moved["names"] == batch["names"]
    tensors = [moved[k] for k in ("ir", "visible_ycrcb", "mask", "has_mask", "has_boxes")]
    tensors += list(moved["boxes"]) + list(moved["labels"])
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert isinstance(moved["boxes"], list)


def test_evaluation_runs_where_the_first_module_with_parameters_lives() -> None:
    from training.evaluation import module_device
    from training.models import build_fusion

    mean = build_fusion("mean")  # parameter-free: runs wherever its inputs are
    head = torch.nn.Linear(2, 2, device="meta")  # "meta" stands in for a GPU
    assert module_device(mean) == torch.device("cpu")
    assert module_device(mean, None, head).type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bilevel_steps_and_evaluation_run_on_cuda(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path, "device=cuda", "steps=3", "eval.every=3")
    trainer = Trainer(config, quiet=True)
    history = trainer.train()
    assert history[-1]["mode/bilevel"] == 1.0 and math.isfinite(history[-1]["score"])
    assert all(p.device.type == "cuda" for p in trainer.fusion.parameters())
    saved = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 3
