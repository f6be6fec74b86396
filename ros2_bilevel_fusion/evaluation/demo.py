"""``fusion-demo``: play the shipped TNO sample through the live fusion node and report.

Runs :func:`~ros2_bilevel_fusion.bag.live_run.run_bag_through_node` (node and replayer as separate
processes, loopback DDS, private domain) on the sample bag, looped to about ``--duration``
seconds, then writes into ``--out``:

* ``fused/``, ``segmentation/`` (colour), ``debug/``: PNGs of what the node published;
* ``overview.png``: IR | visible | fused | debug side by side for the first distinct frames;
* ``detections.json``: every ``~/detections/json`` message the node published;
* ``summary.json``: the numbers; ``report.md``: the same for people (also printed);
* ``node.log``, ``replay.log``, ``params.yaml``: for troubleshooting.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ros2_bilevel_fusion.bag.bagio import (
    IR_TOPIC,
    VISIBLE_TOPIC,
    BagError,
    find_input_topics,
    read_bag,
)
from ros2_bilevel_fusion.bag.live_run import (
    LiveRunError,
    LiveRunResult,
    add_topic_arguments,
    result_summary,
    run_bag_through_node,
)
from ros2_bilevel_fusion.bag.replay import loop_period_ns
from ros2_bilevel_fusion.core import resources
from ros2_bilevel_fusion.core.bundle import BundleError, load_bundle
from ros2_bilevel_fusion.messages.codec import ImageCodecError, message_to_array
from ros2_bilevel_fusion.messages.strict_json import write_json

LOG = logging.getLogger("fusion-demo")

IMAGE_FOLDERS = {"fused": "fused", "segmentation/color": "segmentation", "debug_image": "debug"}
OVERVIEW = "overview.png"


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    bag: Path
    bundle: Path
    backend: str = "onnxruntime"
    duration_s: float = 10.0
    rate: float = 1.0
    timeout_s: float = 150.0
    max_pngs: int = 1000
    ir_topic: str = IR_TOPIC  # the bag's camera topics (Image or CompressedImage)
    visible_topic: str = VISIBLE_TOPIC


def resolve_bag(path: Path) -> Path:
    """A rosbag2 folder, or a folder holding exactly one (``--bag sample`` works)."""
    path = Path(path)
    if (path / "metadata.yaml").is_file():
        return path
    inner = sorted(p.parent for p in path.glob("*/metadata.yaml")) if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise BagError(f"{path} is not a rosbag2 folder and does not hold exactly one"
                   f" ({len(inner)} found)")


def loops_for_duration(bag: Path, duration_s: float,
                       topics: list[str] | None = None) -> tuple[int, float]:
    """(loops, pass length in s) so that the looped bag (``topics`` of it, as the replayer
    plays them) plays for about ``duration_s``."""
    record_times: dict[str, list[int]] = {}
    for message in read_bag(bag, topics):
        record_times.setdefault(message.topic, []).append(message.timestamp_ns)
    pass_s = loop_period_ns(record_times) / 1e9
    return max(1, math.ceil(duration_s / pass_s - 1e-9)), pass_s


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, 50)), float(np.percentile(array, 95))


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def write_images(result: LiveRunResult, out: Path, max_pngs: int) -> dict[str, int]:
    """PNG per recorded image output; returns how many were written per folder."""
    written = {}
    for output, folder_name in IMAGE_FOLDERS.items():
        folder = out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for index, record in enumerate(result.output(output)):
            if record.payload is None or count >= max_pngs:
                continue
            cv2.imwrite(str(folder / f"{index:04d}_{record.stamp_ns}.png"), record.payload)
            count += 1
        written[folder_name] = count
    return written


def bag_frames(bag: Path, topic: str) -> list[np.ndarray]:
    """Images of one topic of the bag, in order, as 3-channel BGR (for the overview)."""
    frames = []
    for message in read_bag(bag, [topic]):
        image, _encoding = message_to_array(message.decode())
        if image.dtype != np.uint8:
            image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        frames.append(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image)
    return frames


def write_overview(result: LiveRunResult, bag: Path, path: Path, columns: int = 4,
                   tile_width: int = 320) -> bool:
    """A PNG grid, one row per distinct frame: IR | visible | fused | debug.

    The replayer publishes the bag's frames in order, pass after pass, so the n-th visible
    image the recorder saw is bag frame n modulo the pass length; a fused image carries that
    visible image's stamp.
    """
    visible_in = bag_frames(bag, result.bag_inputs["visible"].bag_topic)
    ir_in = bag_frames(bag, result.bag_inputs["ir"].bag_topic)
    if not visible_in or not ir_in:
        return False
    index_of_stamp = {
        record.stamp_ns: n % len(visible_in)
        for n, record in enumerate(result.input_records("visible"))
    }
    debug_by_stamp = {r.stamp_ns: r.payload for r in result.output("debug_image")}
    rows, seen = [], set()
    for record in result.output("fused"):
        frame = index_of_stamp.get(record.stamp_ns)
        if frame is None or frame in seen or record.payload is None:
            continue
        seen.add(frame)
        fused = record.payload
        fused = cv2.cvtColor(fused, cv2.COLOR_GRAY2BGR) if fused.ndim == 2 else fused
        debug = debug_by_stamp.get(record.stamp_ns)
        tiles = [ir_in[min(frame, len(ir_in) - 1)], visible_in[frame], fused]
        if debug is not None:
            tiles.append(debug)
        height = round(tile_width * fused.shape[0] / fused.shape[1])
        tiles = [cv2.resize(t, (tile_width, height), interpolation=cv2.INTER_AREA)
                 for t in tiles]
        tiles += [np.zeros_like(tiles[0])] * (4 - len(tiles))
        rows.append(np.hstack(tiles))
        if len(rows) == columns:
            break
    if not rows:
        return False
    cv2.imwrite(str(path), np.vstack(rows))
    return True


def detections_document(result: LiveRunResult) -> list[dict[str, Any]]:
    return [
        {"stamp_ns": record.stamp_ns, "receive_ns": record.receive_ns, **record.payload}
        if isinstance(record.payload, dict)
        else {"stamp_ns": record.stamp_ns, "receive_ns": record.receive_ns,
              "payload": record.payload}
        for record in result.output("detections/json")
    ]


def render_report(result: LiveRunResult, options: DemoOptions, summary: dict[str, Any],
                  written: dict[str, int], model: dict[str, Any], overview: bool = False) -> str:
    latency_p50, latency_p95 = percentiles(result.latency_ms)
    detections = detections_document(result)
    boxes = sum(len(d.get("detections", [])) for d in detections)
    drops = ", ".join(f"{k} {v}" for k, v in sorted(result.drops_by_reason.items())) or "none"
    lines = [
        "# fusion-demo report",
        "",
        f"Bag `{options.bag}` played {summary['loops']} times ({summary['pass_s']:.2f} s per "
        f"pass, rate {options.rate}) into a live `fusion_node`; outputs recorded over DDS.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| model | {model['name']} (`{options.bundle}`) |",
        f"| backend | {result.backend} |",
        f"| input pairs published | {result.input_pairs_published} |",
        f"| fused images received | {result.pairs_out} |",
        f"| drops by reason (node diagnostics) | {drops} |",
        f"| fused images per second | {result.throughput_pairs_per_s:.2f} |",
        f"| latency input stamp -> fused received, p50 / p95 | {_fmt_ms(latency_p50)} / "
        f"{_fmt_ms(latency_p95)} |",
        f"| inference p50 / p95 (node diagnostics) | {_fmt_ms(result.inference_ms_p50)} / "
        f"{_fmt_ms(result.inference_ms_p95)} |",
        f"| detection messages / boxes | {len(detections)} / {boxes} |",
        f"| wall time of the live run | {result.wall_time_s:.1f} s |",
        "",
        "Latency is measured on this machine's wall clock: the replayer stamps each input with "
        "its publish time and the node copies the visible stamp into its outputs. Inference "
        "percentiles cover the node's recent window (its last /diagnostics).",
        "",
        "## Files",
        "",
        *(f"- `{folder}/`: {count} PNGs" for folder, count in written.items()),
        *([f"- `{OVERVIEW}`: IR | visible | fused | debug, one row per distinct frame"]
          if overview else []),
        "- `detections.json`: every detections message (JSON as the node publishes it)",
        "- `summary.json`, `node.log`, `replay.log`, `params.yaml`",
        "",
    ]
    if model.get("note"):
        lines += [f"Model note: {model['note']}", ""]
    return "\n".join(lines)


def run_demo(options: DemoOptions) -> tuple[str, dict[str, Any]]:
    """Run the demo; returns (report markdown, summary dict). Raises on failure."""
    bundle = load_bundle(options.bundle)  # fail early and clearly on a broken bundle
    # The bag's camera topics, checked before anything starts (a BagError names the bag's).
    inputs = find_input_topics(options.bag, options.ir_topic, options.visible_topic)
    loops, pass_s = loops_for_duration(options.bag, options.duration_s,
                                       [inputs["ir"].bag_topic, inputs["visible"].bag_topic])
    out = options.out
    for folder_name in IMAGE_FOLDERS.values():
        shutil.rmtree(out / folder_name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    LOG.info("playing %s %d times (%.2f s per pass) with bundle %s on %s", options.bag, loops,
             pass_s, options.bundle, options.backend)
    result = run_bag_through_node(
        options.bag, bundle=options.bundle, backend=options.backend, rate=options.rate,
        out_dir=out, timeout_s=options.timeout_s, loops=loops,
        ir_topic=options.ir_topic, visible_topic=options.visible_topic,
    )
    written = write_images(result, out, options.max_pngs)
    (out / OVERVIEW).unlink(missing_ok=True)
    overview = write_overview(result, options.bag, out / OVERVIEW)
    write_json(out / "detections.json", detections_document(result))
    summary = result_summary(result)
    summary.update(loops=loops, pass_s=pass_s, bag=str(options.bag), bundle=str(options.bundle),
                   pngs=written)
    write_json(out / "summary.json", summary)
    model = {"name": bundle.name, "note": str(bundle.provenance.get("note", ""))}
    report = render_report(result, options, summary, written, model, overview)
    (out / "report.md").write_text(report)
    return report, summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-demo",
        description="Play the sample bag through the live fusion node; write PNGs and a report.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--bag", type=Path, default=None,
                        help="rosbag2 folder (default: the shipped TNO sample)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle folder (default: the shipped models/default)")
    parser.add_argument("--backend", default="onnxruntime",
                        help="onnxruntime, tensorrt or torch (as the node accepts)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of input to play (the sample is looped)")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=150.0)
    add_topic_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        options = DemoOptions(
            out=args.out,
            bag=resolve_bag(args.bag) if args.bag is not None else resources.sample_bag_path(),
            bundle=args.bundle if args.bundle is not None else resources.default_bundle_path(),
            backend=args.backend,
            duration_s=args.duration,
            rate=args.rate,
            timeout_s=args.timeout,
            ir_topic=args.ir_topic,
            visible_topic=args.visible_topic,
        )
        report, _ = run_demo(options)
    except (BundleError, BagError, ImageCodecError, LiveRunError, resources.ResourceError) as exc:
        LOG.error("%s", exc)
        return 1
    print(report)
    LOG.info("wrote %s", options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
