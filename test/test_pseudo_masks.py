"""Segmentation pseudo-labels (training.pseudo_masks): the merge and box-cut rules on SYNTHETIC
arrays, and the real DeepLabV3 teacher on one REAL msrs_det training pair (skips without
../shared)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation.ground_truth import read_merged_labels
from training import pseudo_masks
from training.pseudo_masks import (
    IGNORE_INDEX,
    collapse_voc,
    cut_by_boxes,
    merge_modalities,
    views,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TEACHER = REPO.parent / "shared" / "weights" / "deeplabv3_mobilenetv2_voc.onnx"
needs_teacher = pytest.mark.skipif(
    not TEACHER.is_file() or not (DATA / "msrs_det" / "ir").is_dir(),
    reason="no ../shared/weights teacher or ../shared/data/msrs_det",
)


def _one_hot_voc(voc_id: int) -> np.ndarray:
    probs = np.zeros((1, 1, 21), np.float32)
    probs[..., voc_id] = 1.0
    return probs


@pytest.mark.parametrize(
    ("voc_id", "segmentation_id"),
    [(15, 1), (2, 2), (14, 2), (7, 3), (6, 3), (0, 0), (9, 0), (12, 0)],
)
def test_voc_classes_collapse_to_the_four_segmentation_classes(voc_id, segmentation_id):
    collapsed = collapse_voc(_one_hot_voc(voc_id))
    assert collapsed.shape == (1, 1, 4)
    assert collapsed[0, 0].argmax() == segmentation_id
    assert collapsed.sum() == pytest.approx(1.0)


def test_modalities_merge_as_a_union_of_objects():
    background = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    person = np.array([0.2, 0.8, 0.0, 0.0], np.float32)
    ir = np.stack([person, background, background])[None]
    visible = np.stack([background, background, person])[None]
    assert merge_modalities(ir, visible).tolist() == [[1, 0, 1]]


def test_box_cut_removes_objects_outside_their_boxes_and_ignores_missed_boxes():
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:6] = 1  # a person inside the person box
    labels[10:14, 2:6] = 1  # a "person" with no person box (teacher false positive)
    boxes = np.array([[1, 1, 8, 8], [20, 10, 28, 18], [10, 9, 17, 15]], np.float64)
    classes = np.array([0, 0, 2])  # person, person (missed by the teacher), car
    cut = cut_by_boxes(labels, boxes, classes)
    assert (cut[2:6, 2:6] == 1).all()
    assert (cut[10:14, 2:6] == 0).all()  # outside every person box -> background
    assert (cut[10:18, 20:28] == IGNORE_INDEX).all()  # missed person box -> unknown
    assert (cut[9:15, 10:17] == IGNORE_INDEX).all()  # missed car box too
    assert (cut[0, :] == 0).all()


def test_views_cover_every_pixel_and_include_the_whole_frame():
    height, width = 480, 640
    cover = np.zeros((height, width), int)
    for y0, x0, h, w in views(height, width):
        assert y0 >= 0 and x0 >= 0 and y0 + h <= height and x0 + w <= width
        cover[y0 : y0 + h, x0 : x0 + w] += 1
    assert views(height, width)[0] == (0, 0, height, width)
    assert cover.min() >= 2


@needs_teacher
def test_real_teacher_labels_people_inside_person_boxes_only(tmp_path):
    name = "00681N"  # msrs_det:train, night, three people (the tallest 375 px)
    folder = DATA / "msrs_det"
    ir = cv2.imread(str(folder / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(folder / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
    boxes, classes = read_merged_labels(folder / "labels", name, ir.shape[1], ir.shape[0])
    assert (classes == 0).any()
    session = pseudo_masks.teacher_session(TEACHER, threads=1)
    mask = pseudo_masks.pseudo_mask(session, ir, visible, boxes, classes)
    assert mask.shape == ir.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2, 3, IGNORE_INDEX}
    inside_person_box = np.zeros(ir.shape, bool)
    for box, cls in zip(boxes.astype(int), classes, strict=True):
        if cls == 0:
            inside_person_box[max(box[1], 0) : box[3] + 1, max(box[0], 0) : box[2] + 1] = True
    person = mask == 1
    assert person.sum() > 200  # the teacher finds the people
    assert not (person & ~inside_person_box).any()


def test_written_split_is_reused_while_its_manifest_matches(tmp_path, monkeypatch):
    """write_split skips the teacher when the folder's manifest matches (SYNTHETIC names)."""
    monkeypatch.setattr(pseudo_masks, "split_names", lambda split, root: ["00300N"])
    monkeypatch.setattr(pseudo_masks, "sha256_of_file", lambda path: "0" * 64)
    for side in ("ir", "vi"):
        (tmp_path / "msrs_det" / side).mkdir(parents=True)
    out = tmp_path / "masks"
    out.mkdir()
    manifest = pseudo_masks._manifest("msrs_det:train", ["00300N"], Path("teacher.onnx"))
    (out / "manifest.json").write_text(json.dumps(manifest))

    def fail(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache matched")

    monkeypatch.setattr(pseudo_masks, "teacher_session", fail)
    assert pseudo_masks.write_split("msrs_det:train", out, tmp_path) == out
    monkeypatch.setattr(pseudo_masks, "split_names", lambda split, root: ["00300N", "00304N"])
    with pytest.raises(AssertionError, match="teacher ran"):
        pseudo_masks.write_split("msrs_det:train", out, tmp_path)


@pytest.mark.skipif(not (DATA / "msrs_det" / "ir").is_dir(), reason="no ../shared/data/msrs_det")
def test_training_pool_reads_the_pseudo_masks_of_its_split(tmp_path, monkeypatch):
    """data.msrs_det_pseudo_masks: the msrs_det:train pool carries the masks of the split's
    folder (here SYNTHETIC masks written by a stand-in for the teacher) and the manifest's
    teacher fields reach the provenance."""
    from training import data as training_data
    from training.config import load_config

    def fake_write_split(split, out, data_root, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        for name in pseudo_masks.split_names(split, data_root):
            mask = np.zeros((480, 640), np.uint8)
            mask[100:200, 100:150] = 1  # a SYNTHETIC "person"
            cv2.imwrite(str(out / f"{name}.png"), mask)
        manifest = {"rule_version": 1, "teacher": "t.onnx", "teacher_sha256": "0" * 64,
                    "teacher_licence": "Apache-2.0"}
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    monkeypatch.setattr(training_data, "write_split", fake_write_split)
    monkeypatch.setattr(training_data, "pseudo_mask_folder", lambda split: tmp_path / split)
    config = load_config(
        REPO / "training" / "configs" / "ablation_yolox_infrared.yaml",
        ["data.labelled_scale_range=[1.0, 1.0]", "data.labelled_crop=640"],
    )
    built = training_data.build_data(config, REPO)
    item = built.pools["labelled"][0]
    assert item["has_mask"]
    assert set(np.unique(item["mask"].numpy())) <= {0, 1, 255}
    assert int((item["mask"] == 1).sum()) == 100 * 50
    assert built.provenance["pseudo_masks"]["teacher_sha256"] == "0" * 64
    off = load_config(REPO / "training" / "configs" / "yolox_semantic.yaml")
    assert not off.data.msrs_det_pseudo_masks


@needs_teacher
def test_masked_pairs_get_the_rules_labels_and_only_they(tmp_path):
    """write_masked on a data root holding two REAL msrs/ pairs, one with a real mask: only the
    masked pair gets a pseudo-label, and it is pseudo_mask's for that pair."""
    source = DATA / "msrs"
    masked = sorted(path.stem for path in (source / "masks").glob("*.png"))[0]
    unmasked = next(
        path.stem for path in sorted((source / "ir").glob("*.png"))
        if not (source / "masks" / path.name).is_file()
    )
    root = tmp_path / "data"
    for name in (masked, unmasked):
        for sub in ("ir", "vi"):
            (root / "msrs" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / sub / f"{name}.png", root / "msrs" / sub / f"{name}.png")
        for annotation in ("fusion", "infrared", "visible"):
            label = source / "labels" / annotation / f"{name}.txt"
            if label.is_file():
                target = root / "msrs" / "labels" / annotation / label.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(label, target)
    (root / "msrs" / "masks").mkdir()
    shutil.copyfile(source / "masks" / f"{masked}.png", root / "msrs" / "masks" / f"{masked}.png")

    out = tmp_path / "pseudo"
    assert pseudo_masks.write_masked(out, root, TEACHER, threads=1) == [masked]
    assert sorted(path.name for path in out.iterdir()) == [f"{masked}.png"]
    written = cv2.imread(str(out / f"{masked}.png"), cv2.IMREAD_UNCHANGED)
    ir, visible, boxes, classes = pseudo_masks._labelled_pair(root / "msrs", masked)
    session = pseudo_masks.teacher_session(TEACHER, threads=1)
    expected = pseudo_masks.pseudo_mask(session, ir, visible, boxes, classes)
    assert written.shape == ir.shape and np.array_equal(written, expected)
