"""``fusion-pairs-to-bag``: a folder of registered IR/visible pairs -> a rosbag2 for replay.

Stamps imitate two free-running cameras: visible frames every 1/fps, the IR frame of the same
pair ``--ir-offset-ms`` later, both with a little Gaussian jitter from a fixed seed, so the bag is
reproducible and the node's approximate-time pairing has real work to do. Record times equal the
header stamps. With ``--labels DIR`` (YOLO txt files named like the images) the boxes are written
to ``labels.json`` inside the bag folder (see :mod:`ros2_bilevel_fusion.bag.bagio`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ros2_bilevel_fusion.bag.bagio import (
    IR_TOPIC,
    VISIBLE_TOPIC,
    ImageBagWriter,
    write_label_sidecar,
)
from ros2_bilevel_fusion.messages.stamps import NS_PER_S

LOG = logging.getLogger("fusion-pairs-to-bag")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# A fixed epoch keeps bags byte-reproducible: 2023-11-14T22:13:20Z.
DEFAULT_START_NS = 1_700_000_000 * NS_PER_S


@dataclass(frozen=True)
class ImagePair:
    name: str
    ir_path: Path
    visible_path: Path


def find_pairs(ir_dir: Path, visible_dir: Path) -> list[ImagePair]:
    """Pairs whose file stem appears in both folders, sorted by name."""
    def by_stem(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}

    ir_files, visible_files = by_stem(ir_dir), by_stem(visible_dir)
    names = sorted(set(ir_files) & set(visible_files))
    return [ImagePair(name, ir_files[name], visible_files[name]) for name in names]


def plan_stamps(
    count: int,
    fps: float,
    ir_offset_ms: float,
    jitter_ms: float = 0.5,
    seed: int = 0,
    start_ns: int = DEFAULT_START_NS,
) -> tuple[np.ndarray, np.ndarray]:
    """Header stamps (int64 ns) for ``count`` visible and IR frames.

    Jitter is clipped to a quarter period so frames never reorder.
    """
    if fps <= 0:
        raise ValueError("fps must be positive")
    rng = np.random.default_rng(seed)
    period_ns = 1e9 / fps
    limit_ns = period_ns / 4
    visible_jitter = np.clip(rng.normal(0, jitter_ms * 1e6, count), -limit_ns, limit_ns)
    ir_jitter = np.clip(rng.normal(0, jitter_ms * 1e6, count), -limit_ns, limit_ns)
    # Offsets stay small floats; the epoch is added as an integer (float64 cannot hold ns at 1e18).
    offsets = np.arange(count) * period_ns
    visible = np.int64(start_ns) + np.round(offsets + visible_jitter).astype(np.int64)
    ir = np.int64(start_ns) + np.round(offsets + ir_offset_ms * 1e6 + ir_jitter).astype(np.int64)
    return visible, ir


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, not {text!r}") from exc
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return width, height


def yolo_to_pixel_boxes(text: str, width: int, height: int) -> list[dict[str, float]]:
    """YOLO lines ``class cx cy w h`` (normalised) -> boxes in pixels of a width x height image."""
    boxes = []
    for line_number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise ValueError(f"line {line_number}: expected 5 fields, got {len(fields)}")
        cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
        boxes.append({"class": cls, "cx": cx * width, "cy": cy * height, "w": w * width,
                      "h": h * height})
    return boxes


def load_pair(
    pair: ImagePair, size: tuple[int, int] | None, ir_encoding: str
) -> tuple[np.ndarray, np.ndarray]:
    """(IR as mono8/mono16, visible as bgr8), resized to ``size`` (w, h) when given."""
    ir = cv2.imread(str(pair.ir_path), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(pair.visible_path), cv2.IMREAD_COLOR)
    if ir is None or visible is None:
        raise ValueError(f"cannot read pair {pair.name} ({pair.ir_path}, {pair.visible_path})")
    if size is None:
        size = (visible.shape[1], visible.shape[0])
    if (ir.shape[1], ir.shape[0]) != size:
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
    if (visible.shape[1], visible.shape[0]) != size:
        visible = cv2.resize(visible, size, interpolation=cv2.INTER_AREA)
    if ir_encoding == "mono16":
        # Full 16-bit range, as a radiometric camera would fill it (255 * 257 = 65535).
        ir = ir.astype(np.uint16) * 257
    return ir, visible


@dataclass(frozen=True)
class ConversionSummary:
    bag: Path
    pairs: int
    frames_per_topic: int
    size: tuple[int, int]
    labelled_frames: int


def convert(
    ir_dir: Path,
    visible_dir: Path,
    out: Path,
    *,
    fps: float = 10.0,
    ir_offset_ms: float = 3.0,
    storage: str = "sqlite3",
    size: tuple[int, int] | None = None,
    ir_encoding: str = "mono8",
    limit: int | None = None,
    frame_ids: tuple[str, str] = ("ir", "visible"),
    labels_dir: Path | None = None,
    repeat: int = 1,
    jitter_ms: float = 0.5,
    seed: int = 0,
    compress: bool = False,
    names: list[str] | None = None,
) -> ConversionSummary:
    """Write the bag; returns what was written. ``repeat`` plays the selection that many times.

    ``names`` picks pairs by file stem, in the given order.
    """
    pairs = find_pairs(ir_dir, visible_dir)
    if names is not None:
        by_name = {pair.name: pair for pair in pairs}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise FileNotFoundError(f"pairs {missing} not found in {ir_dir} and {visible_dir}")
        pairs = [by_name[name] for name in names]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise FileNotFoundError(f"no pairs with the same name in {ir_dir} and {visible_dir}")
    if ir_encoding not in ("mono8", "mono16"):
        raise ValueError("ir_encoding must be mono8 or mono16")
    if size is None:
        # All frames of a stream must share one size; take the first visible image's.
        first = cv2.imread(str(pairs[0].visible_path), cv2.IMREAD_COLOR)
        if first is None:
            raise ValueError(f"cannot read {pairs[0].visible_path}")
        size = (first.shape[1], first.shape[0])
    images = [load_pair(pair, size, ir_encoding) for pair in pairs]
    frame_count = len(pairs) * max(1, repeat)
    visible_stamps, ir_stamps = plan_stamps(frame_count, fps, ir_offset_ms, jitter_ms, seed)
    labels: dict[int, list[dict[str, float]]] = {}
    with ImageBagWriter(out, storage=storage, compress=compress) as writer:
        for index in range(frame_count):
            pair = pairs[index % len(pairs)]
            ir, visible = images[index % len(pairs)]
            visible_ns, ir_ns = int(visible_stamps[index]), int(ir_stamps[index])
            # Write in time order: the IR frame may come before or after the visible one.
            frames = [
                (visible_ns, VISIBLE_TOPIC, visible, "bgr8", frame_ids[1]),
                (ir_ns, IR_TOPIC, ir, ir_encoding, frame_ids[0]),
            ]
            for stamp, topic, array, encoding, frame_id in sorted(frames, key=lambda f: f[0]):
                writer.write_image(topic, array, encoding, stamp, frame_id)
            if labels_dir is not None:
                label_file = labels_dir / f"{pair.name}.txt"
                if label_file.is_file():
                    labels[visible_ns] = yolo_to_pixel_boxes(label_file.read_text(), *size)
    if labels_dir is not None:
        write_label_sidecar(out, labels)
    return ConversionSummary(out, len(pairs), frame_count, size, len(labels))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-pairs-to-bag",
        description="Write registered IR/visible image pairs (same file names) into a rosbag2 "
        f"with topics {IR_TOPIC} and {VISIBLE_TOPIC}.",
    )
    parser.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    parser.add_argument("--vi", type=Path, required=True, help="folder of visible images")
    parser.add_argument("--out", type=Path, required=True, help="bag folder to create")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--ir-offset-ms", type=float, default=3.0,
                        help="IR stamp minus visible stamp of a pair")
    parser.add_argument("--jitter-ms", type=float, default=0.5, help="stamp jitter (std dev)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    parser.add_argument("--compress", action="store_true", help="zstd compression")
    parser.add_argument("--resize", type=parse_size, default=None, metavar="WxH",
                        help="common size (default: the first visible image's size)")
    parser.add_argument("--ir-encoding", choices=["mono8", "mono16"], default="mono8")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    parser.add_argument("--names", default=None,
                        help="comma-separated file stems to use, in this order")
    parser.add_argument("--repeat", type=int, default=1, help="write the selection N times")
    parser.add_argument("--frame-ids", default="ir,visible", help="IR,visible frame ids")
    parser.add_argument("--labels", type=Path, default=None,
                        help="folder of YOLO txt labels -> labels.json in the bag")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    frame_ids = tuple(args.frame_ids.split(","))
    if len(frame_ids) != 2:
        LOG.error("--frame-ids needs two comma-separated names, got %r", args.frame_ids)
        return 2
    try:
        summary = convert(
            args.ir, args.vi, args.out, fps=args.fps, ir_offset_ms=args.ir_offset_ms,
            storage=args.storage, size=args.resize, ir_encoding=args.ir_encoding,
            limit=args.limit, frame_ids=(frame_ids[0], frame_ids[1]), labels_dir=args.labels,
            repeat=args.repeat, jitter_ms=args.jitter_ms, seed=args.seed, compress=args.compress,
            names=args.names.split(",") if args.names else None,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        LOG.error("%s", exc)
        return 1
    LOG.info(
        "wrote %s: %d pairs, %d frames per topic, %dx%d, %d labelled frames",
        summary.bag, summary.pairs, summary.frames_per_topic, *summary.size,
        summary.labelled_frames,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
