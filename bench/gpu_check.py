"""TensorRT on a GPU: engines for the default and a `paper` bundle, parity, sanity and frames/s.

    python bench/gpu_check.py [--out FILE] [--bundle models/default] [--budget-s 420]

Run by ``bench/gpu_check.sh`` on a machine with an NVIDIA GPU (issue 11 part 5); on a machine
without one it prints why it skips and exits 0 (``make bench`` runs it everywhere).

For each bundle (``--bundle`` and an UNTRAINED `paper` fusion-only export made here with
torch, for speed only), through the runtime's own ``TensorRTBackend`` (engine cache beside the
bundle):

1. FP16 engine: built, then loaded again from the cache (the second load must not rebuild), then
   a changed ONNX file must be rebuilt (stale-engine check on a copy of the bundle).
2. Parity against onnxruntime on the CPU on a real msrs_det:train pair at 640x480 (or a SYNTHETIC
   pair, named so, when ../shared/data is absent): max abs difference of ``fused_y`` (goal
   <= 1e-2), and detections after NMS (same count, boxes within 2 px, classes equal).
3. The FP16 fused image is neither black nor saturated (mean in [0.02, 0.98], std > 0.01).
4. Frames/s at 640x480, batch 1, for fp32, fp16 and int8 engines (int8: the bundle's QDQ
   ``precisions.int8`` graph when it has one, built with the INT8 flag; else skipped with the
   reason), medians of timed ``infer`` calls after a warm-up, host copies included.

Everything is written to one Markdown file (``--out``) and printed; stops starting new work when
``--budget-s`` is used up (the issue's limit is 8 minutes for the whole script).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
HW = (480, 640)
GOALS_FPS = {"default": 500.0, "paper": 300.0}
PARITY_GOAL = 1e-2


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self.results: dict[str, Any] = {}

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")  # written as it goes: a kill keeps it


def test_pair() -> tuple[np.ndarray, np.ndarray, str]:
    import cv2

    name = "00258D"
    ir_path = DATA_ROOT / "msrs_det" / "ir" / f"{name}.png"
    vi_path = DATA_ROOT / "msrs_det" / "vi" / f"{name}.png"
    if ir_path.is_file() and vi_path.is_file():
        ir = cv2.resize(cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE), (HW[1], HW[0]))
        vi = cv2.resize(cv2.imread(str(vi_path), cv2.IMREAD_COLOR), (HW[1], HW[0]))
        return ir, vi, f"msrs_det:train {name} (real)"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : HW[0], 0 : HW[1]].astype(np.float32)
    ir = np.clip(40 + 0.2 * x + rng.normal(0, 5, HW), 0, 255).astype(np.uint8)
    vi = np.clip(np.stack([0.3 * x, 0.4 * y, 0.2 * (x + y)], 2) + rng.normal(0, 5, (*HW, 3)),
                 0, 255).astype(np.uint8)
    return ir, vi, "SYNTHETIC gradients + noise (no ../shared/data)"


def paper_bundle(folder: Path) -> Path:
    import torch

    from training.export import export_bundle
    from training.models import build_export_model

    torch.manual_seed(0)
    model = build_export_model({"fusion": "paper", "detector": None, "segmenter": None})
    return export_bundle(model.eval(), folder, name="paper-untrained",
                         provenance={"note": "untrained paper fusion net, speed check only"})


def timed_fps(backend: Any, feeds: tuple[np.ndarray, np.ndarray], runs: int = 50) -> float:
    for _ in range(5):
        backend.infer(*feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.infer(*feeds)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def detections_match(a: Any, b: Any) -> tuple[bool, str]:
    if a is None or b is None:
        return a is None and b is None, "no detector" if a is None and b is None else "one missing"
    if len(a) != len(b):
        return False, f"{len(a)} vs {len(b)} detections"
    if len(a) == 0:
        return True, "0 detections on both"
    order_a, order_b = np.argsort(-a.scores), np.argsort(-b.scores)
    boxes = np.abs(a.boxes[order_a] - b.boxes[order_b]).max()
    classes = bool(np.array_equal(a.class_ids[order_a], b.class_ids[order_b]))
    return bool(boxes <= 2.0 and classes), f"{len(a)} detections, max box diff {boxes:.2f} px"


def check_bundle(report: Report, label: str, bundle_dir: Path, deadline: float) -> None:
    from ros2_bilevel_fusion.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ros2_bilevel_fusion.backends.tensorrt_backend import TensorRTBackend
    from ros2_bilevel_fusion.core.bundle import load_bundle, select_precision
    from ros2_bilevel_fusion.core.pipeline import FusionPipeline
    from ros2_bilevel_fusion.core.processing import prepare_inputs

    bundle = load_bundle(bundle_dir)
    ir, vi, source = test_pair()
    prepared = prepare_inputs(ir, vi, bundle)
    feeds = (prepared.ir, prepared.visible_ycrcb)
    report.line(f"\n## {label} ({bundle.name}, {bundle_dir})\n\ntest pair: {source}\n")
    start = time.perf_counter()
    fp16 = TensorRTBackend(bundle, fp16=True)
    built_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = TensorRTBackend(bundle, fp16=True)
    cached_s = time.perf_counter() - start
    report.line(f"* FP16 engine: built in {built_s:.1f} s, loaded from the cache in "
                f"{cached_s:.1f} s ({cached.engine_path.name})")
    with tempfile.TemporaryDirectory() as scratch:  # stale engine: a changed ONNX must rebuild
        copy = Path(scratch) / "bundle"
        shutil.copytree(bundle_dir, copy, ignore=shutil.ignore_patterns("*.engine"))
        shutil.copy(cached.engine_path, copy / cached.engine_path.name)
        with open(copy / bundle.onnx_path.name, "ab") as stream:
            stream.write(b"\0")  # trailing byte: same graph, new sha256
        try:
            stale = TensorRTBackend(load_bundle(copy), fp16=True)
            rebuilt = stale.engine_path.name != cached.engine_path.name
            report.line(f"* stale engine: ONNX changed -> {'rebuilt' if rebuilt else 'NOT rebuilt'}"
                        f" ({stale.engine_path.name})")
        except Exception as exc:  # a parser refusing the trailing byte still proves no reuse
            report.line(f"* stale engine: the changed ONNX was not served from the old engine "
                        f"({type(exc).__name__}: {exc})")
    cpu = OnnxRuntimeBackend(bundle, threads=0, providers=["CPUExecutionProvider"])
    want, got = cpu.infer(*feeds), fp16.infer(*feeds)
    fused_diff = float(np.abs(got["fused_y"] - want["fused_y"]).max())
    report.line(f"* FP16 vs onnxruntime CPU: fused_y max abs difference {fused_diff:.2e} "
                f"(goal <= {PARITY_GOAL:g}: {'met' if fused_diff <= PARITY_GOAL else 'NOT met'})")
    if bundle.detection is not None:
        ok, why = detections_match(
            FusionPipeline(cpu).process(ir, vi).detections,
            FusionPipeline(fp16).process(ir, vi).detections,
        )
        report.line(f"* detections after NMS equal: {ok} ({why})")
    fused = got["fused_y"]
    sane = 0.02 <= float(fused.mean()) <= 0.98 and float(fused.std()) > 0.01
    report.line(f"* FP16 fused image mean {float(fused.mean()):.3f}, std {float(fused.std()):.3f}:"
                f" {'not black or saturated' if sane else 'BLACK OR SATURATED'}")
    rows = []
    for precision in ("fp32", "fp16", "int8"):
        if time.perf_counter() > deadline:
            rows.append((precision, "skipped: time budget used up"))
            continue
        try:
            if precision == "int8":
                if "int8" not in bundle.onnx_variants:
                    rows.append((precision, "skipped: the bundle has no int8 graph "
                                 "(python -m training.quantize)"))
                    continue
                backend = TensorRTBackend(select_precision(bundle, "int8"), fp16=True)
            else:
                backend = fp16 if precision == "fp16" else TensorRTBackend(bundle, fp16=False)
            rows.append((precision, f"{timed_fps(backend, feeds):.0f}"))
        except Exception as exc:
            rows.append((precision, f"failed: {type(exc).__name__}: {exc}"))
    goal = GOALS_FPS.get(label)
    report.line(f"\n| {label} engine at 640x480, batch 1 | frames/s (median) |\n|---|---|")
    for precision, value in rows:
        report.line(f"| {precision} | {value} |")
    if goal:
        report.line(f"\ngoal: FP16 >= {goal:.0f} frames/s")
    report.results[label] = {"fused_diff": fused_diff, "sane": sane, "fps": dict(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "gpu_check" / "gpu_check.md"))
    parser.add_argument("--bundle", default=str(REPO_ROOT / "models" / "default"))
    parser.add_argument("--budget-s", type=float, default=420.0)
    args = parser.parse_args(argv)
    from ros2_bilevel_fusion.backends import tensorrt_usable

    usable, why = tensorrt_usable()
    if not usable:
        print(f"skipped: TensorRT is not usable here ({why}); run bench/gpu_check.sh on a "
              "machine with an NVIDIA GPU")
        return 0
    deadline = time.perf_counter() + args.budget_s
    report = Report(Path(args.out))
    import tensorrt

    report.line("# TensorRT check (bench/gpu_check.py)\n")
    report.line(f"TensorRT {tensorrt.__version__}; " + _gpu_name())
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        default = work / "default"  # a copy: engines are cached beside the ONNX
        shutil.copytree(args.bundle, default)
        check_bundle(report, "default", default, deadline)
        if time.perf_counter() < deadline:
            check_bundle(report, "paper", paper_bundle(work / "paper"), deadline)
        else:
            report.line("\n`paper`: skipped, time budget used up")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(report.results, indent=2))
    return 0


def _gpu_name() -> str:
    from ros2_bilevel_fusion.backends.tensorrt_backend import open_cuda

    return f"GPU {open_cuda(0).gpu_name}"


if __name__ == "__main__":
    raise SystemExit(main())
