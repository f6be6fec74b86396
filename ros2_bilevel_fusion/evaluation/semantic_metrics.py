"""Detection mAP (COCO protocol, via pycocotools) and segmentation IoU (confusion matrix).

Used by ``fusion-eval`` to score what a fusion model's detector and segmenter produce on the
fused image against labelled data (MSRS YOLO boxes and person masks, or a bag's label side-car).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ros2_bilevel_fusion.evaluation.ground_truth import parse_yolo_lines


class SemanticInputError(ValueError):
    """Predictions or ground truths are malformed (shapes, lengths, classes)."""


def _boxes_of(entry: Mapping, with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(entry.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(entry.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    if with_scores:
        scores = np.asarray(entry.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
    else:
        scores = np.ones(len(boxes))
    if not (len(boxes) == len(labels) == len(scores)):
        raise SemanticInputError(
            f"boxes ({len(boxes)}), labels ({len(labels)}) and scores ({len(scores)}) differ"
        )
    return boxes, scores, labels


#: pycocotools' default ``maxDets`` for AP: at most this many detections per image are ranked.
COCO_MAX_DETS = 100


def coco_documents(
    predictions: Sequence[Mapping],
    ground_truths: Sequence[Mapping],
    class_names: Sequence[str],
    images: Sequence[Mapping] | None = None,
) -> tuple[dict, list[dict]]:
    """The COCO files of ``predictions`` against ``ground_truths`` (one entry per image).

    Each entry is a mapping with ``boxes`` [K, 4] xyxy in pixels, ``labels`` [K] class indices
    into ``class_names``, and (predictions only) ``scores`` [K]. ``images``: per entry, extra
    fields of its COCO image record (``file_name``, ``width``, ``height``), or None.

    Returns ``(ground_truth, detections)``: ``ground_truth`` a COCO annotation file (``images``,
    ``categories``, ``annotations`` with ``bbox`` [x, y, w, h], ``area`` w*h, ``iscrowd`` 0)
    and ``detections`` a list in COCO results format (``image_id``, ``category_id``, ``bbox``
    [x, y, w, h], ``score``). Ids follow COCO's convention: image ``i`` has id ``i + 1``, class
    index ``c`` category id ``c + 1``, annotations 1, 2, ...
    """
    if len(predictions) != len(ground_truths):
        raise SemanticInputError(
            f"{len(predictions)} prediction entries but {len(ground_truths)} ground truths"
        )
    if images is not None and len(images) != len(ground_truths):
        raise SemanticInputError(f"{len(images)} image records for {len(ground_truths)} images")
    num_classes = len(class_names)
    image_records, annotations, detections = [], [], []
    for index, (prediction, truth) in enumerate(zip(predictions, ground_truths, strict=True)):
        image_id = index + 1
        image_records.append({"id": image_id, **(dict(images[index]) if images else {})})
        gt_boxes, _, gt_labels = _boxes_of(truth, with_scores=False)
        pred_boxes, pred_scores, pred_labels = _boxes_of(prediction, with_scores=True)
        for labels in (gt_labels, pred_labels):
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise SemanticInputError(f"class index out of range 0..{num_classes - 1}")
        for box, label in zip(gt_boxes, gt_labels, strict=True):
            bbox = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO ids must be non-zero
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(pred_boxes, pred_scores, pred_labels, strict=True):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    ground_truth = {
        "images": image_records,
        "categories": [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)],
        "annotations": annotations,
    }
    return ground_truth, detections


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def coco_scores(
    ground_truth: Mapping, detections: Sequence[Mapping], max_dets: int = COCO_MAX_DETS
) -> dict:
    """Box AP of COCO results ``detections`` against the COCO annotation file ``ground_truth``
    (the two documents of :func:`coco_documents`), computed by pycocotools' COCOeval (101-point
    interpolated AP, area "all", ``maxDets`` ``[1, 10, max_dets]``).

    Returns ``{"mAP50", "mAP50_95", "per_class_AP50": {category
    name: AP or nan}, "num_images", "num_ground_truths", "num_predictions", "max_dets"}``: the
    mAPs are pycocotools' own numbers, averaged over categories with ground truth (COCO marks
    the others -1); a category without ground truth gets ``nan``. With no ground truth at all
    the mAPs are ``nan`` (undefined), not 0; with ground truth but no detection they are 0.
    The documents are not modified.
    """
    categories = {int(c["id"]): str(c["name"]) for c in ground_truth["categories"]}
    annotations = ground_truth["annotations"]
    result: dict = {
        "mAP50": float("nan"),
        "mAP50_95": float("nan"),
        "per_class_AP50": {name: float("nan") for name in categories.values()},
        "num_images": len(ground_truth["images"]),
        "num_ground_truths": len(annotations),
        "num_predictions": len(detections),
        "max_dets": int(max_dets),
    }
    if not annotations:
        return result
    if not detections:
        # Every class with ground truth has recall 0 at every threshold (pycocotools' loadRes
        # does not take an empty list).
        result["mAP50"] = result["mAP50_95"] = 0.0
        for annotation in annotations:
            result["per_class_AP50"][categories[int(annotation["category_id"])]] = 0.0
        return result

    # pycocotools prints progress to stdout; silence it so CLI output stays a clean table.
    with contextlib.redirect_stdout(io.StringIO()):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        coco_truth = COCO()
        coco_truth.dataset = copy.deepcopy(dict(ground_truth))
        coco_truth.createIndex()
        # loadRes adds area, id and segmentation to the dicts it gets: give it copies.
        coco_predictions = coco_truth.loadRes(copy.deepcopy(list(detections)))
        evaluator = COCOeval(coco_truth, coco_predictions, iouType="bbox")
        evaluator.params.maxDets = [1, 10, int(max_dets)]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [IoU thresholds T, recall points R, classes K, area ranges A, max dets M].
    # The mAPs are COCOeval.summarize's formula (mean of the entries > -1, area "all", the
    # last maxDets); its stats[0] is not used because summarize asks for maxDets 100 there
    # whatever params.maxDets holds (-1 when 100 is not in the list).
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    iou_05 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    result["mAP50_95"] = float(np.mean(precision[precision > -1]))
    result["mAP50"] = float(np.mean(precision[iou_05][precision[iou_05] > -1]))
    for class_index, category_id in enumerate(evaluator.params.catIds):
        at_50 = precision[iou_05, :, class_index]
        if np.all(at_50 < 0):  # -1: no ground truth of this class
            continue
        result["per_class_AP50"][categories[category_id]] = float(np.mean(at_50[at_50 > -1]))
    return result


def detection_map(
    predictions: Sequence[Mapping],
    ground_truths: Sequence[Mapping],
    class_names: Sequence[str],
    max_dets: int = COCO_MAX_DETS,
) -> dict:
    """COCO-style box AP of ``predictions`` against ``ground_truths`` (one entry per image):
    :func:`coco_scores` of :func:`coco_documents` (see both for the entries and the result).
    ``max_dets``: detections ranked per image (COCO's 100 by default; give at least the
    detector's cap so that pycocotools does not cut what the detector kept)."""
    ground_truth, detections = coco_documents(predictions, ground_truths, class_names)
    return coco_scores(ground_truth, detections, max_dets)


def yolo_to_xyxy(lines: Sequence[str], width: int, height: int) -> dict[str, np.ndarray]:
    """Ground-truth entry from YOLO label lines ``class cx cy w h`` (normalised to [0, 1]):
    :func:`ros2_bilevel_fusion.evaluation.ground_truth.parse_yolo_lines` as a mapping."""
    try:
        boxes, labels = parse_yolo_lines(lines, width, height)
    except ValueError as exc:
        raise SemanticInputError(str(exc)) from exc
    return {"boxes": boxes, "labels": labels}


@dataclass
class ConfusionMatrix:
    """Pixel confusion matrix accumulated over images; rows are ground truth, columns prediction.

    Pixels whose ground truth is ``ignore_index`` are skipped. A predicted or true label outside
    0..num_classes-1 (other than ignore_index) is an error, not silently dropped.
    """

    num_classes: int
    ignore_index: int = 255
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise SemanticInputError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
        keep = gt != self.ignore_index
        truth = gt[keep].astype(np.int64)
        predicted = pred[keep].astype(np.int64)
        for label, values in (("ground truth", truth), ("prediction", predicted)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise SemanticInputError(
                    f"{label} label out of range 0..{self.num_classes - 1}: "
                    f"{int(values.min())}..{int(values.max())}"
                )
        self.matrix += np.bincount(
            truth * self.num_classes + predicted, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)

    def scores(self) -> dict:
        return scores_from_confusion(self.matrix)


def scores_from_confusion(matrix: np.ndarray) -> dict:
    """Per-class IoU and accuracy, mIoU, mAcc and pixel accuracy from a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class that appears in neither ground truth nor prediction has
    no IoU (``nan``) and is left out of mIoU; mIoU averages over classes present in the ground
    truth or the prediction (so a hallucinated class counts, with IoU 0). Per-class accuracy
    (recall) TP / (TP + FN) is defined for classes present in the ground truth; mAcc averages
    those.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    in_truth = matrix.sum(axis=1)
    in_prediction = matrix.sum(axis=0)
    union = in_truth + in_prediction - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        accuracy = np.where(in_truth > 0, true_positive / in_truth, np.nan)
    total = matrix.sum()
    return {
        "per_class_iou": iou.tolist(),
        "per_class_acc": accuracy.tolist(),
        "mIoU": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "mAcc": float(np.nanmean(accuracy)) if np.any(in_truth > 0) else float("nan"),
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "confusion": matrix.astype(np.int64),
    }


def segmentation_scores(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> dict:
    """Scores of one label image (see :func:`scores_from_confusion`); for a folder use
    :class:`ConfusionMatrix` and call ``update`` per image."""
    confusion = ConfusionMatrix(num_classes, ignore_index)
    confusion.update(pred, gt)
    return confusion.scores()
