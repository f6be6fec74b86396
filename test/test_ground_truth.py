"""The one YOLO label reader and the merge of the three MSRS annotations (ground_truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation import ground_truth as gt
from ros2_bilevel_fusion.evaluation import semantic_metrics as sm


def test_read_yolo_pixels_blank_lines_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("0  0.5 0.5 0.2 0.4  \n\n2 0.1 0.9 0.2 0.2\n")
    boxes, labels = gt.read_yolo(path, 200, 100)
    assert boxes.dtype == np.float64 and labels.dtype == np.int64
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70], [0, 80, 40, 100]])
    assert labels.tolist() == [0, 2]
    boxes, labels = gt.read_yolo(path, 200, 100, class_map={2: 1})
    assert labels.tolist() == [1] and boxes.tolist() == [[0, 80, 40, 100]]
    (tmp_path / "empty.txt").write_text("")
    boxes, labels = gt.read_yolo(tmp_path / "empty.txt", 200, 100)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        gt.read_yolo(tmp_path / "bad.txt", 200, 100)
    with pytest.raises(ValueError, match="line 1"):
        gt.parse_yolo_lines(["0 a 0.5 0.1 0.1"], 10, 10)


def test_every_reader_is_the_same_reader(shared_data: Path) -> None:
    """semantic_metrics.yolo_to_xyxy and training's parse_yolo give read_yolo's boxes (training
    clips them to the image) on every real msrs_det label file of one pair."""
    datasets = pytest.importorskip("training.datasets")
    for side in gt.MSRS_ANNOTATIONS:
        path = shared_data / "msrs_det" / "labels" / side / "01352N.txt"
        boxes, labels = gt.read_yolo(path, 640, 480)
        entry = sm.yolo_to_xyxy(path.read_text().splitlines(), 640, 480)
        np.testing.assert_array_equal(entry["boxes"], boxes)
        np.testing.assert_array_equal(entry["labels"], labels)
        train_boxes, train_labels = datasets.parse_yolo(path, 640, 480)
        clipped = boxes.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, 640)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, 480)
        np.testing.assert_allclose(train_boxes, clipped, rtol=1e-6, atol=1e-4)
        assert train_labels.tolist() == labels.tolist()


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], float)  # second: degenerate
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    iou = gt.box_iou(a, b)
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert gt.box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_match_boxes_one_to_one_best_first_same_class() -> None:
    a = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110]], float)
    b = np.array([[1, 0, 11, 10], [100, 100, 110, 110]], float)
    # b0 overlaps a0 (IoU 9/11) and a1 (1.0): it goes to a1, and a0 stays unmatched
    index_a, index_b = gt.match_boxes(a, [0, 0, 2], b, [0, 1])  # b1 is another class than a2
    assert index_a.tolist() == [1] and index_b.tolist() == [0]
    index_a, index_b = gt.match_boxes(a, [0, 0, 2], b, [0, 2], iou_threshold=0.5)
    assert sorted(zip(index_a.tolist(), index_b.tolist(), strict=True)) == [(1, 0), (2, 1)]


def test_merge_rule_fusion_box_else_mean_and_union() -> None:
    """Synthetic three-annotation scene with the cases of the rule, by hand."""
    fusion = (np.array([[0, 0, 10, 20], [50, 50, 60, 60]], float), np.array([0, 2]))
    infrared = (
        np.array([[1, 0, 11, 20],      # person of fusion (IoU 0.82): keeps fusion's box
                  [200, 0, 210, 20],   # person only here ...
                  [50, 50, 60, 60]],   # same place as fusion's car, but a person: new object
                 float),
        np.array([0, 0, 0]),
    )
    visible = (
        np.array([[202, 0, 212, 20],   # ... and here: mean of infrared and visible
                  [0, 0, 10, 20],      # person of fusion again
                  [300, 300, 310, 330]], float),  # bicycle only here
        np.array([0, 0, 1]),
    )
    boxes, labels, support = gt.merge_annotations(
        [fusion, infrared, visible], return_support=True
    )
    assert labels.tolist() == [0, 2, 0, 0, 1]
    np.testing.assert_allclose(
        boxes,
        [[0, 0, 10, 20], [50, 50, 60, 60], [201, 0, 211, 20], [50, 50, 60, 60],
         [300, 300, 310, 330]],
    )
    assert support.tolist() == [
        [True, True, True], [True, False, False], [False, True, True], [False, True, False],
        [False, False, True],
    ]
    # Two boxes of one annotation are never merged: side-by-side persons stay two objects.
    two = (np.array([[0, 0, 10, 20], [1, 0, 11, 20]], float), np.array([0, 0]))
    assert len(gt.merge_annotations([two])[0]) == 2
    assert len(gt.merge_annotations([two, (np.zeros((0, 4)), np.zeros(0))])[0]) == 2
    # Below the threshold two same-class boxes are two objects.
    far = (np.array([[5, 0, 15, 20]], float), np.array([0]))  # IoU 1/3 with [0, 0, 10, 20]
    assert len(gt.merge_annotations([(two[0][:1], two[1][:1]), far])[0]) == 2
    with pytest.raises(ValueError):
        gt.merge_annotations([])


def test_merge_on_real_msrs_det_pairs(shared_data: Path) -> None:
    """Real msrs_det labels: the merge keeps every fusion box as it is, has at least as many
    boxes of each class as any single annotation, and no object of it is backed by two boxes
    of the same annotation."""
    root = shared_data / "msrs_det" / "labels"
    if not root.is_dir():
        pytest.skip("msrs_det labels are not present")
    for name in ("00004N", "00123D", "01352N", "01547D"):
        read = [gt.read_yolo(root / side / f"{name}.txt", 640, 480) for side in gt.MSRS_ANNOTATIONS]
        boxes, labels, support = gt.merge_annotations(read, return_support=True)
        np.testing.assert_array_equal(boxes[: len(read[0][0])], read[0][0])
        np.testing.assert_array_equal(labels[: len(read[0][1])], read[0][1])
        for c in range(3):
            assert (labels == c).sum() >= max((annotation[1] == c).sum() for annotation in read)
        # each annotation's boxes are used exactly once
        assert support.sum(axis=0).tolist() == [len(annotation[1]) for annotation in read]
        merged = gt.read_merged_labels(root, name, 640, 480)
        assert merged is not None
        np.testing.assert_array_equal(merged[0], boxes)
    assert gt.read_merged_labels(root, "no_such_pair", 640, 480) is None
    truth = gt.merged_truth(root)("01352N", 640, 480)
    assert truth is not None and len(truth["boxes"]) == len(truth["labels"]) > 0
    assert "IoU 0.5" in gt.merged_truth(root).description


def test_training_pair_folder_reads_merged_labels(shared_data: Path) -> None:
    """training.datasets.PairFolder with label_annotations gives the merged boxes (clipped)."""
    datasets = pytest.importorskip("training.datasets")
    root = shared_data / "msrs_det"
    if not (root / "labels").is_dir():
        pytest.skip("msrs_det is not present")
    merged = datasets.PairFolder(
        root, names=["01352N"], labels_dir="labels", label_annotations=gt.MSRS_ANNOTATIONS,
        train=False,
    ).load(0)
    fusion = datasets.PairFolder(
        root, names=["01352N"], labels_dir="labels/fusion", train=False
    ).load(0)
    boxes, labels = gt.read_merged_labels(root / "labels", "01352N", 640, 480)
    assert merged["has_boxes"] and merged["labels"].tolist() == labels.tolist()
    np.testing.assert_allclose(merged["boxes"], boxes.clip(0, [640, 480, 640, 480]), atol=1e-3)
    assert len(fusion["labels"]) < len(merged["labels"])
