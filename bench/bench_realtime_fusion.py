"""Fusion-graph speed on this CPU with ONNX Runtime: ``paper`` vs ``realtime``.

    .venv/bin/python bench/bench_realtime_fusion.py [--height 480 --width 640] [--runs 20]
        [--paper-runs 3] [--threads 2]

Exports the fusion network alone (no detector / segmenter; untrained weights: speed does not
depend on them) to a temporary ONNX file, runs it with ORT's CPU provider on synthetic
random inputs, and prints the median latency and frames/s of each and their ratio. The target
for ``realtime`` is >= 30 frames/s at 640x480. The machine may be shared, so the median of
several runs after warm-up is reported, with min and max beside it.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ORT CPU speed of the fusion graphs")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--runs", type=int, default=20, help="timed runs for realtime")
    parser.add_argument("--paper-runs", type=int, default=3, help="timed runs for paper (slow)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
