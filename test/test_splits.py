"""Named splits by name ranges (evaluation.splits) on the real shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ros2_bilevel_fusion.evaluation import splits


@pytest.fixture(scope="module")
def msrs_det(shared_data: Path) -> dict[str, list[str]]:
    if not (shared_data / "msrs_det" / "ir").is_dir():
        pytest.skip("msrs_det is not present")
    return {part: splits.split_names(f"msrs_det:{part}", shared_data)
            for part in ("train", "val", "test")}


def test_msrs_det_splits_are_disjoint_and_cover_every_pair(msrs_det, shared_data) -> None:
    train, val, test = msrs_det["train"], msrs_det["val"], msrs_det["test"]
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    every = splits.pair_names(shared_data / "msrs_det")
    assert sorted(train + val + test) == every and len(every) == 313
    for names in msrs_det.values():
        assert names == sorted(names)


def test_msrs_det_splits_are_name_ranges(msrs_det) -> None:
    """Each split is one contiguous block of frame numbers: val < train < test."""
    numbers = {part: [splits.frame_number(n) for n in names] for part, names in msrs_det.items()}
    assert max(numbers["val"]) < min(numbers["train"])
    assert max(numbers["train"]) < min(numbers["test"])
    assert (msrs_det["val"][0], msrs_det["val"][-1]) == ("00004N", "00245D")
    assert (msrs_det["train"][0], msrs_det["train"][-1]) == ("00258D", "01094N")
    assert (msrs_det["test"][0], msrs_det["test"][-1]) == ("01206N", "01603D")
    # boundaries are at gaps of at least 12 frames (frames of one drive are 4 to 8 apart)
    assert min(numbers["train"]) - max(numbers["val"]) >= 12
    assert min(numbers["test"]) - max(numbers["train"]) >= 12


def test_val_and_test_have_day_and_night_and_test_has_40(msrs_det) -> None:
    assert len(msrs_det["test"]) >= 40
    for part in ("val", "test"):
        suffixes = {name[-1] for name in msrs_det[part]}
        assert suffixes == {"D", "N"}, part
    assert [len(msrs_det[p]) for p in ("train", "val", "test")] == [167, 51, 95]


def test_no_holdout_name_in_any_train_split(msrs_det, shared_data) -> None:
    assert not set(splits.MSRS_HOLDOUT_NAMES) & set(msrs_det["train"])
    msrs_train = splits.split_names("msrs:train", shared_data)
    msrs_holdout = splits.split_names("msrs:holdout", shared_data)
    assert not set(splits.MSRS_HOLDOUT_NAMES) & set(msrs_train)
    assert msrs_holdout == sorted(splits.MSRS_HOLDOUT_NAMES)
    assert len(msrs_train) + len(msrs_holdout) == 28
    # the held-out names that are also msrs_det names lie in msrs_det:val
    shared = set(splits.MSRS_HOLDOUT_NAMES) & set(splits.pair_names(shared_data / "msrs_det"))
    assert shared == {"00020N", "00036N", "00055D", "00091D"} <= set(msrs_det["val"])
    # the exclusion holds even for a name inside the train range
    assert splits.get_split("msrs_det:train").select(["00300D", "00055D"]) == ["00300D"]


def test_training_uses_the_same_holdout_constant() -> None:
    datasets = pytest.importorskip("training.datasets")
    assert datasets.MSRS_HOLDOUT_NAMES is splits.MSRS_HOLDOUT_NAMES


def test_split_statistics_counts(shared_data) -> None:
    if not (shared_data / "msrs_det" / "ir").is_dir():
        pytest.skip("msrs_det is not present")
    stats = splits.split_statistics("msrs_det:test", shared_data)
    assert (stats["pairs"], stats["day"], stats["night"]) == (95, 52, 43)
    # the merge never loses a fusion box
    assert all(m >= f for m, f in zip(stats["merged_boxes"], stats["fusion_boxes"], strict=True))


def test_unknown_split_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(splits.SplitError, match="known: msrs_det:train"):
        splits.split_names("msrs_det:everything", tmp_path)
    with pytest.raises(splits.SplitError, match="no ir/ and vi/"):
        splits.split_names("msrs_det:test", tmp_path)
    assert splits.frame_number("01206N") == 1206
    with pytest.raises(splits.SplitError):
        splits.frame_number("night")


# ------------------------------------------------------------------ fusion-eval on a split


def _split_counts(shared_data: Path, names: list[str]) -> tuple[int, int]:
    """(fusion-only, merged) box counts of these msrs_det pairs."""
    from ros2_bilevel_fusion.evaluation import ground_truth as gt

    labels = shared_data / "msrs_det" / "labels"
    fusion = sum(len(gt.read_yolo(labels / "fusion" / f"{n}.txt", 640, 480)[1]) for n in names)
    merged = sum(len(gt.read_merged_labels(labels, n, 640, 480)[1]) for n in names)
    return fusion, merged


def test_the_folder_loop_on_a_split_scores_against_merged_labels(msrs_det, shared_data) -> None:
    """Predicting the merged boxes scores mAP 1 on msrs_det:test; predicting only the fusion
    annotation's boxes misses the objects only infrared / visible drew (mAP < 1)."""
    import numpy as np

    from ros2_bilevel_fusion.core.processing import Detections
    from ros2_bilevel_fusion.evaluation import folder
    from ros2_bilevel_fusion.evaluation import ground_truth as gt

    pairs, truth = folder.split_pairs("msrs_det:test", shared_data, limit=4)
    names = [pair.stem for pair in pairs]
    assert names == msrs_det["test"][:4]
    fusion_count, merged_count = _split_counts(shared_data, names)
    assert merged_count > fusion_count  # these four pairs have objects fusion did not draw
    labels = shared_data / "msrs_det" / "labels"

    def predicting(source):
        stems = iter(names)

        def run_pair(ir_u8, visible_bgr):
            height, width = visible_bgr.shape[:2]
            boxes, classes = source(next(stems), width, height)
            detections = Detections(
                boxes.astype(np.float32), np.ones(len(classes), np.float32), classes
            )
            return folder.PairOutput(
                fused_y=folder.visible_luma(visible_bgr), detections=detections
            )

        return run_pair

    classes = ["person", "bicycle", "car"]
    merged = folder.score_pairs(
        pairs, predicting(lambda n, w, h: gt.read_merged_labels(labels, n, w, h)),
        ground_truth=truth, detection_classes=classes,
    )
    assert merged.detection["num_ground_truths"] == merged_count
    assert merged.detection["mAP50"] == pytest.approx(1.0)
    assert merged.detection["ground_truth"].startswith("merged fusion+infrared+visible")
    fusion_only = folder.score_pairs(
        pairs, predicting(lambda n, w, h: gt.read_yolo(labels / "fusion" / f"{n}.txt", w, h)),
        ground_truth=truth, detection_classes=classes,
    )
    assert fusion_only.detection["mAP50"] < 0.95
    with pytest.raises(folder.EvaluationError, match="not both"):
        folder.score_pairs(pairs, predicting(None), labels_dir=labels / "fusion",
                           ground_truth=truth, detection_classes=classes)
    with pytest.raises(folder.EvaluationError, match="unknown split"):
        folder.split_pairs("msrs_det:everything", shared_data)


def test_fusion_eval_folder_split_cli(fixture_bundle, msrs_det, shared_data, tmp_path) -> None:
    import json

    from ros2_bilevel_fusion.evaluation import evaluate

    names = msrs_det["val"][:2]
    fusion_count, merged_count = _split_counts(shared_data, names)
    common = ["folder", "--bundle", str(fixture_bundle), "--split", "msrs_det:val",
              "--data-root", str(shared_data), "--limit", "2"]
    assert evaluate.main([*common, "--out", str(tmp_path / "merged")]) == 0
    detection = json.loads((tmp_path / "merged" / "summary.json").read_text())["detection"]
    assert detection["labelled_images"] == 2
    assert detection["num_ground_truths"] == merged_count
    assert "merged" in detection["ground_truth"]
    # --labels DIR still works, on the split's pairs: that one annotation is the ground truth
    fusion_dir = shared_data / "msrs_det" / "labels" / "fusion"
    assert evaluate.main(
        [*common, "--labels", str(fusion_dir), "--out", str(tmp_path / "fusion")]
    ) == 0
    detection = json.loads((tmp_path / "fusion" / "summary.json").read_text())["detection"]
    assert detection["num_ground_truths"] == fusion_count < merged_count
    # errors are messages (exit code 2)
    assert evaluate.main([*common, "--ir", str(shared_data / "msrs_det" / "ir"),
                          "--out", str(tmp_path / "x")]) == 2
    assert evaluate.main(["folder", "--bundle", str(fixture_bundle), "--split", "msrs_det:all",
                          "--data-root", str(shared_data), "--out", str(tmp_path / "y")]) == 2
    assert evaluate.main(["folder", "--bundle", str(fixture_bundle),
                          "--out", str(tmp_path / "z")]) == 2
