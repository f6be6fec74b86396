"""Fusion networks and objectives at one equal budget, scored on validation pairs (issue 12).

    .venv/bin/python bench/bench_fusion_networks.py [--variant realtime]
        [--variant realtime_global] [--variant "realtime@target=mean,contrast=2.0"]
        [--steps 600] [--seed 0] [--val roadscene:val --val msrs_det:val] [--threads 2]

Each variant is a fusion network (``training.models.build_fusion``) and, after ``@``, changes
to the shipped fusion loss (``training/configs/default.yaml``'s ``fusion_loss``: intensity 3,
gradient 10, SSIM 1.5 toward the max(IR, Y) target with detail gain 0.3 and contrast 1.2).
Every variant trains from the same seed for ``--steps`` Adam steps (lr 1e-3, batch 4, 128 px
crops, one thread) on the fusion loss alone, on ``roadscene:train`` + ``msrs_det:train``, and
is then scored on the validation splits through the runtime's preprocessing
(``training.evaluation.evaluate_fusion_folder``): the eight paper metrics, beside mean and max
fusion computed by the same code, and the reference score that chooses checkpoints. Its ONNX
graph is timed at 640x480 (onnxruntime CPU, ``--threads``, medians of interleaved rounds).
This compares designs at a small budget; it is not the shipped model's training, and TNO-25
(the test set) is never scored here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
SHIPPED_LOSS = {"intensity": 3.0, "gradient": 10.0, "ssim": 1.5, "detail_gain": 0.3,
                "detail_sigma": 1.5, "contrast": 1.2}


def parse_variant(text: str):
    """"realtime@target=mean,contrast=2" -> (label, network name, FusionLossWeights)."""
    from training.losses import FusionLossWeights

    name, _, changes = text.partition("@")
    values = dict(SHIPPED_LOSS)
    # the dataclass says which keys are text (target, stretch); every other one is a number
    field_types = {f.name: f.type for f in dataclasses.fields(FusionLossWeights)}
    for item in filter(None, changes.split(",")):
        key, _, value = item.partition("=")
        if key not in field_types:
            raise SystemExit(f"unknown fusion loss key {key!r} in {text!r}")
        values[key] = value if field_types[key] in (str, "str") else float(value)
    return text, name, FusionLossWeights(**values)


def train(name: str, weights, steps: int, seed: int = 0):
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from training.data import split_pair_folder
    from training.datasets import collate_pairs
    from training.models import build_fusion

    torch.manual_seed(seed)
    parts = [split_pair_folder(split, DATA_ROOT, crop=128)
             for split in ("roadscene:train", "msrs_det:train")]
    loader = DataLoader(ConcatDataset(parts), batch_size=4, shuffle=True,
                        collate_fn=collate_pairs, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    fusion = build_fusion(name)
    seconds, _ = fit_fusion_loss(fusion, loader, steps, lr=1e-3, weights=weights)
    return fusion.eval(), seconds


def fit_fusion_loss(fusion, loader, steps: int, lr: float, weights=None) -> tuple[float, float]:
    """``steps`` Adam steps of ``fusion`` on ``training.losses.fusion_loss`` alone, cycling
    through ``loader``; returns (seconds, last loss)."""
    import torch

    from training.losses import fusion_loss

    optimiser = torch.optim.Adam(fusion.parameters(), lr=lr)
    step, start, loss = 0, time.perf_counter(), None
    while step < steps:
        for batch in loader:
            vis_y = batch["visible_ycrcb"][:, :1]
            loss, _ = fusion_loss(fusion(batch["ir"], vis_y), batch["ir"], vis_y, weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if step >= steps:
                break
    return time.perf_counter() - start, float(loss.detach()) if loss is not None else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val", action="append", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (DATA_ROOT / "roadscene").is_dir() or not (DATA_ROOT / "msrs_det").is_dir():
        print(f"skipped: {DATA_ROOT} lacks roadscene/ or msrs_det/")
        return 0
    import torch

    from bench.bench_graph_ratio import interleaved_medians
    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle
    from ros2_bilevel_fusion.evaluation.folder import score_pairs, split_pairs
    from training.evaluation import PAPER_METRICS as METRICS
    from training.evaluation import evaluate_fusion_folder, reference_reach, reference_score
    from training.export import export_bundle
    from training.models import ExportModel, count_parameters

    torch.set_num_threads(1)
    variants = [parse_variant(v) for v in (args.variant or ["realtime", "realtime_global"])]
    val_splits = args.val or ["roadscene:val", "msrs_det:val"]
    pairs_by_split = {split: split_pairs(split, DATA_ROOT)[0] for split in val_splits}
    pairs = [p for split in val_splits for p in pairs_by_split[split]]
    rows: dict[str, dict[str, float]] = {}
    split_rows: dict[str, dict[str, dict[str, float]]] = {}
    graphs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, name, weights in variants:
            fusion, seconds = train(name, weights, args.steps, args.seed)
            # per split, then pooled (the mean over all pairs = the pair-weighted mean of the
            # splits' means): the lane rules read both
            split_rows[label] = {
                split: evaluate_fusion_folder(fusion, split_list)[0]
                for split, split_list in pairs_by_split.items()
            }
            rows[label] = {
                m: sum(len(pairs_by_split[split]) * values[m]
                       for split, values in split_rows[label].items()) / len(pairs)
                for m in METRICS
            }
            rows[label]["params"] = count_parameters(fusion)
            rows[label]["train_s"] = seconds
            model = ExportModel(fusion, None, None,
                                {"fusion": name, "detector": None, "segmenter": None})
            folder = export_bundle(model, Path(scratch) / str(len(graphs)), name=name,
                                   provenance={"note": "bench only"}, sample_hw=(64, 96))
            graphs[label] = create_backend("onnxruntime", load_bundle(folder),
                                           threads=args.threads)
            print(f"trained and scored {label} ({seconds:.0f} s)", flush=True)
        ms = interleaved_medians(graphs, (480, 640), args.rounds, warmup=2)
    baselines = score_pairs(pairs, None, with_baselines=True, sample_count=0).means
    print(f"\n{len(pairs)} validation pairs ({' + '.join(val_splits)}); {args.steps} steps each, "
          f"seed {args.seed}; "
          f"ms at 640x480, onnxruntime {args.threads} threads")
    # score: the best-checkpoint criterion (mean of value / CDDFuse's TNO figure), which
    # weighs a relative change of every metric alike; reach: the same ratios capped at 1 (no
    # credit past the figure). The CDDFuse figures only normalise here.
    print("| variant | params | ms | " + " | ".join(METRICS) + " | score | reach |")
    print("|---" * (len(METRICS) + 5) + "|")

    def criteria(values: dict[str, float]) -> str:
        return (f" | {reference_score(values):.4f}"
                f" | {reference_reach(values):.4f} |")

    for label, values in rows.items():
        print(f"| {label} | {int(values['params'])} | {ms[label]:.1f} | "
              + " | ".join(f"{values[m]:.3f}" for m in METRICS) + criteria(values))
    for name, values in baselines.items():
        print(f"| {name} | - | - | " + " | ".join(f"{values[m]:.3f}" for m in METRICS)
              + criteria(values))
    print("\n| variant | " + " | ".join(f"reach {split}" for split in val_splits) + " |")
    print("|---" * (len(val_splits) + 1) + "|")
    for label, per_split in split_rows.items():
        print(f"| {label} | " + " | ".join(
            f"{reference_reach(per_split[split]):.4f}" for split in val_splits
        ) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
