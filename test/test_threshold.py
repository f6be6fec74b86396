"""evaluation.threshold: F1 by score threshold and the shipped-threshold choice.

All boxes here are SYNTHETIC (hand-placed squares), no dataset is read.
"""

from __future__ import annotations

import json
import math

import pytest

from ros2_bilevel_fusion.evaluation.threshold import (
    THRESHOLD_JSON,
    ThresholdError,
    choose_threshold,
    f1_by_threshold,
    main,
    parse_thresholds,
)
from ros2_bilevel_fusion.messages.strict_json import write_json

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}]
PERSON, BICYCLE, CAR = 1, 2, 3


def synthetic_truth(boxes: list[tuple[int, int, list[float]]]) -> dict:
    """A COCO annotation file of SYNTHETIC (image_id, category_id, xywh) boxes."""
    images = sorted({image for image, _, _ in boxes} | {1})
    return {
        "images": [{"id": i} for i in images],
        "categories": CATEGORIES,
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (i, c, b) in enumerate(boxes)
        ],
    }


def det(image: int, category: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": bbox, "score": score}


def row_at(table: list[dict], threshold: float) -> dict:
    (row,) = [r for r in table if math.isclose(r["threshold"], threshold)]
    return row


def test_synthetic_hand_worked_example_two_thresholds():
    truth = synthetic_truth(
        [(1, PERSON, [0, 0, 10, 10]), (1, CAR, [20, 20, 10, 10]), (2, PERSON, [0, 0, 10, 10])]
    )
    detections = [
        det(1, PERSON, [0, 0, 10, 10], 0.9),  # TP
        det(1, PERSON, [50, 50, 10, 10], 0.7),  # FP: nothing there
        det(1, CAR, [20, 20, 10, 10], 0.4),  # TP
        det(1, CAR, [21, 20, 10, 10], 0.3),  # FP: duplicate of the matched car
        det(2, PERSON, [5, 0, 10, 10], 0.8),  # FP: IoU 50 / 150 = 1/3 < 0.5
        det(2, BICYCLE, [0, 0, 10, 10], 0.6),  # FP: right place, wrong class
    ]
    table = f1_by_threshold(detections, truth, [0.2, 0.5, 0.9])
    high = row_at(table, 0.5)  # kept: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 FP
    assert (high["all_tp"], high["all_fp"], high["all_fn"]) == (1, 3, 2)
    assert high["all_precision"] == pytest.approx(0.25)
    assert high["all_recall"] == pytest.approx(1 / 3)
    assert high["all_f1"] == pytest.approx(2 / 7)
    assert (high["person_tp"], high["person_fp"], high["person_fn"]) == (1, 2, 1)
    assert high["person_f1"] == pytest.approx(0.4)
    low = row_at(table, 0.2)  # plus the car TP (0.4) and its duplicate (0.3)
    assert (low["all_tp"], low["all_fp"], low["all_fn"]) == (2, 4, 1)
    assert low["all_f1"] == pytest.approx(4 / 9)
    assert (low["person_tp"], low["person_fp"], low["person_fn"]) == (1, 2, 1)
    # strict, as the node: the 0.9 detection is not shown at threshold 0.9
    top = row_at(table, 0.9)
    assert (top["all_tp"], top["all_fp"], top["all_fn"]) == (0, 0, 3)
    assert math.isnan(top["all_precision"]) and top["all_f1"] == 0.0
    assert choose_threshold(table) == 0.2


def test_synthetic_duplicate_detection_is_one_tp_one_fp():
    truth = synthetic_truth([(1, PERSON, [10, 10, 20, 40])])
    detections = [det(1, PERSON, [10, 10, 20, 40], 0.9), det(1, PERSON, [11, 10, 20, 40], 0.8)]
    table = f1_by_threshold(detections, truth, [0.0, 0.85])
    both = row_at(table, 0.0)
    assert (both["all_tp"], both["all_fp"], both["all_fn"]) == (1, 1, 0)
    best_only = row_at(table, 0.85)  # the higher score took the match
    assert (best_only["all_tp"], best_only["all_fp"], best_only["all_fn"]) == (1, 0, 0)


def test_synthetic_greedy_by_score_not_by_iou():
    """The higher-scored detection takes the ground truth even when a lower one overlaps more."""
    truth = synthetic_truth([(1, PERSON, [0, 0, 10, 10])])
    detections = [det(1, PERSON, [0, 0, 10, 10], 0.5), det(1, PERSON, [1, 0, 10, 10], 0.9)]
    table = f1_by_threshold(detections, truth, [0.6])
    assert (table[0]["all_tp"], table[0]["all_fp"]) == (1, 0)


def test_synthetic_class_mismatch_is_never_tp():
    truth = synthetic_truth([(1, PERSON, [0, 0, 10, 10]), (2, CAR, [0, 0, 30, 20])])
    detections = [det(1, CAR, [0, 0, 10, 10], 0.9), det(2, PERSON, [0, 0, 30, 20], 0.9)]
    (row,) = f1_by_threshold(detections, truth, [0.0])
    assert (row["all_tp"], row["all_fp"], row["all_fn"]) == (0, 2, 2)
    assert (row["person_tp"], row["person_fp"], row["person_fn"]) == (0, 1, 1)
    assert row["all_f1"] == 0.0


def test_synthetic_other_image_is_never_tp():
    truth = synthetic_truth([(1, PERSON, [0, 0, 10, 10])])
    (row,) = f1_by_threshold([det(2, PERSON, [0, 0, 10, 10], 0.9)], truth, [0.0])
    assert (row["all_tp"], row["all_fp"], row["all_fn"]) == (0, 1, 1)


def test_choose_threshold_ties_go_higher_and_nan_is_skipped():
    table = [
        {"threshold": 0.3, "all_f1": 0.8},
        {"threshold": 0.5, "all_f1": 0.8},
        {"threshold": 0.7, "all_f1": float("nan")},
        {"threshold": 0.1, "all_f1": 0.5},
    ]
    assert choose_threshold(table) == 0.5
    with pytest.raises(ThresholdError):
        choose_threshold([{"threshold": 0.5, "all_f1": float("nan")}])


def test_parse_thresholds_range_includes_stop():
    values = parse_thresholds("0.05:0.95:0.05")
    assert len(values) == 19 and values[0] == 0.05 and values[-1] == 0.95 and 0.6 in values
    assert parse_thresholds("0.3,0.5") == [0.3, 0.5]
    with pytest.raises(ThresholdError):
        parse_thresholds("0.5:0.1:0.1")


def test_synthetic_cli_writes_threshold_json(tmp_path, capsys):
    report = tmp_path / "report"
    truth = synthetic_truth([(1, PERSON, [0, 0, 10, 10]), (2, PERSON, [0, 0, 10, 10])])
    detections = [
        det(1, PERSON, [0, 0, 10, 10], 0.85),  # TP
        det(1, PERSON, [40, 40, 10, 10], 0.65),  # FP
        det(2, PERSON, [0, 0, 10, 10], 0.55),  # TP
        det(2, PERSON, [40, 40, 10, 10], 0.35),  # FP
    ]
    write_json(report / "ground_truth_coco.json", truth)
    write_json(report / "detections_coco.json", detections)
    write_json(report / "summary.json", {"postprocess": {"score_threshold": 0.15}})
    # F1: t<=0.3 -> 2/3, t=0.4,0.5 -> 0.8 (tie, higher wins), t=0.6 -> 0.5, t=0.7,0.8 -> 2/3
    assert main([str(report), "--thresholds", "0.1:0.9:0.1", "--class", "person"]) == 0
    out = capsys.readouterr().out
    assert "| threshold |" in out and "chosen score_threshold (person F1): 0.5" in out
    assert "warning" in out  # 0.1 lies below the evaluation's own 0.15

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    written = json.loads((report / THRESHOLD_JSON).read_text(), parse_constant=no_constants)
    assert written["chosen_threshold"] == 0.5 and written["class"] == "person"
    assert written["thresholds_below_evaluated"] == [0.1]
    assert len(written["table"]) == 9
    assert row_at(written["table"], 0.5)["person_f1"] == pytest.approx(0.8)
    assert written["table"][-1]["all_precision"] is None  # nan (no detections) -> null


def test_cli_missing_report_is_a_user_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
