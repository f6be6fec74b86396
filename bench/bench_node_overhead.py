"""What the ROS node adds on top of inference: end-to-end latency minus inference time.

    .venv/bin/python bench/bench_node_overhead.py [--bag sample/tno_sample] [--bundle DIR]
        [--loops 5] [--runs 3] [--rate 1.0] [--backend onnxruntime]

Replays the sample bag (looped) through the real node with
:func:`ros2_bilevel_fusion.bag.live_run.run_bag_through_node` (node and replayer as separate
processes, loopback DDS, a private domain), ``--runs`` times. Per run: the median end-to-end
latency (camera publish stamp -> fused image received), the node's inference p50 from its
/diagnostics, and their difference (decode, pairing, pre/post-processing, colour restore,
encode, DDS transport of the inputs and of the fused image). Prints per-run values and the
medians over runs. Bundle: ``--bundle``, else the package's default bundle, else an untrained
realtime export (training.export) made for this measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# DDS on this machine only, as the tests do; live_run picks a private domain.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")


def pick_bundle(explicit: str | None, workdir: Path) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), explicit
    from ros2_bilevel_fusion.core import resources

    try:
        default = resources.default_bundle_path()
        if (default / "model.yaml").is_file():
            return default, f"default bundle {default}"
    except FileNotFoundError:
        pass
    import torch

    from training.export import export_bundle
    from training.models import DETECTION_CLASSES, SEGMENTATION_CLASSES, build_export_model

    torch.manual_seed(0)
    model = build_export_model(
        {
            "fusion": "realtime",
            "detector": {"num_classes": len(DETECTION_CLASSES)},
            "segmenter": {"num_classes": len(SEGMENTATION_CLASSES)},
        }
    )
    folder = export_bundle(
        model,
        workdir / "realtime",
        name="realtime-untrained",
        provenance={"note": "untrained export for overhead measurement only"},
        sample_hw=(64, 96),
    )
    return folder, "untrained realtime export (no default bundle found)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", default=None, help="default: the package's sample bag")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args(argv)

    from ros2_bilevel_fusion.bag.live_run import run_bag_through_node
    from ros2_bilevel_fusion.core import resources

    bag = Path(args.bag) if args.bag else resources.sample_bag_path()
    per_run = []
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        bundle, source = pick_bundle(args.bundle, Path(tmp))
        print(f"bag {bag}, loops {args.loops}, rate {args.rate}; bundle: {source}", flush=True)
        for run in range(args.runs):
            result = run_bag_through_node(
                bag,
                bundle=bundle,
                backend=args.backend,
                rate=args.rate,
                loops=args.loops,
                out_dir=Path(tmp) / f"run{run}",
                timeout_s=300.0,
            )
            if not result.latency_ms or result.inference_ms_p50 is None:
                print(f"  run {run}: no fused output or no diagnostics; skipped", flush=True)
                continue
            latency_p50 = float(np.median(result.latency_ms))
            overhead = latency_p50 - result.inference_ms_p50
            per_run.append((latency_p50, result.inference_ms_p50, overhead, result))
            print(
                f"  run {run}: {result.input_pairs_published} pairs in, {result.pairs_out} out, "
                f"latency p50 {latency_p50:.1f} ms (p95 "
                f"{np.percentile(result.latency_ms, 95):.1f}), inference p50 "
                f"{result.inference_ms_p50:.1f} ms, overhead {overhead:.1f} ms, "
                f"{result.throughput_pairs_per_s:.1f} fused/s, drops {result.drops_by_reason}",
                flush=True,
            )
    if not per_run:
        print("no usable run")
        return 1
    latency = statistics.median(r[0] for r in per_run)
    inference = statistics.median(r[1] for r in per_run)
    overhead = statistics.median(r[2] for r in per_run)
    print(
        f"median over {len(per_run)} runs: end-to-end latency {latency:.1f} ms, inference "
        f"{inference:.1f} ms, node overhead {overhead:.1f} ms "
        f"(overhead / latency = {overhead / latency:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
