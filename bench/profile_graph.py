"""Where a bundle's graph spends its time: onnxruntime's profiler, summed by part and by op.

    .venv/bin/python bench/profile_graph.py [--bundle models/default] [--size 640x480]
        [--runs 20] [--threads 2] [--out docs/profile_default_640x480.md]

Runs the bundle's ONNX file with ``SessionOptions.enable_profiling`` (the graph optimisations
onnxruntime applies in the node, ``ORT_ENABLE_ALL``) on synthetic random inputs of that size
(the cost does not depend on content), drops the warm-up run, and sums each node's kernel
time over the timed runs. Nodes are grouped by the module path the exporter wrote into their
names (``/detector/net/stage3/...`` -> ``detector / stage3``; nodes onnxruntime fused keep the
name of their first node). Prints (and with ``--out`` writes) two Markdown tables, per part
and per op type, as median milliseconds per frame over the timed runs and share of the total.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ros2_bilevel_fusion.core.bundle import load_bundle  # noqa: E402
from training.yolox import BACKBONE_AND_NECK  # noqa: E402

#: Top-level modules of the exported graph (training.models.ExportModel).
PART_DEPTH = {"detector": 3, "segmenter": 3, "fusion": 2}


# Parts of a graph whose YOLOX nets are called piecewise (one backbone shared by detector and
# segmenter, models.ExportModel): the exporter names those nodes without a module prefix.
SEGMENTER_HEAD = ("lateral.0", "lateral.1", "lateral.2", "fuse", "classifier")


def part_of(node_name: str) -> str:
    """``/detector/net/stage3/...`` -> ``detector / stage3``; ``/stage3/...`` (a shared
    backbone) -> ``backbone / stage3``; ``/heads.0/...`` -> ``detector / heads.0``; the
    segmenter head's ``/fuse/...`` -> ``segmenter / fuse``; other top-level nodes -> ``colour
    and glue`` (the colour conversion and the graph's own reshapes)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) >= 2 and parts[0] in BACKBONE_AND_NECK:
        return f"backbone / {parts[0]}"
    if len(parts) >= 2 and parts[0].startswith("heads."):
        return f"detector / {parts[0]}"
    if len(parts) >= 2 and parts[0] in SEGMENTER_HEAD:
        return f"segmenter / {parts[0]}"
    if len(parts) < 2 or parts[0] not in PART_DEPTH:
        return "colour and glue"
    modules = [p for p in parts[1:-1] if p != "net"]  # the last part is the node's own name
    return f"{parts[0]} / {modules[0]}" if modules else f"{parts[0]} (its own ops)"


def profile(bundle_dir: Path, width: int, height: int, runs: int, threads: int) -> dict:
    import onnxruntime as ort

    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(bundle.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(0)
        feeds = {
            "ir": rng.random((1, 1, height, width), dtype=np.float32),
            "visible_ycrcb": rng.random((1, 3, height, width), dtype=np.float32),
        }
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    # one model_run event per run; node events lie inside a run's time span
    run_spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"
    )[1:]  # drop the warm-up run
    by_part: list[dict[str, float]] = [defaultdict(float) for _ in run_spans]
    by_op: list[dict[str, float]] = [defaultdict(float) for _ in run_spans]
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        for index, (start, end) in enumerate(run_spans):
            if start <= event["ts"] <= end:
                node = event["name"][: -len("_kernel_time")]
                by_part[index][part_of(node)] += event["dur"] / 1000.0
                by_op[index][event["args"].get("op_name", "?")] += event["dur"] / 1000.0
                break
    totals = [(end - start) / 1000.0 for start, end in run_spans]
    return {"by_part": by_part, "by_op": by_op, "run_ms": totals, "name": bundle.name}


def _table(rows: list[dict[str, float]], title: str) -> str:
    keys = sorted({k for row in rows for k in row})
    medians = {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}
    total = sum(medians.values())
    lines = [f"| {title} | ms per frame (median) | share |", "|---|---|---|"]
    for key, value in sorted(medians.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {key} | {value:.2f} | {100.0 * value / total:.1f} % |")
    lines.append(f"| **sum of kernels** | **{total:.2f}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO_ROOT / "models" / "default"))
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = profile(Path(args.bundle), width, height, args.runs, args.threads)
    text = "\n\n".join([
        f"Bundle `{result['name']}` ({args.bundle}), {width}x{height}, onnxruntime CPU, "
        f"{args.threads} threads, {args.runs} timed runs; whole run median "
        f"{statistics.median(result['run_ms']):.1f} ms. Command: `python bench/profile_graph.py "
        f"--bundle {args.bundle} --size {args.size} --runs {args.runs} --threads {args.threads}`.",
        _table(result["by_part"], "part of the graph"),
        _table(result["by_op"], "op type"),
    ]) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
