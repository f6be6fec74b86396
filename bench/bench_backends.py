"""Inference speed by backend (onnxruntime vs torch) and model (paper vs realtime), CPU.

    .venv/bin/python bench/bench_backends.py [--sizes 640x480,1280x1024] [--runs 5]
        [--paper-runs 2] [--threads 2] [--models paper,realtime]

For each model it uses ``models/<model>`` when that folder holds a bundle, else it exports an
UNTRAINED bundle of that architecture (with detector and segmenter) via ``training.export`` into
a temporary folder (speed does not depend on the weights). The torch column needs the bundle's
``model.pt``; without it the column is skipped with the reason. Each cell is the median of
``--runs`` timed ``backend.infer`` calls after one warm-up, on synthetic random inputs of that
size (the graph's cost does not depend on content). Medians, not means: the 2-core machine is
shared.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ros2_bilevel_fusion.backends import BackendError, create_backend  # noqa: E402
from ros2_bilevel_fusion.core.bundle import ModelBundle, load_bundle  # noqa: E402


@dataclass
class Cell:
    model: str
    backend: str
    size: tuple[int, int]  # (width, height)
    median_ms: float | None
    runs: int
    note: str = ""

    @property
    def fps(self) -> float | None:
        return 1000.0 / self.median_ms if self.median_ms else None


def find_or_export_bundle(model: str, workdir: Path) -> tuple[ModelBundle, str]:
    """(bundle, where it came from): models/<model> if present, else an untrained export."""
    shipped = REPO_ROOT / "models" / model
    if (shipped / "model.yaml").is_file():
        return load_bundle(shipped), f"models/{model}"
    import torch

    from training.export import export_bundle
    from training.models import DETECTION_CLASSES, SEGMENTATION_CLASSES, build_export_model

    torch.manual_seed(0)
    export_model = build_export_model(
        {
            "fusion": model,
            "detector": {"num_classes": len(DETECTION_CLASSES)},
            "segmenter": {"num_classes": len(SEGMENTATION_CLASSES)},
        }
    )
    folder = export_bundle(
        export_model,
        workdir / model,
        name=f"{model}-untrained",
        provenance={"note": "untrained export for speed measurement only"},
        sample_hw=(64, 96),
    )
    return load_bundle(folder), "untrained export (training.export)"


def time_backend(
    bundle: ModelBundle, kind: str, size: tuple[int, int], runs: int, threads: int
) -> tuple[float | None, str]:
    try:
        backend = create_backend(kind, bundle, threads=threads)
    except BackendError as exc:
        return None, str(exc)
    width, height = size
    multiple = bundle.inputs.pad_multiple
    padded_h, padded_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    rng = np.random.default_rng(0)  # synthetic random frames
    ir = rng.random((1, 1, padded_h, padded_w), dtype=np.float32)
    visible = rng.random((1, 3, padded_h, padded_w), dtype=np.float32)
    backend.infer(ir, visible)  # warm-up
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.infer(ir, visible)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(latencies), ""


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        width, height = (int(v) for v in item.lower().split("x"))
        sizes.append((width, height))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("640x480,1280x1024"))
    parser.add_argument("--models", default="paper,realtime")
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (realtime)")
    parser.add_argument("--paper-runs", type=int, default=2, help="timed runs (paper: slow)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per backend")
    args = parser.parse_args(argv)

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        for model in args.models.split(","):
            bundle, source = find_or_export_bundle(model, Path(tmp))
            print(f"{model}: {source}", flush=True)
            runs = args.paper_runs if model == "paper" else args.runs
            for size in args.sizes:
                for kind in args.backends.split(","):
                    median_ms, note = time_backend(bundle, kind, size, runs, args.threads)
                    cells.append(Cell(model, kind, size, median_ms, runs, note))
                    shown = f"{median_ms:9.1f} ms" if median_ms else "  skipped"
                    print(f"  {kind:12s} {size[0]}x{size[1]}: {shown} {note}", flush=True)

    print(f"\nCPU, {args.threads} threads per backend, batch 1, medians of timed runs")
    print("| model | backend | size | ms/frame | frames/s | runs |")
    print("|---|---|---|---|---|---|")
    for cell in cells:
        if cell.median_ms is None:
            print(
                f"| {cell.model} | {cell.backend} | {cell.size[0]}x{cell.size[1]} | skipped: "
                f"{cell.note} | - | - |"
            )
        else:
            print(
                f"| {cell.model} | {cell.backend} | {cell.size[0]}x{cell.size[1]} | "
                f"{cell.median_ms:.1f} | {cell.fps:.2f} | {cell.runs} |"
            )
    by_key = {(c.model, c.backend, c.size): c.median_ms for c in cells}
    print("\nRatios measured in this run:")
    for size in args.sizes:
        ort_rt = by_key.get(("realtime", "onnxruntime", size))
        ort_paper = by_key.get(("paper", "onnxruntime", size))
        if ort_rt and ort_paper:
            print(
                f"  {size[0]}x{size[1]}: paper / realtime time (onnxruntime) "
                f"= {ort_paper / ort_rt:.1f}x"
            )
        for model in args.models.split(","):
            torch_ms = by_key.get((model, "torch", size))
            ort_ms = by_key.get((model, "onnxruntime", size))
            if torch_ms and ort_ms:
                print(
                    f"  {size[0]}x{size[1]} {model}: torch / onnxruntime time "
                    f"= {torch_ms / ort_ms:.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
