"""Time of the ten fusion metrics on one 640x480 triple, against the 0.5 s target.

    .venv/bin/python bench/bench_metrics.py [--runs 7] [--pair 00001D.png]

Uses a real MSRS pair (640x480) from ../shared/data with max fusion as the fused image, or a
synthetic random triple when the data folder is absent. Prints the median seconds of each
metric and of all ten together over ``--runs`` runs (after one warm-up), and the ratio of the
total to the 0.5 s target. Single-threaded BLAS/OpenMP (set before numpy loads) so the number
does not depend on what else runs on the shared machine's second core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ros2_bilevel_fusion.evaluation import metrics  # noqa: E402

TARGET_S = 0.5


def load_triple(pair: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    msrs = REPO_ROOT.parent / "shared" / "data" / "msrs"
    ir_path, vi_path = msrs / "ir" / pair, msrs / "vi" / pair
    if ir_path.is_file() and vi_path.is_file():
        ir = metrics.to_gray_float(cv2.imread(str(ir_path)))
        vi = metrics.to_gray_float(cv2.imread(str(vi_path)))
        return np.maximum(ir, vi), ir, vi, f"MSRS {pair} (max fusion)"
    rng = np.random.default_rng(0)
    ir, vi = (np.round(rng.random((480, 640)) * 255) for _ in range(2))
    return np.maximum(ir, vi), ir, vi, "synthetic random 640x480"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pair", default="00001D.png")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    fused, ir, vi, label = load_triple(args.pair)
    metrics.fusion_metrics(fused, ir, vi)  # warm-up (imports, caches)
    per_metric: dict[str, list[float]] = {name: [] for name in metrics.METRIC_NAMES}
    totals: list[float] = []
    for _ in range(args.runs):
        start_all = time.perf_counter()
        for name in metrics.METRIC_NAMES:
            start = time.perf_counter()
            metrics.fusion_metrics(fused, ir, vi, names=[name])
            per_metric[name].append(time.perf_counter() - start)
        totals.append(time.perf_counter() - start_all)
    median_total = statistics.median(totals)
    print(f"fusion metrics on {label}, {fused.shape[1]}x{fused.shape[0]}, {args.runs} runs")
    for name, values in per_metric.items():
        print(f"  {name:5s} median {statistics.median(values) * 1000:7.1f} ms")
    print(
        f"  all ten: median {median_total:.3f} s (min {min(totals):.3f}, max {max(totals):.3f});"
        f" target {TARGET_S} s; ratio total/target = {median_total / TARGET_S:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
