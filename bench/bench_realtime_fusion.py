"""Fusion-graph speed on this CPU with ONNX Runtime: ``paper`` vs ``realtime``; optionally
their fusion quality after the same short training.

    .venv/bin/python bench/bench_realtime_fusion.py [--height 480 --width 640] [--runs 20]
        [--paper-runs 3] [--threads 2] [--quality-steps N [--quality-lr 1e-3]]

Exports the fusion network alone (no detector / segmenter; untrained weights: speed does not
depend on them) to a temporary ONNX file, runs it with ORT's CPU provider on synthetic
random inputs, and prints the median latency and frames/s of each and their ratio. The target
for ``realtime`` is >= 30 frames/s at 640x480. The machine may be shared, so the median of
several runs after warm-up is reported, with min and max beside it.

``--quality-steps N`` also trains each network from scratch for N Adam steps on the fusion loss
alone (training.losses.fusion_loss; batch 2 of 96x96 crops of RoadScene + MSRS-train, 1 torch
thread, same seed) and prints mean TNO-25 fusion metrics
(ros2_bilevel_fusion.evaluation.metrics, the DESIGN.md protocol: grey 0-255, MI in nats, SSIM
data_range 2) beside max and mean fusion. This is an equal-budget comparison of the
architectures, not of the shipped (bi-level) model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class FusionTiming:
    name: str
    parameters: int
    median_ms: float
    min_ms: float
    max_ms: float

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms


def time_fusion(
    name: str, height: int, width: int, runs: int, threads: int, workdir: Path
) -> FusionTiming:
    import onnxruntime as ort
    import torch

    from training.export import export_onnx
    from training.models import ExportModel, build_fusion, count_parameters

    torch.manual_seed(0)
    fusion = build_fusion(name)
    model = ExportModel(fusion, None, None, {"fusion": name, "detector": None, "segmenter": None})
    onnx_path = export_onnx(model, workdir / f"{name}.onnx", sample_hw=(64, 96))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    # synthetic random frames: the cost of these graphs does not depend on content
    rng = np.random.default_rng(0)
    feeds = {
        "ir": rng.random((1, 1, height, width), dtype=np.float32),
        "visible_ycrcb": rng.random((1, 3, height, width), dtype=np.float32),
    }
    session.run(None, feeds)  # warm-up: allocations, kernel selection
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return FusionTiming(
        name, count_parameters(fusion), statistics.median(latencies), min(latencies),
        max(latencies),
    )


def compare_quality(steps: int, lr: float, data_root: Path) -> dict[str, dict[str, float]]:
    """Train paper and realtime for ``steps`` on the fusion loss; mean TNO metrics of each."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from bench.bench_fusion_networks import fit_fusion_loss
    from ros2_bilevel_fusion.evaluation.metrics import fusion_metrics, mean_metrics
    from training.datasets import PairFolder, collate_pairs, msrs_pairs
    from training.models import build_fusion

    torch.set_num_threads(1)
    train_set = ConcatDataset(
        [PairFolder(data_root / "roadscene", crop=96),
         msrs_pairs(data_root / "msrs", "train", crop=96)]
    )
    tno = PairFolder(data_root / "tno", train=False, pad_multiple=None)

    def to_u8(image: np.ndarray) -> np.ndarray:
        return np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)

    results: dict[str, dict[str, float]] = {}
    for name in ("realtime", "paper"):
        torch.manual_seed(0)
        loader = DataLoader(train_set, batch_size=2, shuffle=True, collate_fn=collate_pairs,
                            drop_last=True)
        fusion = build_fusion(name)
        seconds, last_loss = fit_fusion_loss(fusion, loader, steps, lr)
        print(f"  trained {name} for {steps} steps in {seconds:.0f} s, "
              f"last loss {last_loss:.3f}", flush=True)
        fusion.eval()
        rows = []
        with torch.no_grad():
            for index in range(len(tno)):
                item = tno[index]
                ir, vis_y = item["ir"][None], item["visible_ycrcb"][None, :1]
                fused = fusion(ir, vis_y)[0, 0].numpy()
                rows.append(fusion_metrics(to_u8(fused), to_u8(ir[0, 0].numpy()),
                                           to_u8(vis_y[0, 0].numpy())))
        results[name] = mean_metrics(rows)
    baselines: dict[str, list[dict[str, float]]] = {"max": [], "mean": []}
    for index in range(len(tno)):
        item = tno[index]
        ir, vis_y = item["ir"][0].numpy(), item["visible_ycrcb"][0].numpy()
        for name, fused in (("max", np.maximum(ir, vis_y)), ("mean", (ir + vis_y) / 2)):
            baselines[name].append(fusion_metrics(to_u8(fused), to_u8(ir), to_u8(vis_y)))
    for name, rows in baselines.items():
        results[name] = mean_metrics(rows)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ORT CPU speed of the fusion graphs")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--runs", type=int, default=20, help="timed runs for realtime")
    parser.add_argument("--paper-runs", type=int, default=3, help="timed runs for paper (slow)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--quality-steps", type=int, default=0,
                        help="also train both N steps and compare TNO fusion metrics (slow)")
    parser.add_argument("--quality-lr", type=float, default=1e-3)
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
        realtime = time_fusion(
            "realtime", args.height, args.width, args.runs, args.threads, Path(tmp)
        )
        paper = time_fusion(
            "paper", args.height, args.width, args.paper_runs, args.threads, Path(tmp)
        )
    print(f"ONNX Runtime CPU, {args.threads} threads, {args.width}x{args.height}, batch 1")
    for timing in (paper, realtime):
        print(
            f"  {timing.name:9s} params {timing.parameters:7d}  median {timing.median_ms:8.1f} ms"
            f"  (min {timing.min_ms:.1f}, max {timing.max_ms:.1f})  {timing.fps:7.2f} fps"
        )
    print(f"  realtime / paper speed ratio: {realtime.fps / paper.fps:.1f}x")
    target = 30.0
    verdict = "meets" if realtime.fps >= target else "MISSES"
    print(f"  realtime {verdict} the {target:.0f} fps target")
    if args.quality_steps > 0:
        print(f"fusion quality after {args.quality_steps} steps of fusion-loss training "
              f"(lr {args.quality_lr}), mean over TNO-25; grey 0-255, MI nats, SSIM "
              "data_range 2, VIF 4 scales, Qabf Sobel")
        results = compare_quality(args.quality_steps, args.quality_lr, args.data)
        metric_names = list(next(iter(results.values())))
        print("  " + "method".ljust(9) + "".join(m.rjust(8) for m in metric_names))
        for name, values in results.items():
            print("  " + name.ljust(9) + "".join(f"{values[m]:8.3f}" for m in metric_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
