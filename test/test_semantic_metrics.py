"""Detection mAP via pycocotools and segmentation IoU on synthetic labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation import semantic_metrics as sm

CLASSES = ("person", "bicycle", "car")


def _synthetic_truths() -> list[dict]:
    return [
        {"boxes": np.array([[10, 10, 60, 90], [100, 40, 180, 100]]), "labels": np.array([0, 2])},
        {"boxes": np.array([[30, 20, 70, 120]]), "labels": np.array([0])},
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=int)},
    ]


def _as_predictions(truths: list[dict], shift: float = 0.0) -> list[dict]:
    return [
        {
            "boxes": truth["boxes"] + np.array([shift, 0, shift, 0]),
            "labels": truth["labels"],
            "scores": np.full(len(truth["labels"]), 0.9),
        }
        for truth in truths
    ]


def test_perfect_predictions_score_one() -> None:
    truths = _synthetic_truths()
    result = sm.detection_map(_as_predictions(truths), truths, CLASSES)
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP50_95"] == pytest.approx(1.0)
    assert result["per_class_AP50"]["person"] == pytest.approx(1.0)
    assert result["per_class_AP50"]["car"] == pytest.approx(1.0)
    assert math.isnan(result["per_class_AP50"]["bicycle"])  # no ground truth
    assert result["num_ground_truths"] == 3


def test_shifted_boxes_score_lower() -> None:
    truths = _synthetic_truths()
    perfect = sm.detection_map(_as_predictions(truths), truths, CLASSES)
    # A 10 px shift keeps IoU > 0.5 for these boxes but fails the stricter thresholds.
    shifted = sm.detection_map(_as_predictions(truths, shift=10), truths, CLASSES)
    assert shifted["mAP50"] == pytest.approx(1.0)
    assert shifted["mAP50_95"] < perfect["mAP50_95"]
    far = sm.detection_map(_as_predictions(truths, shift=200), truths, CLASSES)
    assert far["mAP50"] == pytest.approx(0.0)


def test_wrong_class_and_extra_false_positive_lower_the_score() -> None:
    truths = _synthetic_truths()
    predictions = _as_predictions(truths)
    predictions[0]["labels"] = np.array([1, 2])  # the person is called a bicycle
    result = sm.detection_map(predictions, truths, CLASSES)
    # 1 of 2 found, precision 1 up to recall 0.5: 51 of COCO's 101 recall points.
    assert result["per_class_AP50"]["person"] == pytest.approx(51 / 101)
    assert result["per_class_AP50"]["car"] == pytest.approx(1.0)


def test_empty_cases() -> None:
    truths = _synthetic_truths()
    empty_predictions = [{"boxes": np.zeros((0, 4)), "labels": [], "scores": []}] * 3
    result = sm.detection_map(empty_predictions, truths, CLASSES)
    assert result["mAP50"] == 0.0 and result["mAP50_95"] == 0.0
    no_truth = [{"boxes": np.zeros((0, 4)), "labels": []}] * 3
    result = sm.detection_map(_as_predictions(truths), no_truth, CLASSES)
    assert math.isnan(result["mAP50"])
    with pytest.raises(sm.SemanticInputError):
        sm.detection_map(empty_predictions[:2], truths, CLASSES)
    with pytest.raises(sm.SemanticInputError):
        sm.detection_map(
            [{"boxes": [[0, 0, 1, 1]], "labels": [7], "scores": [1]}], truths[:1], CLASSES
        )


def test_yolo_lines_to_pixel_boxes() -> None:
    entry = sm.yolo_to_xyxy(["0 0.5 0.5 0.2 0.4", "", "2 0.1 0.1 0.2 0.2"], 640, 480)
    assert entry["labels"].tolist() == [0, 2]
    assert entry["boxes"][0].tolist() == pytest.approx([256, 144, 384, 336])
    with pytest.raises(sm.SemanticInputError):
        sm.yolo_to_xyxy(["0 0.5 0.5"], 10, 10)


def test_segmentation_scores_known_confusion() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    scores = sm.segmentation_scores(pred, gt, num_classes=3)
    # class 0: TP 3, FN 1 (pred 1), FP 1 (gt 1 pred 0) -> 3/5; class 1: TP 2, FP 1, FN 1 -> 2/4
    assert scores["per_class_iou"][0] == pytest.approx(3 / 5)
    assert scores["per_class_iou"][1] == pytest.approx(2 / 4)
    assert math.isnan(scores["per_class_iou"][2])  # ignored pixel only: absent everywhere
    assert scores["mIoU"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert scores["mAcc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert scores["confusion"].sum() == 7


def test_confusion_matrix_accumulates_over_images() -> None:
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 2, (8, 8)), rng.integers(0, 2, (8, 8))) for _ in range(3)]
    accumulated = sm.ConfusionMatrix(num_classes=2)
    for pred, gt in images:
        accumulated.update(pred, gt)
    all_pred = np.concatenate([p.ravel() for p, _ in images])
    all_gt = np.concatenate([g.ravel() for _, g in images])
    assert np.array_equal(
        accumulated.matrix, sm.segmentation_scores(all_pred, all_gt, 2)["confusion"]
    )
    perfect = sm.segmentation_scores(all_gt, all_gt, 2)
    assert perfect["mIoU"] == 1.0 and perfect["pixel_acc"] == 1.0
    with pytest.raises(sm.SemanticInputError):
        accumulated.update(np.full((2, 2), 5), np.zeros((2, 2)))


def test_coco_documents_are_coco_files_and_score_as_detection_map() -> None:
    """Synthetic boxes: the documents use COCO's ids and [x, y, w, h]; scoring them is
    detection_map, and the documents are left as they were."""
    import copy

    truths = _synthetic_truths()
    predictions = _as_predictions(truths, shift=3)
    images = [{"file_name": f"{i}.png", "width": 640, "height": 480} for i in range(3)]
    truth, results = sm.coco_documents(predictions, truths, CLASSES, images)
    assert [image["id"] for image in truth["images"]] == [1, 2, 3]
    assert truth["images"][0] == {"id": 1, "file_name": "0.png", "width": 640, "height": 480}
    assert truth["categories"] == [
        {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}
    ]
    first = truth["annotations"][0]
    assert first["bbox"] == [10.0, 10.0, 50.0, 80.0] and first["area"] == 4000.0
    assert first["category_id"] == 1 and first["iscrowd"] == 0 and first["id"] == 1
    assert results[1] == {"image_id": 1, "category_id": 3, "bbox": [103.0, 40.0, 80.0, 60.0],
                          "score": 0.9}
    before = copy.deepcopy((truth, results))
    scored = sm.coco_scores(truth, results)
    assert (truth, results) == before
    direct = sm.detection_map(predictions, truths, CLASSES)
    per_class, direct_per_class = scored.pop("per_class_AP50"), direct.pop("per_class_AP50")
    assert scored == direct
    assert per_class == pytest.approx(direct_per_class, nan_ok=True)
    assert math.isnan(per_class["bicycle"])


def test_max_dets_decides_how_many_detections_per_image_are_ranked() -> None:
    """Synthetic: 150 confident false boxes and the one true box scored lowest. COCO's
    maxDets 100 never sees the true box; maxDets 150 does."""
    truth = {"boxes": np.array([[100.0, 100.0, 140.0, 200.0]]), "labels": np.array([0])}
    false_boxes = np.array([[300.0 + i, 10.0, 310.0 + i, 30.0] for i in range(149)])
    prediction = {
        "boxes": np.vstack([false_boxes, truth["boxes"]]),
        "labels": np.zeros(150, dtype=int),
        "scores": np.concatenate([np.linspace(0.9, 0.5, 149), [0.1]]),
    }
    capped = sm.detection_map([prediction], [truth], CLASSES)
    assert capped["max_dets"] == sm.COCO_MAX_DETS == 100
    assert capped["mAP50"] == 0.0
    wide = sm.detection_map([prediction], [truth], CLASSES, max_dets=150)
    assert wide["max_dets"] == 150
    assert wide["mAP50"] == pytest.approx(1.0 / 150, rel=0.3)  # recall 1 at precision 1/150
    assert wide["mAP50"] > 0.0
