"""training.datasets and training.synthetic: parsing, augmentation alignment, folders, splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.datasets import (
    IGNORE_INDEX,
    MSRS_HOLDOUT_NAMES,
    PairFolder,
    collate_pairs,
    ignore_background_in_boxes,
    list_pair_names,
    msrs_pairs,
    msrs_split,
    parse_voc,
    parse_yolo,
    random_scale_crop_flip,
    read_mask,
    split_names,
)
from training.synthetic import SyntheticPairs

VOC_XML = """<annotation>
  <size><width>200</width><height>100</height><depth>3</depth></size>
  <object><name>People</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax>
    <ymax>80</ymax></bndbox></object>
  <object><name>Lamp</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>
    </bndbox></object>
  <object><name>car</name><bndbox><xmin>101</xmin><ymin>41</ymin><xmax>250</xmax>
    <ymax>90</ymax></bndbox></object>
</annotation>
"""


def test_parse_yolo(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.2 0.4\n\n2  0.1 0.9 0.2 0.2  \n")
    boxes, labels = parse_yolo(path, width=200, height=100)
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70], [0, 80, 40, 100]])
    assert labels.tolist() == [0, 2]
    boxes, labels = parse_yolo(path, 200, 100, class_map={2: 1})
    assert labels.tolist() == [1] and boxes.shape == (1, 4)
    (tmp_path / "empty.txt").write_text("")
    boxes, labels = parse_yolo(tmp_path / "empty.txt", 200, 100)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    (tmp_path / "bad.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        parse_yolo(tmp_path / "bad.txt", 200, 100)


def test_parse_voc(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(VOC_XML)
    boxes, labels = parse_voc(path)
    # "People" -> person (case-insensitive), "Lamp" dropped, car clipped to the image width
    assert labels.tolist() == [0, 2]
    np.testing.assert_allclose(boxes, [[10, 20, 30, 80], [100, 40, 200, 90]])
    boxes, labels = parse_voc(path, class_map={"lamp": 1})
    assert labels.tolist() == [1]


def test_read_mask_maps_values(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    mapped = read_mask(tmp_path / "m.png", {255: 1})
    assert mapped.dtype == np.int64 and set(np.unique(mapped)) == {0, 1}
    assert (mapped[2:5, 3:7] == 1).all()
    ids = np.array([[0, 3, 7]], np.uint8)
    cv2.imwrite(str(tmp_path / "ids.png"), ids)
    assert read_mask(tmp_path / "ids.png").tolist() == [[0, 3, 7]]


def test_ignore_background_in_boxes() -> None:
    mask = np.zeros((20, 20), np.int64)
    mask[5:10, 5:10] = 1
    boxes = np.array([[0, 0, 8, 8], [12, 12, 18, 18]], np.float32)
    out = ignore_background_in_boxes(mask, boxes, np.array([0, 2]), box_classes=(2,))
    assert (out[12:18, 12:18] == IGNORE_INDEX).all()
    assert (out[0:5, 0:5] == 0).all() and (out[5:10, 5:10] == 1).all()


def synthetic_rectangles(
    rng: np.random.Generator, height: int = 120, width: int = 160
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic scene: solid rectangles whose mask pixels are exactly their boxes."""
    ir = rng.random((height, width)).astype(np.float32)
    visible = rng.random((height, width, 3)).astype(np.float32)
    mask = np.zeros((height, width), np.int64)
    boxes = []
    for class_id, (x1, y1, x2, y2) in enumerate([(10, 20, 50, 90), (90, 30, 150, 70)], start=1):
        mask[y1:y2, x1:x2] = class_id
        ir[y1:y2, x1:x2] = 1.0  # IR marks the object too: images must stay aligned
        boxes.append([x1, y1, x2, y2])
    return ir, visible, np.array(boxes, np.float32), np.array([0, 1]), mask


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_boxes_masks_and_images_aligned(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ir, visible, boxes, labels, mask = synthetic_rectangles(rng)
    ir, visible, boxes, labels, mask = random_scale_crop_flip(
        ir, visible, boxes, labels, mask, rng, crop_hw=(96, 128), scale_range=(0.6, 1.5)
    )
    assert ir.shape == (96, 128) and visible.shape == (96, 128, 3) and mask.shape == (96, 128)
    assert len(boxes) == len(labels)
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        class_id = int(label) + 1
        # strictly inside the box (1 px margin for resampling), every pixel is the object
        inner = mask[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert inner.size > 0 and (inner == class_id).all()
        inner_ir = ir[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert np.allclose(inner_ir, 1.0)
        # and the object's pixels do not leak outside its box (1 px tolerance)
        ys, xs = np.nonzero(mask == class_id)
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
        assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
    # every class still visible in a large piece has kept its box
    for class_id in (1, 2):
        if (mask == class_id).sum() > 400:
            assert class_id - 1 in labels.tolist()


def test_augmentation_pads_small_images_with_ignore() -> None:
    rng = np.random.default_rng(0)
    ir, visible, boxes, labels, mask = synthetic_rectangles(rng, 40, 50)
    _, visible_out, _, _, mask_out = random_scale_crop_flip(
        ir, visible, boxes, labels, mask, rng, crop_hw=(128, 128), scale_range=(1.0, 1.0)
    )
    assert (mask_out == IGNORE_INDEX).sum() == 128 * 128 - 40 * 50
    # padding is neutral chroma, not green
    padded = mask_out == IGNORE_INDEX
    assert np.allclose(visible_out[padded][:, 1:], 128 / 255)


def write_synthetic_folder(root: Path, count: int = 3, height: int = 70, width: int = 90) -> None:
    """A synthetic pair folder on disk: ir/, vi/, labels/ (YOLO), masks/ (0/255 PNG)."""
    for sub in ("ir", "vi", "labels", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        name = f"{index:05d}N"
        cv2.imwrite(str(root / "ir" / f"{name}.png"),
                    rng.integers(0, 256, (height, width), dtype=np.uint8))
        cv2.imwrite(str(root / "vi" / f"{name}.png"),
                    rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.4 0.6\n")
        if index != 1:  # one pair without a mask
            mask = np.zeros((height, width), np.uint8)
            mask[21:49, 27:63] = 255
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)


def test_pair_folder_train_and_eval(tmp_path: Path) -> None:
    write_synthetic_folder(tmp_path)
    assert list_pair_names(tmp_path) == ["00000N", "00001N", "00002N"]
    common = dict(labels_dir="labels", masks_dir="masks", mask_map={255: 1})
    evaluation = PairFolder(tmp_path, train=False, **common)
    item = evaluation[0]
    assert item["ir"].shape == (1, 96, 96) and item["visible_ycrcb"].shape == (3, 96, 96)
    assert item["ir"].dtype == torch.float32 and 0 <= item["ir"].min() <= item["ir"].max() <= 1
    torch.testing.assert_close(item["boxes"], torch.tensor([[27.0, 14.0, 63.0, 56.0]]))
    assert item["labels"].tolist() == [0] and item["has_mask"] and item["has_boxes"]
    assert item["mask"][30, 40].item() == 1 and item["mask"][0, 0].item() == 0
    assert item["mask"][80, 80].item() == IGNORE_INDEX  # padding
    assert not evaluation[1]["has_mask"]
    assert (evaluation[1]["mask"] == IGNORE_INDEX).all()

    torch.manual_seed(0)
    train = PairFolder(tmp_path, train=True, crop=(48, 64), **common)
    batch = collate_pairs([train[i] for i in range(3)])
    assert batch["ir"].shape == (3, 1, 48, 64) and batch["visible_ycrcb"].shape == (3, 3, 48, 64)
    assert batch["mask"].shape == (3, 48, 64) and batch["has_mask"].tolist() == [True, False, True]
    assert len(batch["boxes"]) == 3 and batch["names"] == ["00000N", "00001N", "00002N"]
    with pytest.raises(ValueError, match="different sizes"):
        collate_pairs([evaluation[0], train[0]])


def test_pair_folder_reports_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PairFolder(tmp_path / "nowhere")


def test_split_names_is_deterministic_and_disjoint() -> None:
    names = [f"{i:05d}" for i in range(40)]
    train, holdout = split_names(names, 0.25, seed=1)
    assert len(holdout) == 10 and not set(train) & set(holdout)
    assert sorted(train + holdout) == names
    assert split_names(names, 0.25, seed=1) == (train, holdout)
    assert split_names(names, 0.25, seed=2) != (train, holdout)


def test_msrs_split_and_labels(shared_data: Path) -> None:
    root = shared_data / "msrs"
    train, evaluation = msrs_split(root)
    assert sorted(evaluation) == sorted(MSRS_HOLDOUT_NAMES)
    assert len(train) == 20 and not set(train) & set(evaluation)
    masked = {p.stem for p in (root / "masks").iterdir()}
    assert len(masked & set(evaluation)) == 4 and len(masked & set(train)) == 4
    dataset = msrs_pairs(root, "eval")
    item = dataset[dataset.names.index("00001D")]
    label_lines = (root / "labels/fusion/00001D.txt").read_text().split("\n")
    assert len(item["boxes"]) == len([line for line in label_lines if line.strip()])
    assert item["has_mask"] and set(item["mask"].unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert item["ir"].shape == (1, 480, 640)
    # person boxes hold person pixels
    person = item["boxes"][item["labels"] == 0][0].round().int().tolist()
    region = item["mask"][person[1]:person[3], person[0]:person[2]]
    assert (region == 1).float().mean() > 0.2


def test_synthetic_pairs_are_deterministic_and_labelled() -> None:
    dataset = SyntheticPairs(6, size=(96, 128), seed=5)
    first, again = dataset[2], dataset[2]
    torch.testing.assert_close(first["ir"], again["ir"])
    assert first["name"].startswith("synthetic_")
    assert first["visible_ycrcb"].shape == (3, 96, 128) and first["has_mask"]
    objects = 0
    for index in range(len(dataset)):
        item = dataset[index]
        for box, label in zip(item["boxes"], item["labels"], strict=True):
            x1, y1, x2, y2 = box.int().tolist()
            region = item["mask"][y1:y2, x1:x2]
            # the object's pixels are in its box and are warm in IR (unless occluded later)
            own = region == label + 1
            if own.any():
                assert item["ir"][0, y1:y2, x1:x2][own].mean() > 0.4
            objects += 1
    assert objects > 0
    with pytest.raises(IndexError):
        dataset[6]
