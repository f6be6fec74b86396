"""Choose the detection score threshold a bundle ships, by F1 on a validation report.

The node shows the boxes whose score is **strictly above** ``detection.score_threshold``
(``processing.decode_detections`` keeps ``score > threshold``), so this module counts, for each
candidate threshold ``t``, the detections with ``score > t`` the same way.

Matching (per image, per class), as COCO matches at one IoU: detections of a class are taken by
descending score (ties keep file order); each takes the unmatched ground-truth box of the same
class with the highest IoU, if that IoU is ``>= iou_threshold`` (a true positive), otherwise it
is a false positive. Each ground-truth box is matched at most once, so a duplicate detection of
a matched object is a false positive, and a box of another class is never a true positive.
Unmatched ground truth at ``t`` is a false negative.

Because a detection's match only depends on detections scored above it, the matching of the
detections kept at ``t`` is the matching of the full list restricted to them: the matching runs
once and every threshold is a count over sorted scores (``np.searchsorted``).

Input: the two COCO documents ``fusion-eval folder ... --labels DIR --out REPORT`` writes
(``report.DETECTIONS_COCO`` and ``report.GROUND_TRUTH_COCO``). They only hold the detections
above the score threshold that evaluation ran with (``summary.json`` ``postprocess``), so run
it with a low ``--score-threshold`` (e.g. 0.0) on the **validation** split first; rows below
that threshold are flagged. ``max_detections`` also caps what the report holds.

CLI::

    python -m ros2_bilevel_fusion.evaluation.threshold REPORT \\
        [--thresholds 0.05:0.95:0.05] [--class person|all] [--iou 0.5]

prints the table (markdown) and the chosen value and writes ``REPORT/threshold.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ros2_bilevel_fusion.evaluation.ground_truth import box_iou
from ros2_bilevel_fusion.evaluation.report import (
    DETECTIONS_COCO,
    GROUND_TRUTH_COCO,
    markdown_table,
)
from ros2_bilevel_fusion.messages.strict_json import write_json

#: The scopes of every row: micro over all classes, and the person class alone.
SCOPES = ("all", "person")
#: Per scope, the columns of a row (prefixed ``<scope>_``).
COUNTS = ("tp", "fp", "fn", "precision", "recall", "f1")
THRESHOLD_JSON = "threshold.json"
DEFAULT_THRESHOLDS = "0.05:0.95:0.05"


class ThresholdError(ValueError):
    """Bad input to the threshold choice (missing files, malformed documents or arguments)."""


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def match_detections(
    detections: Sequence[Mapping], ground_truth: Mapping, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of COCO results ``detections`` to the COCO annotation file
    ``ground_truth`` (see the module docstring for the rule).

    Returns
    -------
    scores : (D,) ndarray of float64
        The detections' scores, in input order.
    is_tp : (D,) ndarray of bool
        Whether each detection matched a ground-truth box.
    category_ids : (D,) ndarray of int64
        Each detection's ``category_id``.

    Ground truth is counted separately (:func:`f1_by_threshold`).
    """
    truth_by_key: dict[tuple[int, int], list[list[float]]] = {}
    for annotation in ground_truth.get("annotations", []):
        key = (int(annotation["image_id"]), int(annotation["category_id"]))
        truth_by_key.setdefault(key, []).append(_xyxy(annotation["bbox"]))
    count = len(detections)
    scores = np.array([float(d["score"]) for d in detections], dtype=np.float64).reshape(count)
    category_ids = np.array([int(d["category_id"]) for d in detections], dtype=np.int64)
    category_ids = category_ids.reshape(count)
    is_tp = np.zeros(count, dtype=bool)
    det_by_key: dict[tuple[int, int], list[int]] = {}
    for index, detection in enumerate(detections):
        key = (int(detection["image_id"]), int(detection["category_id"]))
        det_by_key.setdefault(key, []).append(index)
    for key, indices in det_by_key.items():
        truths = truth_by_key.get(key)
        if not truths:
            continue  # every detection of this image and class is a false positive
        indices_arr = np.asarray(indices, dtype=np.int64)
        # stable sort: equal scores keep file order
        indices_arr = indices_arr[np.argsort(-scores[indices_arr], kind="stable")]
        boxes = np.array([_xyxy(detections[i]["bbox"]) for i in indices_arr])
        iou = box_iou(boxes, np.asarray(truths))
        free = np.ones(iou.shape[1], dtype=bool)
        for row, det_index in enumerate(indices_arr):
            candidates = np.where(free, iou[row], -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] >= iou_threshold:
                free[best] = False
                is_tp[det_index] = True
    return scores, is_tp, category_ids


def _counts(
    scores: np.ndarray, is_tp: np.ndarray, num_truth: int, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """TP, FP, FN, precision, recall, F1 at each threshold (``score > t``), vectorised."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # cumulative counts from the top: kept at t = detections with score > t
    tp_from = np.concatenate([np.cumsum(is_tp[order][::-1])[::-1], [0]])
    fp_from = np.concatenate([np.cumsum(~is_tp[order][::-1])[::-1], [0]])
    first_kept = np.searchsorted(sorted_scores, thresholds, side="right")
    tp = tp_from[first_kept].astype(np.int64)
    fp = fp_from[first_kept].astype(np.int64)
    fn = num_truth - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(num_truth > 0, tp / max(num_truth, 1), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def person_category_id(ground_truth: Mapping) -> int | None:
    """The ``id`` of the category named ``person`` in the annotation file, or None."""
    for category in ground_truth.get("categories", []):
        if str(category.get("name")) == "person":
            return int(category["id"])
    return None


def f1_by_threshold(
    detections: Sequence[Mapping],
    ground_truth: Mapping,
    thresholds: Sequence[float],
    iou_threshold: float = 0.5,
) -> list[dict]:
    """Detection counts and F1 at each score threshold.

    Parameters
    ----------
    detections : list of dict
        COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``).
    ground_truth : dict
        COCO annotation file (``images``, ``categories``, ``annotations`` with ``bbox``).
    thresholds : sequence of float
        A detection counts at ``t`` when ``score > t`` (the node's rule).
    iou_threshold : float
        A match needs IoU ``>=`` this.

    Returns
    -------
    table : list of dict
        One row per threshold, in the given order: ``threshold`` and, for each scope ``all``
        (micro: counts summed over every class) and ``person`` (the category named person),
        ``<scope>_tp``, ``_fp``, ``_fn`` (ints), ``_precision`` (nan without detections),
        ``_recall`` (nan without ground truth) and ``_f1`` = 2 TP / (2 TP + FP + FN) (nan only
        with neither). Without a ``person`` category the person columns are nan.
    """
    thresholds_arr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    scores, is_tp, category_ids = match_detections(detections, ground_truth, iou_threshold)
    annotations = ground_truth.get("annotations", [])
    truth_ids = np.array([int(a["category_id"]) for a in annotations], dtype=np.int64)
    scoped = {"all": _counts(scores, is_tp, int(truth_ids.size), thresholds_arr)}
    person = person_category_id(ground_truth)
    if person is None:
        nan = np.full(thresholds_arr.shape, np.nan)
        scoped["person"] = {name: nan for name in COUNTS}
    else:
        keep = category_ids == person
        scoped["person"] = _counts(
            scores[keep], is_tp[keep], int(np.sum(truth_ids == person)), thresholds_arr
        )
    table = []
    for row_index, threshold in enumerate(thresholds_arr):
        row: dict = {"threshold": float(threshold)}
        for scope in SCOPES:
            for name in COUNTS:
                value = scoped[scope][name][row_index]
                as_int = name in ("tp", "fp", "fn") and not np.isnan(value)
                row[f"{scope}_{name}"] = int(value) if as_int else float(value)
        table.append(row)
    return table


def choose_threshold(table: Sequence[Mapping], metric: str = "f1", scope: str = "all") -> float:
    """The threshold of ``table`` (from :func:`f1_by_threshold`) with the highest
    ``<scope>_<metric>`` (nan rows ignored).

    Ties go to the **higher** threshold: at equal F1 it shows the node's user no more boxes
    (never more false alarms to look at, less NMS and drawing work), and between two
    thresholds with no detection score between them (same boxes, same F1) it sits nearer the
    scores that were actually kept, i.e. further from the low-confidence clutter the
    validation set happened not to contain.

    Raises :class:`ThresholdError` when no row has a finite value (nothing to choose from).
    """
    column = f"{scope}_{metric}"
    best_value, best_threshold = -math.inf, None
    for row in table:
        if column not in row:
            raise ThresholdError(f"table has no column {column!r}")
        value = float(row[column])
        threshold = float(row["threshold"])
        if math.isnan(value):
            continue
        if value > best_value or (value == best_value and threshold > best_threshold):
            best_value, best_threshold = value, threshold
    if best_threshold is None:
        raise ThresholdError(f"no finite {column} in the table (no ground truth or detections?)")
    return best_threshold


def parse_thresholds(text: str) -> list[float]:
    """``start:stop:step`` (stop included, up to rounding) or a comma list ``0.3,0.5``."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ThresholdError(f"bad threshold range {text!r}: need step > 0, stop >= start")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + k * step, 10) for k in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        if isinstance(error, ThresholdError):
            raise
        raise ThresholdError(f"bad --thresholds {text!r}: {error}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ThresholdError(f"thresholds must be in [0, 1], got {text!r}")
    return values


def _load(path: Path) -> object:
    if not path.is_file():
        raise ThresholdError(f"{path} not found (run fusion-eval folder ... --labels DIR first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ThresholdError(f"{path} is not JSON: {error}") from None


def evaluated_score_threshold(report: Path) -> float | None:
    """The score threshold the report's detections were produced with (``summary.json``
    ``postprocess.score_threshold``), or None when unknown."""
    summary = report / "summary.json"
    if not summary.is_file():
        return None
    try:
        value = json.loads(summary.read_text()).get("postprocess", {}).get("score_threshold")
    except (json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def run(report: Path, thresholds: Sequence[float], scope: str, iou_threshold: float) -> dict:
    """Table, choice and notes for the report folder; writes ``REPORT/threshold.json``."""
    detections = _load(report / DETECTIONS_COCO)
    ground_truth = _load(report / GROUND_TRUTH_COCO)
    if not isinstance(detections, list) or not isinstance(ground_truth, dict):
        raise ThresholdError("expected a COCO results list and a COCO annotation dict")
    if scope == "person" and person_category_id(ground_truth) is None:
        raise ThresholdError("--class person but the ground truth has no 'person' category")
    table = f1_by_threshold(detections, ground_truth, thresholds, iou_threshold)
    chosen = choose_threshold(table, "f1", scope)
    floor = evaluated_score_threshold(report)
    below = [t for t in thresholds if floor is not None and t < floor]
    result = {
        "chosen_threshold": chosen,
        "class": scope,
        "metric": "f1",
        "iou_threshold": iou_threshold,
        "rule": "a detection counts at t when score > t; greedy by score, same class, "
        "IoU >= iou_threshold, each ground truth at most once, per image",
        "report": str(report),
        "evaluated_score_threshold": floor,
        "thresholds_below_evaluated": below,
        "detections": len(detections),
        "ground_truth_boxes": len(ground_truth.get("annotations", [])),
        "table": table,
    }
    write_json(report / THRESHOLD_JSON, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ros2_bilevel_fusion.evaluation.threshold",
        description="Choose the shipped detection score threshold by F1 on a fusion-eval "
        "folder report of the validation split.",
    )
    parser.add_argument("report", help="fusion-eval folder --out directory")
    parser.add_argument(
        "--thresholds", default=DEFAULT_THRESHOLDS, help="start:stop:step or a comma list"
    )
    parser.add_argument(
        "--class",
        dest="scope",
        choices=SCOPES,
        default="all",
        help="choose by micro F1 over all classes or by person F1",
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU needed for a match")
    args = parser.parse_args(argv)
    try:
        if not 0.0 < args.iou <= 1.0:
            raise ThresholdError(f"--iou must be in (0, 1], got {args.iou}")
        result = run(Path(args.report), parse_thresholds(args.thresholds), args.scope, args.iou)
    except ThresholdError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    columns = ["threshold"] + [f"{s}_{c}" for s in SCOPES for c in COUNTS]
    print(markdown_table(result["table"], columns))
    print()
    if result["thresholds_below_evaluated"]:
        print(
            f"warning: the report's detections were cut at score > "
            f"{result['evaluated_score_threshold']}; rows below it are not meaningful "
            "(rerun fusion-eval with --score-threshold 0.0)"
        )
    print(f"chosen score_threshold ({result['class']} F1): {result['chosen_threshold']:g}")
    print(f"written: {Path(args.report) / THRESHOLD_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
