"""The one folder loop: score a fusion method on IR/visible image pairs.

``fusion-eval folder`` and training's held-out evaluation both call :func:`score_pairs`; they
differ only in the per-pair callable. fusion-eval passes :func:`pipeline_runner` (the node's
:class:`~ros2_bilevel_fusion.core.pipeline.FusionPipeline`), training passes its torch model
wrapped the same way::

    def run_pair(ir_u8, visible_bgr):            # IR grey uint8 as read, visible BGR uint8
        return PairOutput(fused_y=my_fuse(ir_u8, visible_bgr))   # uint8, visible geometry

    pairs = find_folder_pairs(folder / "ir", folder / "vi")
    result = score_pairs(pairs, run_pair, method="model")
    result.means["model"]                         # metric -> mean over the pairs

The loop reads each pair, calls ``run_pair``, and computes the fusion metrics of
:mod:`~ros2_bilevel_fusion.evaluation.metrics` (and optionally of the classical baselines on the
same inputs), detection mAP against YOLO labels and segmentation IoU against masks. It writes
nothing; :func:`ros2_bilevel_fusion.evaluation.report.write_folder_report` writes the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.evaluation import baselines, metrics, report, splits
from ros2_bilevel_fusion.evaluation.ground_truth import TruthSource, labels_truth, merged_truth
from ros2_bilevel_fusion.evaluation.semantic_metrics import (
    COCO_MAX_DETS,
    ConfusionMatrix,
    coco_documents,
    coco_scores,
)

LOG = logging.getLogger("fusion-eval")

# Post-processing for mAP (the README's `--score-threshold 0.001 --nms-iou 0.65`): mAP ranks every
# detection, so nearly nothing is cut by score; what the node shows uses the bundle's values.
MAP_SCORE_THRESHOLD = 0.001
MAP_NMS_IOU = 0.65

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


def split_pairs(
    split: str, data_root: Path = splits.DEFAULT_DATA_ROOT, limit: int | None = None
) -> tuple[list[FolderPair], TruthSource]:
    """The pairs of a named split (:mod:`~ros2_bilevel_fusion.evaluation.splits`, e.g.
    ``msrs_det:test``) under ``data_root``, sorted, at most ``limit``, and their merged ground
    truth (:func:`~ros2_bilevel_fusion.evaluation.ground_truth.merged_truth` of the folder's
    ``labels/``)."""
    try:
        folder = splits.split_folder(split, data_root)
        names = splits.split_names(split, data_root)
    except splits.SplitError as exc:
        raise EvaluationError(str(exc)) from exc
    pairs = []
    for name in names:
        ir_path = metrics.find_pair_file(folder / "ir", name)
        visible_path = metrics.find_pair_file(folder / "vi", name)
        if ir_path is None or visible_path is None:  # listed from both folders; cannot happen
            raise EvaluationError(f"{split}: no IR/visible pair for {name}")
        pairs.append(FolderPair(ir_path.name, ir_path, visible_path))
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise EvaluationError(f"split {split} has no pairs under {data_root}")
    return pairs, merged_truth(folder / "labels")


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


def limit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (INTER_AREA) so that its longer side is at most ``max_side`` (0: as is)."""
    if max_side <= 0 or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- the per-pair call


@dataclass
class PairOutput:
    """What a fusion method returns for one pair (the fields of the pipeline's FusionResult).

    ``fused_y`` is required; the others are None when the method does not produce them.
    ``detections`` has ``boxes`` (float [N, 4] x1, y1, x2, y2 in visible pixels), ``scores``
    and ``class_ids`` (:class:`ros2_bilevel_fusion.core.processing.Detections`).
    """

    fused_y: np.ndarray  # uint8 HxW, the visible image's geometry
    fused_bgr: np.ndarray | None = None  # uint8 HxWx3 colour-restored fused image
    detections: Any | None = None  # core.processing.Detections
    seg_labels: np.ndarray | None = None  # uint8 HxW class ids
    inference_ms: float | None = None  # the network alone, when the method measures it
    total_ms: float | None = None  # the whole call; measured by the loop when None


#: ``run_pair(ir_u8, visible_bgr) -> PairOutput``: ``ir_u8`` is the IR image as read (grey
#: uint8, its own size: the method registers it, as the node does), ``visible_bgr`` the visible
#: image (BGR uint8). Both are reduced first when :func:`score_pairs` gets ``max_side``.
RunPair = Callable[[np.ndarray, np.ndarray], PairOutput]


def pipeline_runner(pipeline: Any) -> RunPair:
    """The node's pipeline (:class:`~ros2_bilevel_fusion.core.pipeline.FusionPipeline`) as a
    ``run_pair`` callable."""

    def run_pair(ir_u8: np.ndarray, visible_bgr: np.ndarray) -> PairOutput:
        result = pipeline.process(ir_u8, visible_bgr)
        return PairOutput(
            fused_y=result.fused_y,
            fused_bgr=result.fused_bgr,
            detections=result.detections,
            seg_labels=result.seg_labels,
            inference_ms=float(result.inference_ms),
            total_ms=float(result.total_ms),
        )

    return run_pair


def build_pipeline(
    bundle_path: Path, backend_kind: str, registration: Registration, precision: str = "auto"
) -> tuple[Any, Any]:
    """(pipeline, bundle): the node's FusionPipeline for this bundle, backend, registration and
    precision (``auto``: the bundle's default_precision, as the node's parameter)."""
    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle, select_precision
    from ros2_bilevel_fusion.core.pipeline import FusionPipeline

    bundle = select_precision(load_bundle(bundle_path), precision)
    backend = create_backend(backend_kind, bundle)
    # Post-processing thresholds from model.yaml, as the node uses by default.
    return FusionPipeline(backend, registration), bundle


# --------------------------------------------------------------------------- the loop


@dataclass
class FolderResult:
    model_name: str  # the method's label ("baselines only" without a method)
    rows: list[dict] = field(default_factory=list)  # one per (method, image), in pair order
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> mean
    detection: dict | None = None  # coco_scores(...) plus "labelled_images", "ground_truth"
    # The COCO documents the detection scores come from (semantic_metrics.coco_documents).
    coco_ground_truth: dict | None = None
    coco_detections: list[dict] | None = None
    postprocess: dict = field(default_factory=dict)  # the detector settings used, if known
    segmentation: dict | None = None  # segmentation_summary(...)
    timing: dict[str, dict] = field(default_factory=dict)  # stage -> report.percentiles
    skipped: list[str] = field(default_factory=list)  # pairs whose files could not be read
    samples: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)  # first pairs' tiles
    pairs: int = 0  # pairs given (scored = pairs - len(skipped))

    @property
    def images(self) -> int:
        """Pairs that were read and scored."""
        return self.pairs - len(self.skipped)


def detections_to_entry(detections: Any) -> dict[str, np.ndarray]:
    """A prediction entry for :func:`coco_documents` from Detections (None: no detections)."""
    if detections is None:
        return {
            "boxes": np.zeros((0, 4), np.float64),
            "scores": np.zeros(0, np.float64),
            "labels": np.zeros(0, np.int64),
        }
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


def score_pairs(
    pairs: Sequence[FolderPair],
    run_pair: RunPair | None,
    *,
    method: str = "model",
    registration: Registration | None = None,
    with_baselines: bool = False,
    max_side: int = 0,
    labels_dir: Path | None = None,
    ground_truth: TruthSource | None = None,
    detection_classes: Sequence[str] | None = None,
    max_detections: int | None = None,
    masks_dir: Path | None = None,
    mask_map: dict[int, int] | None = None,
    segmentation_classes: Sequence[str] | None = None,
    on_output: Callable[[FolderPair, PairOutput], None] | None = None,
    sample_count: int = SAMPLE_COUNT,
) -> FolderResult:
    """Run ``run_pair`` on every pair and score its outputs; nothing is written.

    * ``method``: the label of ``run_pair``'s rows and means. With ``run_pair`` None only the
      baselines are scored (``with_baselines`` is then implied, labels and masks ignored).
    * ``registration``: puts the IR into the visible geometry for the metrics and baselines;
      it must be the one ``run_pair`` uses (identity, the default, resizes a differently
      sized IR).
    * ``max_side``: both images are first shrunk so that their longer side is at most this.
    * ``labels_dir`` (YOLO ``<stem>.txt``, pairs without a file are not labelled; or a folder
      of ``fusion/ infrared/ visible/`` annotations, merged: :func:`labels_truth`) or
      ``ground_truth`` (``truth(stem, width, height) -> {"boxes", "labels"}`` or None for an
      unlabelled pair, e.g. :func:`split_pairs`' merged labels), with ``detection_classes``:
      detection mAP (COCO protocol) of ``PairOutput.detections``; ``result.coco_ground_truth``
      and ``result.coco_detections`` are the COCO documents it was computed from.
    * ``max_detections``: the detector's cap per image; pycocotools then ranks
      ``max(100, max_detections)`` per image (COCO's 100 would cut a higher cap).
    * ``masks_dir`` (same names as the IR images; values mapped by ``mask_map``, see
      :func:`mask_to_labels`) with ``segmentation_classes``: IoU of ``PairOutput.seg_labels``.
    * ``on_output(pair, output)`` is called after each ``run_pair`` (to save or keep images).

    A pair whose files cannot be read is skipped and listed in ``skipped``; an output of the
    wrong type or size, or no readable pair at all, is an :class:`EvaluationError`.
    """
    registration = registration or Registration.identity()
    has_model = run_pair is not None
    model_label = method if has_model else ""
    with_baselines = with_baselines or not has_model
    result = FolderResult(model_name=model_label or "baselines only", pairs=len(pairs))
    methods = ([model_label] if has_model else []) + (
        [BASELINE_LABELS[n] for n in baselines.BASELINES] if with_baselines else []
    )
    per_method_rows: dict[str, list[dict]] = {name: [] for name in methods}
    inference_ms: list[float] = []
    total_ms: list[float] = []
    predictions: list[dict] = []
    truths: list[dict] = []
    image_records: list[dict] = []
    confusion = None
    if masks_dir is not None and has_model:
        if segmentation_classes is None:
            LOG.warning("--masks given but the bundle has no segmentation head; skipped")
        else:
            confusion = ConfusionMatrix(len(segmentation_classes))
    if labels_dir is not None:
        if ground_truth is not None:
            raise EvaluationError("give labels_dir or ground_truth, not both")
        ground_truth = labels_truth(labels_dir)
    if ground_truth is not None and (not has_model or detection_classes is None):
        LOG.warning("labels given but there is no model with a detection head; skipped")
        ground_truth = None

    for pair in pairs:
        try:
            ir_u8 = metrics.read_u8(pair.ir_path, grey=True)
            visible_bgr = metrics.read_u8(pair.visible_path, grey=False)
        except metrics.MetricInputError as exc:
            # One corrupt file should not void the evaluation of the others; it is counted.
            LOG.warning("%s: skipped (%s)", pair.name, exc)
            result.skipped.append(pair.name)
            continue
        ir_u8, visible_bgr = limit_side(ir_u8, max_side), limit_side(visible_bgr, max_side)
        # The sources as the metrics see them: the IR in the visible geometry (the node's
        # registration; identity resizes a differently sized IR) and the visible grey levels.
        ir_registered = registration.warp(ir_u8, visible_bgr.shape[:2])
        ir_gray = ir_registered.astype(np.float64)
        visible_gray = metrics.to_gray_float(visible_bgr)
        fused_by_method: dict[str, np.ndarray] = {}
        sample: list[tuple[str, np.ndarray]] = [("IR", ir_u8), ("VI", visible_bgr)]
        output = None
        if has_model:
            started = time.perf_counter()
            output = run_pair(ir_u8, visible_bgr)
            if output.total_ms is None:
                output.total_ms = (time.perf_counter() - started) * 1e3
            if output.inference_ms is not None:
                inference_ms.append(float(output.inference_ms))
            total_ms.append(float(output.total_ms))
            fused_y = np.asarray(output.fused_y)
            if fused_y.dtype != np.uint8 or fused_y.shape != visible_bgr.shape[:2]:
                raise EvaluationError(
                    f"{pair.name}: pipeline returned fused_y {fused_y.dtype} {fused_y.shape}, "
                    f"expected uint8 {visible_bgr.shape[:2]}"
                )
            fused_by_method[model_label] = fused_y
            fused_view = fused_y if output.fused_bgr is None else np.asarray(output.fused_bgr)
            sample.append(("fused", fused_view))
            if on_output is not None:
                on_output(pair, output)
        if with_baselines:
            # Baselines fuse the same inputs the network sees: registered IR and visible Y.
            luma = visible_luma(visible_bgr)
            for name, fuse in baselines.BASELINES.items():
                fused_by_method[BASELINE_LABELS[name]] = fuse(ir_registered, luma)
                sample.append((name, fused_by_method[BASELINE_LABELS[name]]))
        for name, fused in fused_by_method.items():
            row: dict[str, Any] = {"method": name, "name": pair.name}
            row.update(metrics.fusion_metrics(fused.astype(np.float64), ir_gray, visible_gray))
            if output is not None and name == model_label:
                if output.inference_ms is not None:
                    row["inference_ms"] = output.inference_ms
                row["total_ms"] = output.total_ms
            per_method_rows[name].append(row)
            result.rows.append(row)
        if output is not None and ground_truth is not None:
            height, width = visible_bgr.shape[:2]
            truth = ground_truth(pair.stem, width, height)
            if truth is not None:  # None (no file): not labelled; empty file: no objects
                truths.append(truth)
                predictions.append(detections_to_entry(output.detections))
                image_records.append({"file_name": pair.name, "width": width, "height": height})
        if output is not None and confusion is not None:
            mask_path = metrics.find_pair_file(masks_dir, pair.name)
            if mask_path is not None and output.seg_labels is not None:
                mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
                if mask is None or mask.shape != visible_bgr.shape[:2]:
                    raise EvaluationError(f"mask {mask_path} unreadable or of the wrong size")
                truth = mask_to_labels(mask, mask_map or {}, confusion.num_classes)
                confusion.update(np.asarray(output.seg_labels), truth)
        if len(result.samples) < sample_count:
            result.samples.append(sample)

    if pairs and len(result.skipped) == len(pairs):
        raise EvaluationError(f"none of the {len(pairs)} pairs could be read")
    for name in methods:
        result.means[name] = metrics.mean_metrics(per_method_rows[name])
    if total_ms:
        result.timing = {}
        if inference_ms:
            result.timing["inference_ms"] = report.percentiles(inference_ms)
        result.timing["total_ms"] = report.percentiles(total_ms)
    if ground_truth is not None:
        result.coco_ground_truth, result.coco_detections = coco_documents(
            predictions, truths, list(detection_classes or []), image_records
        )
        max_dets = max(COCO_MAX_DETS, int(max_detections or 0))
        result.detection = coco_scores(result.coco_ground_truth, result.coco_detections, max_dets)
        result.detection["labelled_images"] = len(truths)
        result.detection["ground_truth"] = getattr(ground_truth, "description", "custom")
    if confusion is not None:
        result.segmentation = segmentation_summary(confusion, segmentation_classes or [])
    return result


def fused_png_writer(out_dir: Path) -> Callable[[FolderPair, PairOutput], None]:
    """An ``on_output`` that writes ``fused/<stem>.png`` (and ``fused_color/`` when colour)."""

    def write(pair: FolderPair, output: PairOutput) -> None:
        _write_png(out_dir / "fused" / f"{pair.stem}.png", np.asarray(output.fused_y))
        if output.fused_bgr is not None:
            _write_png(out_dir / "fused_color" / f"{pair.stem}.png", np.asarray(output.fused_bgr))

    return write


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise EvaluationError(f"cannot write {path}")
