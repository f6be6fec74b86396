"""``fusion-eval``: score a model bundle on image folders or on what the ROS node publishes.

Folder mode runs every IR/visible pair through exactly the node's pre- and post-processing
(:class:`ros2_bilevel_fusion.core.pipeline.FusionPipeline`), computes the fusion metrics of
:mod:`ros2_bilevel_fusion.evaluation.metrics` for the model and for classical baselines with
the same code, and, when labels are given, detection mAP and segmentation IoU. Bag mode replays a
bag through the real node (:func:`ros2_bilevel_fusion.bag.live_run.run_bag_through_node`) and scores
what the node published: fusion metrics, latency, throughput and drops.

Every report folder holds ``summary.md`` (or ``report.md``), CSVs, ``summary.json`` and PNGs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.evaluation import baselines, metrics, report
from ros2_bilevel_fusion.evaluation.semantic_metrics import (
    ConfusionMatrix,
    detection_map,
    yolo_to_xyxy,
)

LOG = logging.getLogger("fusion-eval")

BASELINE_LABELS = {name: f"{name} fusion (baseline)" for name in baselines.BASELINES}
SAMPLE_COUNT = 4


class EvaluationError(RuntimeError):
    """The evaluation cannot run (missing inputs, unusable bundle, no pairs)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class FolderPair:
    name: str  # file name of the IR image; outputs are written as <stem>.png
    ir_path: Path
    visible_path: Path

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def find_folder_pairs(
    ir_dir: Path, visible_dir: Path, limit: int | None = None
) -> list[FolderPair]:
    """IR images with a visible image of the same stem, sorted by name, at most ``limit``."""
    pairs = []
    for ir_path in metrics.list_images(ir_dir):
        visible_path = metrics.find_pair_file(visible_dir, ir_path.name)
        if visible_path is None:
            LOG.warning("no visible image for %s; skipped", ir_path.name)
            continue
        pairs.append(FolderPair(ir_path.name, ir_path, visible_path))
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise EvaluationError(f"no IR/visible pairs in {ir_dir} and {visible_dir}")
    return pairs


def parse_mask_map(text: str | None) -> dict[int, int]:
    """'255:1,128:2' -> {255: 1, 128: 2}: mask pixel value -> class id."""
    mapping: dict[int, int] = {}
    if not text:
        return mapping
    for item in text.split(","):
        try:
            value, class_id = (int(part) for part in item.split(":"))
        except ValueError as exc:
            raise EvaluationError(f"--mask-map item {item!r} is not VALUE:CLASS") from exc
        mapping[value] = class_id
    return mapping


def mask_to_labels(
    mask: np.ndarray, mask_map: dict[int, int], num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Class ids from a mask: mapped values as given, other values kept when they are valid
    class ids (0 = background stays 0), anything else becomes ``ignore_index``."""
    lookup = np.full(256, ignore_index, dtype=np.int64)
    lookup[: min(num_classes, 256)] = np.arange(min(num_classes, 256))
    for value, class_id in mask_map.items():
        if not 0 <= class_id < num_classes:
            raise EvaluationError(f"--mask-map class {class_id} outside 0..{num_classes - 1}")
        lookup[value] = class_id
    return lookup[mask]


def visible_luma(visible_bgr: np.ndarray) -> np.ndarray:
    """The Y the network sees: OpenCV's YCrCb Y channel of the visible image (uint8)."""
    return cv2.cvtColor(visible_bgr, cv2.COLOR_BGR2YCrCb)[:, :, 0]


# --------------------------------------------------------------------------- pipeline glue


def build_pipeline(
    bundle_path: Path, backend_kind: str, registration: Registration
) -> tuple[Any, Any]:
    """(pipeline, bundle): the node's FusionPipeline for this bundle, backend, registration."""
    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle
    from ros2_bilevel_fusion.core.pipeline import FusionPipeline

    bundle = load_bundle(bundle_path)
    backend = create_backend(backend_kind, bundle)
    # Post-processing thresholds from model.yaml, as the node uses by default.
    return FusionPipeline(backend, registration), bundle


# --------------------------------------------------------------------------- folder mode


@dataclass
class FolderResult:
    model_name: str
    rows: list[dict] = field(default_factory=list)  # one per (method, image)
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> mean
    detection: dict | None = None
    segmentation: dict | None = None
    timing: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # pairs whose files could not be read
    summary_markdown: str = ""


def _looks_like_tno(ir_dir: Path) -> bool:
    return any(part.lower() == "tno" for part in ir_dir.resolve().parts)


def evaluate_folder_pairs(
    pipeline: Any | None,
    bundle: Any | None,
    pairs: Sequence[FolderPair],
    out_dir: Path,
    *,
    registration: Registration | None = None,
    labels_dir: Path | None = None,
    masks_dir: Path | None = None,
    mask_map: dict[int, int] | None = None,
    save_fused: bool = False,
    with_baselines: bool = False,
    is_tno: bool = False,
) -> FolderResult:
    """Run ``pipeline.process`` on every pair and write the report into ``out_dir``.

    ``registration`` must be the one the pipeline uses (it puts the IR into the visible geometry
    for the metrics and the baselines); identity when not given. With ``pipeline`` None only the
    baselines are evaluated (``with_baselines`` is then implied, labels and masks ignored).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    registration = registration or Registration.identity()
    has_model = pipeline is not None and bundle is not None
    model_label = f"{bundle.name} (model)" if has_model else ""
    with_baselines = with_baselines or not has_model
    result = FolderResult(model_name=model_label or "baselines only")
    methods = ([model_label] if has_model else []) + (
        [BASELINE_LABELS[n] for n in baselines.BASELINES] if with_baselines else []
    )
    per_method_rows: dict[str, list[dict]] = {method: [] for method in methods}
    inference_ms: list[float] = []
    total_ms: list[float] = []
    predictions: list[dict] = []
    truths: list[dict] = []
    confusion = None
    if masks_dir is not None and has_model:
        if bundle.segmentation is None:
            LOG.warning("--masks given but the bundle has no segmentation head; skipped")
        else:
            confusion = ConfusionMatrix(len(bundle.segmentation.classes))
    if labels_dir is not None and (not has_model or bundle.detection is None):
        LOG.warning("--labels given but there is no model with a detection head; skipped")
        labels_dir = None
    samples: list[list[tuple[str, np.ndarray]]] = []

    for pair in pairs:
        try:
            ir_u8 = metrics.read_u8(pair.ir_path, grey=True)
            visible_bgr = metrics.read_u8(pair.visible_path, grey=False)
        except metrics.MetricInputError as exc:
            # One corrupt file should not void the evaluation of the others; it is counted.
            LOG.warning("%s: skipped (%s)", pair.name, exc)
            result.skipped.append(pair.name)
            continue
        # The sources as the metrics see them: the IR in the visible geometry (the node's
        # registration; identity resizes a differently sized IR) and the visible grey levels.
        ir_registered = registration.warp(ir_u8, visible_bgr.shape[:2])
        ir_gray = ir_registered.astype(np.float64)
        visible_gray = metrics.to_gray_float(visible_bgr)
        fused_by_method: dict[str, np.ndarray] = {}
        sample: list[tuple[str, np.ndarray]] = [("IR", ir_u8), ("VI", visible_bgr)]
        fusion = None
        if has_model:
            fusion = pipeline.process(ir_u8, visible_bgr)
            inference_ms.append(float(fusion.inference_ms))
            total_ms.append(float(fusion.total_ms))
            fused_y = np.asarray(fusion.fused_y)
            if fused_y.dtype != np.uint8 or fused_y.shape != visible_bgr.shape[:2]:
                raise EvaluationError(
                    f"{pair.name}: pipeline returned fused_y {fused_y.dtype} {fused_y.shape}, "
                    f"expected uint8 {visible_bgr.shape[:2]}"
                )
            fused_by_method[model_label] = fused_y
            fused_view = fused_y if fusion.fused_bgr is None else np.asarray(fusion.fused_bgr)
            sample.append(("fused", fused_view))
            if save_fused:
                _write_png(out_dir / "fused" / f"{pair.stem}.png", fused_y)
                if fusion.fused_bgr is not None:
                    _write_png(out_dir / "fused_color" / f"{pair.stem}.png", fused_view)
        if with_baselines:
            # Baselines fuse the same inputs the network sees: registered IR and visible Y.
            luma = visible_luma(visible_bgr)
            for name, fuse in baselines.BASELINES.items():
                fused_by_method[BASELINE_LABELS[name]] = fuse(ir_registered, luma)
                sample.append((name, fused_by_method[BASELINE_LABELS[name]]))
        for method, fused in fused_by_method.items():
            row: dict[str, Any] = {"method": method, "name": pair.name}
            row.update(metrics.fusion_metrics(fused.astype(np.float64), ir_gray, visible_gray))
            if fusion is not None and method == model_label:
                row.update(inference_ms=fusion.inference_ms, total_ms=fusion.total_ms)
            per_method_rows[method].append(row)
            result.rows.append(row)
        if fusion is not None and labels_dir is not None:
            label_path = labels_dir / f"{pair.stem}.txt"
            if label_path.is_file():  # no file: image not labelled; empty file: no objects
                height, width = visible_bgr.shape[:2]
                truths.append(yolo_to_xyxy(label_path.read_text().splitlines(), width, height))
                predictions.append(detections_to_entry(fusion.detections))
                # (bundle.detection is not None here, so the pipeline returns Detections)
        if fusion is not None and confusion is not None:
            mask_path = metrics.find_pair_file(masks_dir, pair.name)
            if mask_path is not None and fusion.seg_labels is not None:
                mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
                if mask is None or mask.shape != visible_bgr.shape[:2]:
                    raise EvaluationError(f"mask {mask_path} unreadable or of the wrong size")
                truth = mask_to_labels(mask, mask_map or {}, confusion.num_classes)
                confusion.update(np.asarray(fusion.seg_labels), truth)
        if len(samples) < SAMPLE_COUNT:
            samples.append(sample)

    for method in methods:
        result.means[method] = metrics.mean_metrics(per_method_rows[method])
    if inference_ms:
        result.timing = {
            "inference_ms": report.percentiles(inference_ms),
            "total_ms": report.percentiles(total_ms),
        }
    if labels_dir is not None:
        result.detection = detection_map(predictions, truths, bundle.detection.classes)
        result.detection["labelled_images"] = len(truths)
    if confusion is not None:
        result.segmentation = segmentation_summary(confusion, bundle.segmentation.classes)

    columns = ["method", "name", *metrics.METRIC_NAMES, "inference_ms", "total_ms"]
    report.write_csv(out_dir / "per_image.csv", result.rows, columns)
    if samples:
        report.save_sample_grid(out_dir / "samples.png", samples)
    published = {report.CDDFUSE_LABEL: report.CDDFUSE_TNO_PUBLISHED} if is_tno else None
    if len(result.skipped) == len(pairs):
        raise EvaluationError(f"none of the {len(pairs)} pairs could be read")
    result.summary_markdown = _folder_summary(result, len(pairs) - len(result.skipped), published)
    (out_dir / "summary.md").write_text(result.summary_markdown)
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "model": result.model_name,
                "images": len(pairs) - len(result.skipped),
                "skipped": result.skipped,
                "means": result.means,
                "timing": result.timing,
                "detection": result.detection,
                "segmentation": result.segmentation,
                "published_reference": published,
                "conventions": metrics.CONVENTIONS,
            },
            indent=1,
            default=_json_default,
        )
    )
    return result


def detections_to_entry(detections: Any) -> dict[str, np.ndarray]:
    """A prediction entry for :func:`detection_map` from the pipeline's Detections."""
    return {
        "boxes": np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4),
        "scores": np.asarray(detections.scores, dtype=np.float64).reshape(-1),
        "labels": np.asarray(detections.class_ids, dtype=np.int64).reshape(-1),
    }


def segmentation_summary(confusion: ConfusionMatrix, classes: Sequence[str]) -> dict:
    scores = confusion.scores()
    return {
        "classes": list(classes),
        "mIoU": scores["mIoU"],
        "mAcc": scores["mAcc"],
        "pixel_acc": scores["pixel_acc"],
        "per_class_iou": scores["per_class_iou"],
        "confusion": scores["confusion"].tolist(),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise EvaluationError(f"cannot write {path}")


def _detection_markdown(detection: dict) -> str:
    per_class = ", ".join(
        f"{name} {report.format_value(ap)}" for name, ap in detection["per_class_AP50"].items()
    )
    return (
        "## Detection (COCO protocol, pycocotools)\n\n"
        f"{detection['labelled_images']} labelled images, {detection['num_ground_truths']} "
        f"ground-truth boxes, {detection['num_predictions']} predictions.\n\n"
        f"mAP@0.5 **{report.format_value(detection['mAP50'])}**, "
        f"mAP@0.5:0.95 **{report.format_value(detection['mAP50_95'])}**. "
        f"AP@0.5 per class: {per_class} (n/a: no ground truth of that class).\n"
    )


def _segmentation_markdown(segmentation: dict) -> str:
    per_class = ", ".join(
        f"{name} {report.format_value(iou)}"
        for name, iou in zip(segmentation["classes"], segmentation["per_class_iou"], strict=True)
    )
    return (
        "## Segmentation\n\n"
        f"mIoU **{report.format_value(segmentation['mIoU'])}** (over classes present in ground "
        "truth or prediction), mAcc "
        f"{report.format_value(segmentation['mAcc'])}, pixel accuracy "
        f"{report.format_value(segmentation['pixel_acc'])}. IoU per class: {per_class}.\n"
    )


def _folder_summary(result: FolderResult, count: int, published: dict | None) -> str:
    skipped = f" ({len(result.skipped)} unreadable, skipped)" if result.skipped else ""
    parts = [
        f"# fusion-eval: {result.model_name}, {count} image pairs{skipped}\n",
        "## Fusion metrics (mean over images)\n",
        report.fusion_table(result.means, published),
    ]
    if result.timing:
        parts += [
            "## Time per frame in ms (pipeline on this machine)\n",
            report.markdown_table(
                [{"stage": stage, **values} for stage, values in result.timing.items()],
                ["stage", "p50", "p95", "mean", "max", "count"],
                digits=1,
            )
            + "\n",
        ]
    if result.detection is not None:
        parts.append(_detection_markdown(result.detection))
    if result.segmentation is not None:
        parts.append(_segmentation_markdown(result.segmentation))
    return "\n".join(parts)


def run_folder(args: argparse.Namespace) -> int:
    ir_dir, visible_dir, out_dir = Path(args.ir), Path(args.vi), Path(args.out)
    pairs = find_folder_pairs(ir_dir, visible_dir, args.limit)
    registration = Registration.identity()
    pipeline = bundle = None
    if args.bundle:
        pipeline, bundle = build_pipeline(Path(args.bundle), args.backend, registration)
        if args.score_threshold is not None:
            pipeline.config.score_threshold = float(args.score_threshold)
    elif not args.baselines:
        raise EvaluationError("give --bundle, or --baselines for the baselines alone")
    result = evaluate_folder_pairs(
        pipeline,
        bundle,
        pairs,
        out_dir,
        registration=registration,
        labels_dir=Path(args.labels) if args.labels else None,
        masks_dir=Path(args.masks) if args.masks else None,
        mask_map=parse_mask_map(args.mask_map),
        save_fused=args.save_fused,
        with_baselines=args.baselines,
        is_tno=_looks_like_tno(ir_dir),
    )
    print(result.summary_markdown)
    print(f"report written to {out_dir}")
    return 0


# --------------------------------------------------------------------------- bag mode


#: Topics the node subscribes to by default and the recorder listens on (IR, visible).
BAG_IR_TOPIC = "/ir/image"
BAG_VISIBLE_TOPIC = "/visible/image"


@dataclass(frozen=True)
class BagFrame:
    stamp_ns: int  # original header stamp in the bag
    record_ns: int  # the bag's record time of the message
    image: np.ndarray  # IR: uint8 HxW; visible: uint8 HxWx3 BGR


def read_bag_frames(bag: Path, topic: str, grey: bool) -> list[BagFrame]:
    """Every image of ``topic`` in bag order, converted as the node converts it (codec)."""
    from ros2_bilevel_fusion.bag import bagio
    from ros2_bilevel_fusion.messages import codec

    frames = []
    for message in bagio.read_bag(bag, [topic]):
        msg = message.decode()
        array = bagio.image_msg_to_array(msg)
        encoding = str(msg.encoding)
        # 16-bit/float IR: codec's default stretch per frame (the node's gain is stateful).
        image = codec.to_mono8(array, encoding) if grey else codec.to_bgr8(array, encoding)
        frames.append(
            BagFrame(bagio.header_stamp_ns(msg), message.timestamp_ns, np.ascontiguousarray(image))
        )
    return frames


def match_published_to_bag(
    published_stamps: Sequence[int],
    recorded_input_stamps: Sequence[int],
    expected_restamps: Sequence[float],
    tolerance_ns: int = 2_000,
) -> dict[int, int]:
    """Published (restamped) stamp -> index of the bag's visible frame it was made from.

    The replayer restamps inputs with their scheduled wall-clock publish time (plus the
    header's offset from its record time) and the node copies the visible stamp into its
    outputs. The recorder saw the restamped visible inputs in publish order, so when it saw all
    of them the k-th recorded input is the bag's k-th visible frame and a published stamp is
    found exactly among the recorded ones.

    When the recorder missed inputs, ``expected_restamps`` (each bag frame's restamp minus the
    unknown wall-clock start, see :func:`expected_restamps_ns`) are aligned with the recorded
    inputs: the first recorded input is tried as each bag frame it could be, and the alignment
    under which the most recorded inputs land within ``tolerance_ns`` of a bag frame wins. The
    restamp is computed, not measured, so only rounding separates them and stamp jitter in the
    bag makes the alignment unique. A perfectly periodic bag is ambiguous: then nothing is
    matched (a warning says so) rather than frames being scored against the wrong inputs.
    """
    matches: dict[int, int] = {}
    if len(recorded_input_stamps) == len(expected_restamps):
        index_of = {int(stamp): k for k, stamp in enumerate(recorded_input_stamps)}
        for stamp in published_stamps:
            if int(stamp) in index_of:
                matches[int(stamp)] = index_of[int(stamp)]
        return matches
    if not recorded_input_stamps or not len(expected_restamps):
        return matches
    LOG.warning(
        "recorder saw %d of %d visible inputs; matching by restamp alignment",
        len(recorded_input_stamps),
        len(expected_restamps),
    )
    # Work relative to the first recorded stamp: absolute ns (~1.8e18) do not fit a float64.
    origin = int(recorded_input_stamps[0])
    recorded = np.asarray([int(s) - origin for s in recorded_input_stamps], dtype=np.float64)
    expected = np.asarray(expected_restamps, dtype=np.float64)

    def nearest(relative: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
        shifted = relative + shift
        right = np.clip(np.searchsorted(expected, shifted), 0, len(expected) - 1)
        left = np.clip(right - 1, 0, len(expected) - 1)
        pick = np.where(
            np.abs(expected[left] - shifted) <= np.abs(expected[right] - shifted), left, right
        )
        return pick, np.abs(expected[pick] - shifted)

    # The first recorded input is bag frame j for some j <= the number of missed inputs.
    missed = max(0, len(expected) - len(recorded))
    scores = []
    for j in range(min(len(expected), missed + 1)):
        _, error = nearest(recorded, float(expected[j]))
        scores.append((int(np.sum(error <= tolerance_ns)), j))
    best_count = max(count for count, _ in scores)
    best = [j for count, j in scores if count == best_count]
    if len(best) != 1:
        LOG.warning(
            "restamp alignment is ambiguous (%d candidates); published frames not matched",
            len(best),
        )
        return matches
    shift = float(expected[best[0]])
    published = np.asarray([int(s) - origin for s in published_stamps], dtype=np.float64)
    if published.size:
        picks, errors = nearest(published, shift)
        for stamp, pick, error in zip(published_stamps, picks, errors, strict=True):
            if error <= tolerance_ns:
                matches[int(stamp)] = int(pick)
    return matches


def expected_restamps_ns(frames: Sequence[BagFrame], rate: float) -> np.ndarray:
    """Each frame's replay restamp minus the replay's wall-clock start (and a constant).

    The replayer publishes at (record - bag start) / rate and stamps record-relative, so the
    restamp is wall_start + (record - bag_start) / rate + (stamp - record).
    """
    if not frames:
        return np.zeros(0)
    first_record = frames[0].record_ns
    return np.asarray(
        [(f.record_ns - first_record) / rate + (f.stamp_ns - f.record_ns) for f in frames],
        dtype=np.float64,
    )


def nearest_frame(frames: Sequence[BagFrame], stamp_ns: int) -> BagFrame:
    stamps = np.asarray([f.stamp_ns for f in frames], dtype=np.int64)
    return frames[int(np.argmin(np.abs(stamps - stamp_ns)))]


def sidecar_to_truth(boxes: Sequence[dict]) -> dict[str, np.ndarray]:
    """Label side-car boxes (class, cx, cy, w, h in pixels) -> a detection_map ground truth."""
    xyxy = [
        [b["cx"] - b["w"] / 2, b["cy"] - b["h"] / 2, b["cx"] + b["w"] / 2, b["cy"] + b["h"] / 2]
        for b in boxes
    ]
    return {
        "boxes": np.asarray(xyxy, dtype=np.float64).reshape(-1, 4),
        "labels": np.asarray([b["class"] for b in boxes], dtype=np.int64),
    }


def detection_json_to_entry(payload: dict) -> dict[str, np.ndarray]:
    """The node's ~/detections/json payload -> a detection_map prediction entry."""
    items = payload.get("detections", [])
    return {
        "boxes": np.asarray(
            [
                [d["bbox"]["x_min"], d["bbox"]["y_min"], d["bbox"]["x_max"], d["bbox"]["y_max"]]
                for d in items
            ],
            dtype=np.float64,
        ).reshape(-1, 4),
        "scores": np.asarray([d["score"] for d in items], dtype=np.float64),
        "labels": np.asarray([d["class_id"] for d in items], dtype=np.int64),
    }


def _detection_class_names(
    bundle: Path | None, payloads: Sequence[dict], truths: Sequence[dict]
) -> list[str]:
    if bundle is not None:
        from ros2_bilevel_fusion.core.bundle import load_bundle

        loaded = load_bundle(bundle)
        if loaded.detection is not None:
            return list(loaded.detection.classes)
    names: dict[int, str] = {}
    for payload in payloads:
        for item in payload.get("detections", []):
            names[int(item["class_id"])] = str(item.get("class_name", item["class_id"]))
    largest = max(
        [*names, *(int(t["labels"].max()) for t in truths if t["labels"].size)], default=-1
    )
    return [names.get(i, str(i)) for i in range(largest + 1)]


@dataclass
class BagEvaluation:
    markdown: str
    summary: dict[str, Any]


def evaluate_live_result(
    live: Any,
    bag: Path,
    out_dir: Path,
    *,
    bundle: Path | None = None,
    rate: float = 1.0,
    with_baselines: bool = True,
) -> BagEvaluation:
    """Score a :class:`~ros2_bilevel_fusion.bag.live_run.LiveRunResult` against its bag's inputs."""
    from ros2_bilevel_fusion.bag import bagio

    out_dir.mkdir(parents=True, exist_ok=True)
    visible_frames = read_bag_frames(bag, BAG_VISIBLE_TOPIC, grey=False)
    ir_frames = read_bag_frames(bag, BAG_IR_TOPIC, grey=True)
    if not visible_frames or not ir_frames:
        raise EvaluationError(f"{bag} has no images on {BAG_VISIBLE_TOPIC} and {BAG_IR_TOPIC}")
    fused_records = [r for r in live.output("fused") if r.payload is not None]
    recorded_inputs = [r.stamp_ns for r in live.records.get(BAG_VISIBLE_TOPIC, [])]
    matches = match_published_to_bag(
        [r.stamp_ns for r in fused_records],
        recorded_inputs,
        expected_restamps_ns(visible_frames, rate),
    )
    registration = Registration.identity()
    rows: list[dict[str, Any]] = []
    per_method: dict[str, list[dict]] = {}
    samples: list[list[tuple[str, np.ndarray]]] = []
    for record in fused_records:
        index = matches.get(record.stamp_ns)
        if index is None:
            continue
        visible = visible_frames[index]
        ir = nearest_frame(ir_frames, visible.stamp_ns)
        fused = np.asarray(record.payload)
        if fused.shape[:2] != visible.image.shape[:2]:
            raise EvaluationError(
                f"published fused image {fused.shape} does not match the input "
                f"{visible.image.shape}"
            )
        ir_registered = registration.warp(ir.image, visible.image.shape[:2])
        ir_gray = ir_registered.astype(np.float64)
        visible_gray = metrics.to_gray_float(visible.image)
        candidates = {"node (published)": metrics.to_gray_float(fused)}
        if with_baselines:
            luma = visible_luma(visible.image)
            for name, fuse in baselines.BASELINES.items():
                candidates[BASELINE_LABELS[name]] = fuse(ir_registered, luma).astype(np.float64)
        for method, fused_gray in candidates.items():
            row: dict[str, Any] = {
                "method": method,
                "frame": index,
                "visible_stamp_ns": visible.stamp_ns,
                "latency_ms": (record.receive_ns - record.stamp_ns) / 1e6,
            }
            row.update(metrics.fusion_metrics(fused_gray, ir_gray, visible_gray))
            rows.append(row)
            per_method.setdefault(method, []).append(row)
        if len(samples) < SAMPLE_COUNT:
            samples.append([("IR", ir.image), ("VI", visible.image), ("node fused", fused)])

    means = {
        method: metrics.mean_metrics(method_rows) for method, method_rows in per_method.items()
    }

    # Detection: frames with both a published detection message and a side-car entry.
    labels = bagio.read_label_sidecar(bag)
    detection = None
    detection_payloads = [r.payload for r in live.output("detections/json") if r.payload]
    if labels:
        predictions, truths, used_payloads = [], [], []
        for payload in detection_payloads:
            stamp = int(payload["stamp"]["sec"]) * 1_000_000_000 + int(payload["stamp"]["nanosec"])
            index = matches.get(stamp)
            if index is None:
                continue
            boxes = labels.get(visible_frames[index].stamp_ns)
            if boxes is None:
                continue
            predictions.append(detection_json_to_entry(payload))
            truths.append(sidecar_to_truth(boxes))
            used_payloads.append(payload)
        if truths:
            class_names = _detection_class_names(bundle, used_payloads, truths)
            detection = detection_map(predictions, truths, class_names)
            detection["labelled_images"] = len(truths)
        detection_note = (
            f"{len(truths)} of {len(labels)} labelled frames had published detections "
            "(frames the node dropped are not scored)"
        )
    else:
        detection_note = "the bag has no label side-car (labels.json): no detection scores"

    latency = report.percentiles(live.latency_ms)
    if live.latency_ms:
        report.save_histogram(
            out_dir / "latency_hist.png",
            live.latency_ms,
            "camera publish -> fused received",
            "latency (ms)",
        )
    if samples:
        report.save_sample_grid(out_dir / "samples.png", samples)
    columns = ["method", "frame", "visible_stamp_ns", "latency_ms", *metrics.METRIC_NAMES]
    report.write_csv(out_dir / "per_frame.csv", rows, columns)

    summary = {
        "bag": str(bag),
        "model": live.model,
        "backend": live.backend,
        "input_pairs_published": live.input_pairs_published,
        "fused_published": live.pairs_out,
        "fused_matched_to_inputs": len({r["frame"] for r in rows}),
        "throughput_pairs_per_s": live.throughput_pairs_per_s,
        "latency_ms": latency,
        "inference_ms_p50": live.inference_ms_p50,
        "inference_ms_p95": live.inference_ms_p95,
        "drops_by_reason": live.drops_by_reason,
        "means": means,
        "detection": detection,
        "detection_note": detection_note,
        "segmentation": None,
        "conventions": metrics.CONVENTIONS,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    markdown = _bag_markdown(summary)
    (out_dir / "report.md").write_text(markdown)
    return BagEvaluation(markdown, summary)


def _bag_markdown(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    drops = summary["drops_by_reason"] or {}
    parts = [
        f"# fusion-eval bag: {summary['bag']}\n",
        f"Model {summary['model'] or '(node default)'}, backend {summary['backend']}.\n",
        "## Throughput and latency (live node, this machine)\n",
        report.markdown_table(
            [
                {"quantity": "input pairs published", "value": summary["input_pairs_published"]},
                {"quantity": "fused images published", "value": summary["fused_published"]},
                {
                    "quantity": "fused matched to bag frames",
                    "value": summary["fused_matched_to_inputs"],
                },
                {"quantity": "throughput (fused/s)", "value": summary["throughput_pairs_per_s"]},
                {"quantity": "latency p50 (ms)", "value": latency["p50"]},
                {"quantity": "latency p95 (ms)", "value": latency["p95"]},
                {"quantity": "latency max (ms)", "value": latency["max"]},
                {"quantity": "inference p50 (ms, node)", "value": summary["inference_ms_p50"]},
                {"quantity": "inference p95 (ms, node)", "value": summary["inference_ms_p95"]},
            ],
            ["quantity", "value"],
            digits=1,
        ),
        "\nLatency: fused image receive time minus its header stamp (the replayer stamps inputs "
        "with their wall-clock publish time); histogram in latency_hist.png.\n",
        "Drops by reason (node diagnostics): "
        + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none reported")
        + "\n",
        "## Fusion metrics of the published fused images (mean over frames)\n",
        report.fusion_table(summary["means"]) if summary["means"] else "no frames matched\n",
        "Bag mode scores the grey levels of the published (colour-restored) image, so values "
        "can differ slightly from folder mode, which scores the fused Y.\n",
    ]
    if summary["detection"] is not None:
        parts.append(_detection_markdown(summary["detection"]))
    parts.append(f"Detection: {summary['detection_note']}.\n")
    parts.append(
        "Segmentation: the label side-car carries boxes only, so bag mode reports no "
        "segmentation scores (use folder mode with --masks).\n"
    )
    return "\n".join(parts)


def run_bag(args: argparse.Namespace) -> int:
    from ros2_bilevel_fusion.bag.live_run import LiveRunError, run_bag_through_node

    bag, out_dir = Path(args.bag), Path(args.out)
    bundle = Path(args.bundle) if args.bundle else None
    try:
        live = run_bag_through_node(
            bag, bundle=bundle, backend=args.backend, rate=args.rate, out_dir=out_dir / "run"
        )
    except LiveRunError as exc:
        raise EvaluationError(str(exc)) from exc
    evaluation = evaluate_live_result(live, bag, out_dir, bundle=bundle, rate=args.rate)
    print(evaluation.markdown)
    print(f"report written to {out_dir}")
    return 0


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-eval",
        description="Fusion metrics (with baselines), detection mAP and segmentation IoU of a "
        "model bundle on image folders, or of the running node on a bag.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    modes = parser.add_subparsers(dest="mode", required=True)

    folder = modes.add_parser("folder", help="evaluate a bundle on IR/visible image folders")
    folder.add_argument(
        "--bundle", help="model bundle folder (model.yaml); omit with --baselines for baselines"
    )
    folder.add_argument("--ir", required=True, help="folder of infrared images")
    folder.add_argument("--vi", required=True, help="folder of visible images (same names)")
    folder.add_argument("--labels", help="folder of YOLO txt labels (<stem>.txt) for mAP")
    folder.add_argument("--masks", help="folder of PNG masks (same names) for segmentation IoU")
    folder.add_argument(
        "--mask-map", default="", help="mask value to class id, e.g. 255:1 (default: identity)"
    )
    folder.add_argument("--out", required=True, help="report folder")
    folder.add_argument("--save-fused", action="store_true", help="write fused PNGs")
    folder.add_argument("--baselines", action="store_true", help="mean/max/laplacian rows")
    folder.add_argument(
        "--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch", "auto"]
    )
    folder.add_argument("--limit", type=int, default=None, help="first N pairs only")
    folder.add_argument(
        "--score-threshold", type=float, default=None,
        help="detection score threshold instead of the bundle's (mAP ranks every detection, so "
        "a low value such as 0.05 gives the usual mAP; the bundle's gives what the node shows)",
    )
    folder.set_defaults(run=run_folder)

    bag = modes.add_parser("bag", help="replay a bag through the node and score its outputs")
    bag.add_argument("--bag", required=True, help="rosbag2 folder")
    bag.add_argument("--bundle", help="model bundle (default: the node's default)")
    bag.add_argument(
        "--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch", "auto"]
    )
    bag.add_argument("--rate", type=float, default=1.0, help="replay rate factor")
    bag.add_argument("--out", required=True, help="report folder")
    bag.set_defaults(run=run_bag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    try:
        code = args.run(args)
    except (EvaluationError, metrics.MetricInputError, FileNotFoundError) as exc:
        LOG.error("%s", exc)
        return 2
    except Exception as exc:
        # Bundle, backend and bag errors are defined in other modules (imported lazily so
        # that --help works without them); a user error there is a message, not a traceback.
        if type(exc).__name__ in ("BundleError", "BackendError", "BagError"):
            LOG.error("%s", exc)
            return 2
        raise
    LOG.info("done in %.1f s", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
