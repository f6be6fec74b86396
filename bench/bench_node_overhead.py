"""What the ROS node adds on top of inference, and the fused rate at a 30 Hz camera.

    .venv/bin/python bench/bench_node_overhead.py [--bag sample/tno_sample] [--bundle DIR]
        [--loops 5] [--runs 3] [--rate 1.0] [--fast-rate 3.0] [--fast-loops 20]
        [--backend onnxruntime]

Replays the sample bag (looped) through the real node with
:func:`ros2_bilevel_fusion.bag.live_run.run_bag_through_node` (node and replayer as separate
processes, loopback DDS, a private domain), ``--runs`` times at ``--rate`` (the sample is 10 Hz)
and once at ``--fast-rate`` (3.0: a 30 Hz camera). Per run, from the node's /diagnostics: its
inference p50 and its own overhead p50 (``overhead_ms``: decode, pre/post-processing, colour
restore, encode and publish of a pair, timed inside the node, beside its inference); from the
outputs: the end-to-end latency p50 (camera stamp -> fused image received), whose remainder
beyond the two is DDS transport of the inputs and outputs, waiting and the replayer. Prints
the medians over runs beside the goals (node overhead <= 3 ms per pair; >= 25 fused pairs/s
at 30 Hz). Bundle: ``--bundle``, else the package's default bundle, else an untrained realtime
export (training.export) made for this measurement. The recorder subscribes to every output,
so the node also renders the segmentation colour image and the debug view (boxes and overlay
on the fused image) as it does for RViz; ``--no-debug`` turns the debug view off.
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

GOAL_OVERHEAD_MS = 3.0
GOAL_FUSED_PER_S = 25.0


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
    parser.add_argument("--fast-rate", type=float, default=3.0,
                        help="replay rate of the throughput run (the sample is 10 Hz); 0: none")
    parser.add_argument("--no-debug", action="store_true",
                        help="publish_debug off (the recorder subscribes to every output, so "
                        "by default the node also renders and sends its debug view)")
    parser.add_argument("--fast-loops", type=int, default=20,
                        help="loops of the 6-pair sample in the throughput run")
    args = parser.parse_args(argv)

    from ros2_bilevel_fusion.bag.live_run import node_status, run_bag_through_node
    from ros2_bilevel_fusion.core import resources

    bag = Path(args.bag) if args.bag else resources.sample_bag_path()
    per_run = []
    node_params = {"publish_debug": False} if args.no_debug else None
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
                node_params=node_params,
            )
            if not result.latency_ms or result.inference_ms_p50 is None:
                print(f"  run {run}: no fused output or no diagnostics; skipped", flush=True)
                continue
            latency_p50 = float(np.median(result.latency_ms))
            node = float(node_status(result.diagnostics).get("overhead_ms_p50", "nan"))
            per_run.append((latency_p50, result.inference_ms_p50, node, result))
            print(
                f"  run {run}: {result.input_pairs_published} pairs in, {result.pairs_out} out, "
                f"latency p50 {latency_p50:.1f} ms (p95 "
                f"{np.percentile(result.latency_ms, 95):.1f}), inference p50 "
                f"{result.inference_ms_p50:.1f} ms, node overhead p50 {node:.2f} ms, "
                f"{result.throughput_pairs_per_s:.1f} fused/s, drops {result.drops_by_reason}",
                flush=True,
            )
        fast = None
        if args.fast_rate > 0:
            result = run_bag_through_node(
                bag, bundle=bundle, backend=args.backend, rate=args.fast_rate,
                loops=args.fast_loops,
                out_dir=Path(tmp) / "fast", timeout_s=300.0, node_params=node_params,
            )
            fast = result.throughput_pairs_per_s
            print(f"  at rate {args.fast_rate}: {result.input_pairs_published} pairs in, "
                  f"{result.pairs_out} out, {fast:.1f} fused/s, inference p50 "
                  f"{result.inference_ms_p50}, drops {result.drops_by_reason}", flush=True)
    if not per_run:
        print("no usable run")
        return 1
    latency = statistics.median(r[0] for r in per_run)
    inference = statistics.median(r[1] for r in per_run)
    node = statistics.median(r[2] for r in per_run)
    print(
        f"median over {len(per_run)} runs at rate {args.rate}: end-to-end latency "
        f"{latency:.1f} ms = inference {inference:.1f} + node overhead {node:.2f} + transport, "
        f"waiting and replayer {latency - inference - node:.1f}"
    )
    verdict = "met" if node <= GOAL_OVERHEAD_MS else "NOT met"
    print(f"node overhead per pair: {node:.2f} ms (goal <= {GOAL_OVERHEAD_MS:g} ms: {verdict})")
    if fast is not None:
        verdict = "met" if fast >= GOAL_FUSED_PER_S else "NOT met"
        print(f"fused pairs per second with the camera at {10 * args.fast_rate:.0f} Hz: "
              f"{fast:.1f} (goal >= {GOAL_FUSED_PER_S:g}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
