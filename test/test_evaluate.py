"""fusion-eval folder mode on real TNO/MSRS pairs with the untrained fixture bundle, and bag mode.

The fixture's fused image is max(IR, Y), so the model row must equal the max baseline computed
by baselines.py: a cross-check that the pipeline, the metrics and the baselines agree.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation import bag_mode, evaluate, folder, metrics

TNO_NAMES = ("01.png", "02.png", "03.png")


@pytest.fixture(scope="module")
def tno_subset(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """Three real TNO pairs copied into a folder named tno (so the published row is shown)."""
    root = tmp_path_factory.mktemp("data") / "tno"
    for side in ("ir", "vi"):
        (root / side).mkdir(parents=True)
        for name in TNO_NAMES:
            shutil.copy(shared_data / "tno" / side / name, root / side / name)
    return root / "ir", root / "vi"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_folder_mode_on_tno_with_the_fixture_bundle(fixture_bundle, tno_subset, tmp_path, capsys):
    ir_dir, vi_dir = tno_subset
    out = tmp_path / "report"
    code = evaluate.main(
        [
            "folder",
            "--bundle",
            str(fixture_bundle),
            "--ir",
            str(ir_dir),
            "--vi",
            str(vi_dir),
            "--out",
            str(out),
            "--save-fused",
            "--baselines",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| method | EN |" in printed and "CDDFuse (published" in printed

    rows = _read_csv(out / "per_image.csv")
    methods = sorted({row["method"] for row in rows})
    assert methods == sorted(
        ["fixture (model)", *(folder.BASELINE_LABELS[n] for n in ("mean", "max", "laplacian"))]
    )
    assert len(rows) == 4 * len(TNO_NAMES)

    # The model row equals the max baseline (fixture fused = max(IR, Y)), image by image.
    model_rows = {r["name"]: r for r in rows if r["method"] == "fixture (model)"}
    max_rows = {r["name"]: r for r in rows if r["method"] == folder.BASELINE_LABELS["max"]}
    assert sorted(model_rows) == list(TNO_NAMES)
    for name in TNO_NAMES:
        for metric in metrics.METRIC_NAMES:
            assert float(model_rows[name][metric]) == pytest.approx(
                float(max_rows[name][metric]), rel=1e-9, abs=1e-9
            ), (name, metric)
        assert float(model_rows[name]["inference_ms"]) > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(TNO_NAMES)
    mean_en = np.mean([float(model_rows[n]["EN"]) for n in TNO_NAMES])
    assert summary["means"]["fixture (model)"]["EN"] == pytest.approx(mean_en)
    summary_md = (out / "summary.md").read_text()
    assert "Conventions:" in summary_md and "not measured" in summary_md
    assert (out / "samples.png").is_file()

    # Saved fused PNGs are exactly what the pipeline returns for the same inputs.
    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle
    from ros2_bilevel_fusion.core.pipeline import FusionPipeline

    pipeline = FusionPipeline(create_backend("onnxruntime", load_bundle(fixture_bundle)))
    for name in TNO_NAMES:
        ir = cv2.imread(str(ir_dir / name), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(vi_dir / name), cv2.IMREAD_COLOR)
        expected = pipeline.process(ir, vi)
        saved = cv2.imread(str(out / "fused" / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved, expected.fused_y)
        saved_colour = cv2.imread(str(out / "fused_color" / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved_colour, expected.fused_bgr)

    # Scoring the saved files through the one folder loop gives the same numbers as the run.
    pairs = folder.find_folder_pairs(ir_dir, vi_dir)
    saved_fused = iter([out / "fused" / pair.name for pair in pairs])

    def read_saved(ir_u8, visible_bgr):
        return folder.PairOutput(fused_y=cv2.imread(str(next(saved_fused)), cv2.IMREAD_GRAYSCALE))

    from_files = folder.score_pairs(pairs, read_saved, method="saved")
    assert [row["name"] for row in from_files.rows] == list(TNO_NAMES)
    for row in from_files.rows:
        for metric in metrics.METRIC_NAMES:
            assert row[metric] == float(model_rows[row["name"]][metric]), (row["name"], metric)


def test_folder_mode_detection_and_segmentation_on_msrs(fixture_bundle, shared_data, tmp_path):
    msrs = shared_data / "msrs"
    out = tmp_path / "msrs_report"
    code = evaluate.main(
        [
            "folder",
            "--bundle",
            str(fixture_bundle),
            "--ir",
            str(msrs / "ir"),
            "--vi",
            str(msrs / "vi"),
            "--labels",
            str(msrs / "labels" / "fusion"),
            "--masks",
            str(msrs / "masks"),
            "--mask-map",
            "255:1",
            "--limit",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    detection = summary["detection"]
    assert detection["labelled_images"] == 3
    assert detection["num_ground_truths"] > 0
    # An untrained fixture: a score in [0, 1], not a claim about quality.
    assert 0.0 <= detection["mAP50"] <= 1.0
    # The first three MSRS pairs all have person masks (00001D, 00002D, 00003N).
    segmentation = summary["segmentation"]
    assert segmentation is not None and 0.0 <= segmentation["mIoU"] <= 1.0
    pixels = sum(map(sum, segmentation["confusion"]))
    assert pixels == 3 * 640 * 480
    assert "## Detection" in (out / "summary.md").read_text()


def test_folder_mode_errors_are_messages_not_tracebacks(tmp_path, tno_subset):
    ir_dir, vi_dir = tno_subset
    missing = tmp_path / "no_bundle"
    missing.mkdir()
    code = evaluate.main(
        [
            "folder",
            "--bundle",
            str(missing),
            "--ir",
            str(ir_dir),
            "--vi",
            str(vi_dir),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code = evaluate.main(
        [
            "folder",
            "--baselines",
            "--ir",
            str(empty),
            "--vi",
            str(vi_dir),
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    assert code == 2
    # A corrupt file is skipped and counted; the other pairs are still evaluated.
    broken = tmp_path / "broken_ir"
    shutil.copytree(ir_dir, broken)
    (broken / TNO_NAMES[0]).write_bytes(b"not a png")
    args = ["folder", "--baselines", "--ir", str(broken), "--vi", str(vi_dir)]
    assert evaluate.main([*args, "--out", str(tmp_path / "r3")]) == 0
    summary = json.loads((tmp_path / "r3" / "summary.json").read_text())
    assert summary["skipped"] == [TNO_NAMES[0]] and summary["images"] == len(TNO_NAMES) - 1


def test_mask_map_and_labels() -> None:
    mask = np.array([[0, 255, 7]], dtype=np.uint8)
    labels = folder.mask_to_labels(mask, folder.parse_mask_map("255:1"), num_classes=4)
    assert labels.tolist() == [[0, 1, 255]]  # 7 is no class of a 4-class head: ignored
    with pytest.raises(folder.EvaluationError):
        folder.parse_mask_map("255-1")


def _synthetic_frames(count: int, jitter: bool) -> list[bag_mode.BagFrame]:
    """Synthetic bag frames at 10 Hz, header stamps 2 ms before record times, optional jitter."""
    start = 1_700_000_000_000_000_000
    jitter_ns = [0, 310_000, -270_000, 120_000, -450_000, 80_000] if jitter else [0] * 6
    image = np.zeros((2, 2, 3), np.uint8)
    return [
        bag_mode.BagFrame(
            start + k * 100_000_000 + jitter_ns[k] - 2_000_000,
            start + k * 100_000_000 + jitter_ns[k],
            image,
        )
        for k in range(count)
    ]


@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_published_stamps_are_matched_to_bag_frames(rate) -> None:
    frames = _synthetic_frames(6, jitter=True)
    wall_start = 1_800_000_000_123_456_789
    expected_restamps = bag_mode.expected_restamps_ns(frames, rate)
    restamped = [wall_start + round(e) for e in expected_restamps]
    published = [restamped[1], restamped[4], restamped[5]]
    expected = {restamped[1]: 1, restamped[4]: 4, restamped[5]: 5}
    # Recorder saw every input: exact lookup.
    assert bag_mode.match_published_to_bag(published, restamped, expected_restamps) == expected
    # Recorder missed the first two inputs and one in the middle: alignment search.
    seen = [restamped[2], restamped[3], restamped[5]]
    assert bag_mode.match_published_to_bag(published, seen, expected_restamps) == expected
    # A stamp that belongs to no frame is left out.
    assert bag_mode.match_published_to_bag([wall_start + 7], seen, expected_restamps) == {}


def test_periodic_bag_with_missed_inputs_is_not_guessed() -> None:
    frames = _synthetic_frames(6, jitter=False)
    expected_restamps = bag_mode.expected_restamps_ns(frames, 1.0)
    restamped = [1_800_000_000_000_000_000 + round(e) for e in expected_restamps]
    seen = [restamped[2], restamped[3], restamped[5]]
    assert bag_mode.match_published_to_bag([restamped[4]], seen, expected_restamps) == {}


def test_sidecar_and_detection_json_conversions() -> None:
    truth = bag_mode.sidecar_to_truth([{"class": 2, "cx": 50.0, "cy": 40.0, "w": 20.0, "h": 10.0}])
    assert truth["boxes"].tolist() == [[40.0, 35.0, 60.0, 45.0]] and truth["labels"].tolist() == [2]
    payload = {
        "stamp": {"sec": 1, "nanosec": 2},
        "detections": [
            {
                "class_id": 1,
                "class_name": "bicycle",
                "score": 0.5,
                "bbox": {"x_min": 1.0, "y_min": 2.0, "x_max": 3.0, "y_max": 4.0},
            }
        ],
    }
    entry = bag_mode.detection_json_to_entry(payload)
    assert entry["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert entry["labels"].tolist() == [1] and entry["scores"].tolist() == [0.5]


def test_bag_mode_on_a_tiny_real_bag(fixture_bundle, shared_data, tmp_path) -> None:
    """Node and replayer as processes on a 4-pair MSRS bag with labels (about 15 s)."""
    from ros2_bilevel_fusion.bag.pairs_to_bag import convert

    bag = tmp_path / "msrs_bag"
    msrs = shared_data / "msrs"
    convert(msrs / "ir", msrs / "vi", bag, fps=5.0, limit=4, labels_dir=msrs / "labels" / "fusion")
    out = tmp_path / "bag_report"
    code = evaluate.main(
        ["bag", "--bag", str(bag), "--bundle", str(fixture_bundle), "--out", str(out)]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_pairs_published"] == 4
    # The node may drop pairs (best-effort input QoS on a loaded 2-core machine; counted in
    # its diagnostics), so only "some" is required; every published frame must be traced
    # back to its bag frame.
    assert summary["fused_published"] >= 1
    assert summary["fused_matched_to_inputs"] == summary["fused_published"]
    node = summary["means"]["node (published)"]
    maximum = summary["means"][folder.BASELINE_LABELS["max"]]
    # Fixture fused = max(IR, Y); published as colour and read back as grey: equal within
    # the YCrCb round trip's rounding.
    for metric in ("EN", "SD", "SF", "MI", "VIF", "Qabf"):
        assert node[metric] == pytest.approx(maximum[metric], rel=0.02), metric
    assert summary["latency_ms"]["count"] >= summary["fused_published"]
    assert summary["latency_ms"]["p50"] > 0
    assert summary["detection"] is not None and summary["detection"]["labelled_images"] >= 1
    assert (out / "report.md").is_file() and (out / "latency_hist.png").is_file()
    rows = _read_csv(out / "per_frame.csv")
    assert {row["method"] for row in rows} >= {"node (published)"}


def test_report_helpers() -> None:
    from ros2_bilevel_fusion.evaluation import report

    assert report.format_value(float("nan")) == "n/a"
    assert report.format_value(float("inf")) == "inf"
    assert report.format_value(1.23456) == "1.235"
    assert report.format_value(None) == "-"
    table = report.markdown_table([{"a": 1.0, "b": "x"}, {"a": 2.5}], ["a", "b"], digits=1)
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.0 | x |", "| 2.5 | - |"]
    stats = report.percentiles([1.0, 2.0, 3.0, 4.0])
    assert stats["p50"] == 2.5 and stats["count"] == 4 and stats["max"] == 4.0
    assert math.isnan(report.percentiles([])["p50"])


def test_folder_mode_score_threshold_overrides_the_bundle(fixture_bundle, shared_data, tmp_path):
    msrs = shared_data / "msrs"
    counts = {}
    for threshold in ("0.0", "0.999"):
        out = tmp_path / f"thr_{threshold}"
        code = evaluate.main(
            ["folder", "--bundle", str(fixture_bundle), "--ir", str(msrs / "ir"),
             "--vi", str(msrs / "vi"), "--labels", str(msrs / "labels" / "fusion"),
             "--limit", "2", "--score-threshold", threshold, "--out", str(out)]
        )
        assert code == 0
        detection = json.loads((out / "summary.json").read_text())["detection"]
        counts[threshold] = detection["num_predictions"]
    assert counts["0.0"] > counts["0.999"]


def test_the_folder_loop_takes_any_per_pair_callable(tno_subset) -> None:
    """score_pairs with a plain callable (as training passes its model): max(IR, Y) must score
    exactly as the max baseline; the loop times the call, reports each output and can shrink
    the inputs first."""
    ir_dir, vi_dir = tno_subset
    pairs = folder.find_folder_pairs(ir_dir, vi_dir)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def run_pair(ir_u8, visible_bgr):
        assert ir_u8.ndim == 2 and visible_bgr.ndim == 3 and max(visible_bgr.shape) <= 128
        fused = np.maximum(ir_u8, folder.visible_luma(visible_bgr))
        return folder.PairOutput(fused_y=fused)

    result = folder.score_pairs(
        pairs,
        run_pair,
        method="max via callable",
        with_baselines=True,
        max_side=128,
        on_output=lambda pair, output: seen.append((pair.name, output.fused_y.shape)),
    )
    assert [name for name, _ in seen] == list(TNO_NAMES)
    assert all(max(shape) == 128 for _, shape in seen)
    assert result.images == len(TNO_NAMES) and not result.skipped
    assert set(result.timing) == {"total_ms"} and result.timing["total_ms"]["count"] == 3
    ours = result.means["max via callable"]
    baseline = result.means[folder.BASELINE_LABELS["max"]]
    assert ours == baseline
    assert len(result.samples) == len(TNO_NAMES)


def test_the_folder_loop_scores_detections_against_labels(shared_data) -> None:
    """A callable that returns the ground-truth boxes scores mAP 1; one that returns none, 0."""
    from ros2_bilevel_fusion.core.processing import Detections
    from ros2_bilevel_fusion.evaluation.semantic_metrics import yolo_to_xyxy

    msrs = shared_data / "msrs"
    labels_dir = msrs / "labels" / "fusion"
    pairs = folder.find_folder_pairs(msrs / "ir", msrs / "vi", limit=3)
    classes = ["person", "bicycle", "car"]
    truth_by_stem = iter([labels_dir / f"{pair.stem}.txt" for pair in pairs])

    def perfect(ir_u8, visible_bgr):
        height, width = visible_bgr.shape[:2]
        truth = yolo_to_xyxy(next(truth_by_stem).read_text().splitlines(), width, height)
        detections = Detections(
            truth["boxes"].astype(np.float32),
            np.ones(len(truth["labels"]), np.float32),
            truth["labels"].astype(np.int64),
        )
        return folder.PairOutput(fused_y=folder.visible_luma(visible_bgr), detections=detections)

    def blind(ir_u8, visible_bgr):
        return folder.PairOutput(fused_y=folder.visible_luma(visible_bgr), detections=None)

    scored = folder.score_pairs(pairs, perfect, labels_dir=labels_dir, detection_classes=classes)
    assert scored.detection["labelled_images"] == 3 and scored.detection["num_ground_truths"] > 0
    assert scored.detection["mAP50"] == pytest.approx(1.0)
    missed = folder.score_pairs(pairs, blind, labels_dir=labels_dir, detection_classes=classes)
    assert missed.detection["num_predictions"] == 0 and missed.detection["mAP50"] == 0.0


# ------------------------------------------------------------------ a user's own bag
USER_IR_TOPIC = "/thermal/image_raw"
USER_VISIBLE_TOPIC = "/color/image_raw"


def _write_synthetic_user_bag(path: Path, pairs: int = 4, compressed_visible: bool = False
                              ) -> Path:
    """A synthetic bag as a user's driver records it: mono16 IR on /thermal/image_raw and bgr8
    (or JPEG CompressedImage on /color/image_raw/compressed) visible, 5 Hz, jittered stamps."""
    from ros2_bilevel_fusion.bag import bagio
    from ros2_bilevel_fusion.messages import codec
    from ros2_bilevel_fusion.messages.stamps import ns_to_sec_nanosec

    rng = np.random.default_rng(3)
    height, width = 120, 160
    yy, xx = np.mgrid[0:height, 0:width]
    start_ns = 1_700_000_000_000_000_000
    types = bagio.typestore().types
    with bagio.ImageBagWriter(path) as writer:
        for k in range(pairs):
            stamp = start_ns + k * 200_000_000 + int(rng.integers(0, 3_000_000))
            # 12-bit thermal in a 16-bit container: a warm blob moving over a cool gradient.
            blob = np.exp(-((xx - 40 - 20 * k) ** 2 + (yy - 60) ** 2) / 300.0)
            ir = (1200 + 4 * xx + 2000 * blob + rng.normal(0, 20, (height, width)))
            ir = np.clip(ir, 0, 4095).astype(np.uint16)
            visible = np.zeros((height, width, 3), np.uint8)
            visible[..., 0] = (xx * 255 // width).astype(np.uint8)
            visible[..., 1] = (yy * 255 // height).astype(np.uint8)
            visible[..., 2] = 90
            cv2.rectangle(visible, (20 + 10 * k, 30), (70 + 10 * k, 90), (230, 230, 230), -1)
            writer.write_image(USER_IR_TOPIC, ir, "mono16", stamp, "thermal_optical_frame")
            visible_stamp = stamp + 1_000_000
            if compressed_visible:
                format_text, data = codec.encode_compressed(visible, "bgr8", "jpeg")
                sec, nanosec = ns_to_sec_nanosec(visible_stamp)
                header = types["std_msgs/msg/Header"](
                    stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                    frame_id="color_optical_frame",
                )
                msg = types["sensor_msgs/msg/CompressedImage"](
                    header=header, format=format_text, data=np.frombuffer(data, np.uint8)
                )
                writer.write_message(f"{USER_VISIBLE_TOPIC}/compressed", msg, visible_stamp)
            else:
                writer.write_image(USER_VISIBLE_TOPIC, visible, "bgr8", visible_stamp,
                                   "color_optical_frame")
    return path


def test_bag_mode_on_a_users_topics_with_mono16_ir(fixture_bundle, tmp_path) -> None:
    """A bag recorded as /thermal/image_raw (mono16) + /color/image_raw (bgr8) runs through
    the real node when its topics are named; before, the replay never reached the node."""
    bag = _write_synthetic_user_bag(tmp_path / "synthetic_user_bag")
    out = tmp_path / "report"
    code = evaluate.main([
        "bag", "--bag", str(bag), "--bundle", str(fixture_bundle), "--out", str(out),
        "--ir-topic", USER_IR_TOPIC, "--visible-topic", USER_VISIBLE_TOPIC,
    ])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bag_topics"] == {
        "ir": {"topic": USER_IR_TOPIC, "type": "sensor_msgs/msg/Image"},
        "visible": {"topic": USER_VISIBLE_TOPIC, "type": "sensor_msgs/msg/Image"},
    }
    assert summary["input_pairs_published"] == 4
    assert summary["fused_published"] >= 1
    assert summary["fused_matched_to_inputs"] == summary["fused_published"]


def test_bag_mode_reads_a_compressed_visible_topic(fixture_bundle, tmp_path) -> None:
    """CompressedImage (JPEG) visible on /color/image_raw/compressed, named as the image topic
    (image_transport style): replayed onto the node's visible/image/compressed input."""
    bag = _write_synthetic_user_bag(tmp_path / "synthetic_compressed_bag", compressed_visible=True)
    out = tmp_path / "report"
    code = evaluate.main([
        "bag", "--bag", str(bag), "--bundle", str(fixture_bundle), "--out", str(out),
        "--ir-topic", USER_IR_TOPIC, "--visible-topic", USER_VISIBLE_TOPIC,
    ])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bag_topics"]["visible"] == {
        "topic": f"{USER_VISIBLE_TOPIC}/compressed", "type": "sensor_msgs/msg/CompressedImage",
    }
    assert summary["fused_published"] >= 1
    assert summary["fused_matched_to_inputs"] == summary["fused_published"]


def test_bag_without_the_topics_fails_fast_naming_its_topics(fixture_bundle, tmp_path, caplog
                                                             ) -> None:
    """Before: 40 s of a live node fusing 0 pairs, then `none of the topics ['/visible/image']
    are in the bag`. Now the topics are checked before anything starts."""
    import time

    bag = _write_synthetic_user_bag(tmp_path / "synthetic_user_bag", pairs=2)
    started = time.monotonic()
    with caplog.at_level("ERROR"):
        code = evaluate.main(["bag", "--bag", str(bag), "--bundle", str(fixture_bundle),
                              "--out", str(tmp_path / "report")])
    assert time.monotonic() - started < 5.0
    assert code == 2
    message = caplog.text
    assert "ir topic /ir/image is not in the bag (pass --ir-topic)" in message
    assert "visible topic /visible/image is not in the bag (pass --visible-topic)" in message
    assert f"{USER_IR_TOPIC} (sensor_msgs/msg/Image, 2 msgs)" in message
    assert f"{USER_VISIBLE_TOPIC} (sensor_msgs/msg/Image, 2 msgs)" in message
    assert not (tmp_path / "report" / "run" / "node.log").exists()  # no node was started


def test_input_topics_are_checked_by_type(tmp_path) -> None:
    from ros2_bilevel_fusion.bag import bagio

    bag = _write_synthetic_user_bag(tmp_path / "synthetic_user_bag", pairs=1,
                                    compressed_visible=True)
    found = bagio.find_input_topics(bag, USER_IR_TOPIC, USER_VISIBLE_TOPIC)
    assert found["ir"] == bagio.InputTopic(USER_IR_TOPIC, "sensor_msgs/msg/Image")
    assert found["visible"].compressed
    assert found["visible"].live_topic("/visible/image") == "/visible/image/compressed"
    assert found["ir"].live_topic("/ir/image") == "/ir/image"
    # The compressed topic named directly is the same stream.
    direct = bagio.find_input_topics(bag, USER_IR_TOPIC, f"{USER_VISIBLE_TOPIC}/compressed")
    assert direct == found
    with pytest.raises(bagio.BagError, match="visible topic /nope is not in the bag"):
        bagio.find_input_topics(bag, USER_IR_TOPIC, "/nope")
    # Frames read from a compressed topic decode like the node decodes them.
    frames = bag_mode.read_bag_frames(bag, f"{USER_VISIBLE_TOPIC}/compressed", grey=False)
    assert len(frames) == 1 and frames[0].image.shape == (120, 160, 3)


# --------------------------------------------------------------------------- detector settings,
# COCO files and strict JSON

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"


def _rescore_with_pycocotools(out: Path, max_dets: int) -> dict[str, float]:
    """mAP@0.5, mAP@0.5:0.95 and person AP@0.5 from the two written files, by pycocotools alone
    (COCOeval's own summarize formula: mean of the precision entries > -1)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(out / "ground_truth_coco.json"))
        detections = truth.loadRes(str(out / "detections_coco.json"))
        evaluator = COCOeval(truth, detections, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area all, last maxDets
    person = truth.getCatIds(catNms=["person"])[0]
    at_50 = precision[0]  # iouThrs[0] == 0.5
    person_50 = at_50[:, evaluator.params.catIds.index(person)]
    return {
        "mAP50": float(evaluator.stats[1]),  # summarize's AP@0.5 at maxDets[2]
        "mAP50_95": float(np.mean(precision[precision > -1])),
        "person": float(np.mean(person_50[person_50 > -1])),
    }


def test_nms_iou_and_max_detections_override_the_bundle_and_the_coco_files_rescore(
    shared_data, tmp_path
) -> None:
    """The shipped bundle on 6 real msrs_det:test pairs at score threshold 0.01: the cap decides
    how many boxes each image keeps; the written COCO files give the reported mAP in
    pycocotools; without the flags the summary records the bundle's model.yaml values."""
    if not (DEFAULT_BUNDLE / "model.yaml").is_file():
        pytest.skip("models/default is not present")
    from ros2_bilevel_fusion.core.bundle import load_bundle

    common = ["folder", "--bundle", str(DEFAULT_BUNDLE), "--split", "msrs_det:test",
              "--data-root", str(shared_data), "--limit", "6", "--score-threshold", "0.0"]
    out = tmp_path / "override"
    assert evaluate.main([*common, "--nms-iou", "0.6", "--max-detections", "150",
                          "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    post = summary["postprocess"]
    assert (post["score_threshold"], post["nms_iou"], post["max_detections"]) == (0.0, 0.6, 150)
    assert post["nms_iou_source"] == post["max_detections_source"] == "command line"
    detection = summary["detection"]
    assert detection["max_dets"] == 150 and detection["labelled_images"] == 6
    assert summary["files"] == {"ground_truth_coco": "ground_truth_coco.json",
                                "detections_coco": "detections_coco.json"}

    results = json.loads((out / "detections_coco.json").read_text())
    per_image = np.bincount([r["image_id"] for r in results])[1:]
    # At 0.0 the model has more than 100 candidates per image after NMS: the cap keeps 150.
    assert per_image.max() == 150 and per_image.min() > 100
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    truth = json.loads((out / "ground_truth_coco.json").read_text())
    assert [c["name"] for c in truth["categories"]] == ["person", "bicycle", "car"]
    assert len(truth["images"]) == 6 and len(truth["annotations"]) == detection["num_ground_truths"]
    assert all(image["width"] == 640 and image["height"] == 480 for image in truth["images"])
    assert len(results) == detection["num_predictions"] == int(per_image.sum())

    rescored = _rescore_with_pycocotools(out, detection["max_dets"])
    assert rescored["mAP50"] == pytest.approx(detection["mAP50"], abs=1e-12)
    assert rescored["mAP50_95"] == pytest.approx(detection["mAP50_95"], abs=1e-12)
    assert rescored["person"] == pytest.approx(detection["per_class_AP50"]["person"], abs=1e-12)
    assert 0.0 < detection["mAP50"] <= 1.0

    default_out = tmp_path / "bundle_values"
    assert evaluate.main([*common, "--out", str(default_out)]) == 0
    post = json.loads((default_out / "summary.json").read_text())["postprocess"]
    spec = load_bundle(DEFAULT_BUNDLE).detection
    assert post["nms_iou"] == spec.nms_iou and post["max_detections"] == spec.max_detections
    assert post["nms_iou_source"] == post["max_detections_source"] == "bundle"
    default_results = json.loads((default_out / "detections_coco.json").read_text())
    assert max(np.bincount([r["image_id"] for r in default_results])) <= spec.max_detections


def test_out_of_range_detector_flags_are_messages(fixture_bundle, shared_data, tmp_path) -> None:
    for flags in (["--nms-iou", "1.5"], ["--max-detections", "0"]):
        code = evaluate.main(["folder", "--bundle", str(fixture_bundle), "--split",
                              "msrs_det:test", "--data-root", str(shared_data), "--limit", "1",
                              *flags, "--out", str(tmp_path / "bad")])
        assert code == 2


def test_labels_dir_with_annotation_subfolders_is_merged(fixture_bundle, shared_data, tmp_path):
    """--labels msrs_det/labels (fusion/ infrared/ visible/) scores against the merged truth,
    exactly the boxes --split uses; --labels msrs_det/labels/fusion against that one file."""
    from ros2_bilevel_fusion.evaluation.ground_truth import labels_truth, merged_truth, yolo_truth

    labels = shared_data / "msrs_det" / "labels"
    merged, fusion = labels_truth(labels), labels_truth(labels / "fusion")
    reference = merged_truth(labels)
    assert merged.description == reference.description
    assert fusion.description == yolo_truth(labels / "fusion").description
    stems = sorted(p.stem for p in (labels / "fusion").glob("*.txt"))[:40]
    more = 0
    for stem in stems:
        got, want = merged(stem, 640, 480), reference(stem, 640, 480)
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        more += len(got["boxes"]) > len(fusion(stem, 640, 480)["boxes"])
    assert more > 0  # the merge adds infrared/visible-only objects on some of these pairs

    counts = {}
    for name, labels_arg in (("merged", labels), ("fusion", labels / "fusion")):
        out = tmp_path / name
        assert evaluate.main(["folder", "--bundle", str(fixture_bundle), "--split",
                              "msrs_det:test", "--data-root", str(shared_data), "--limit", "8",
                              "--labels", str(labels_arg), "--out", str(out)]) == 0
        detection = json.loads((out / "summary.json").read_text())["detection"]
        counts[name] = (detection["ground_truth"], detection["num_ground_truths"])
    split_out = tmp_path / "split"
    assert evaluate.main(["folder", "--bundle", str(fixture_bundle), "--split", "msrs_det:test",
                          "--data-root", str(shared_data), "--limit", "8",
                          "--out", str(split_out)]) == 0
    split_detection = json.loads((split_out / "summary.json").read_text())["detection"]
    assert counts["merged"][0].startswith("merged")
    assert counts["merged"][1] == split_detection["num_ground_truths"] > counts["fusion"][1]


def _raise_on_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def test_reports_are_strict_json_with_nan_as_null(tmp_path) -> None:
    """Honest synthetic result: a summary with a NaN metric, an infinite timing and numpy
    values is written as null / numbers, and a strict parser reads every file."""
    from ros2_bilevel_fusion.evaluation import report
    from ros2_bilevel_fusion.messages import strict_json

    result = folder.FolderResult(model_name="synthetic", pairs=1)
    result.means = {"synthetic": {"EN": float("nan"), "SD": np.float32(2.5), "SF": 1.0}}
    result.timing = {"total_ms": report.percentiles([])}  # nan percentiles of no frames
    result.detection = {
        "mAP50": float("nan"), "mAP50_95": np.float64("inf"), "max_dets": 100,
        "per_class_AP50": {"person": float("nan")}, "labelled_images": 0,
        "num_ground_truths": 0, "num_predictions": 0, "ground_truth": "synthetic",
    }
    result.coco_ground_truth = {"images": [], "categories": [], "annotations": []}
    result.coco_detections = []
    report.write_folder_report(tmp_path, result, None)
    for name in ("summary.json", "ground_truth_coco.json", "detections_coco.json"):
        text = (tmp_path / name).read_text()
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=_raise_on_constant)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["means"]["synthetic"] == {"EN": None, "SD": 2.5, "SF": 1.0}
    assert summary["detection"]["mAP50"] is None and summary["detection"]["mAP50_95"] is None
    assert summary["timing"]["total_ms"]["p50"] is None
    assert strict_json.dumps([np.int64(3), (1.5, -math.inf), {1: np.bool_(True)}]) == (
        '[3, [1.5, null], {"1": true}]'
    )


def test_folder_mode_max_input_pixels_shrinks_the_network_input_not_the_outputs(
    fixture_bundle, tno_subset, tmp_path
):
    """--max-input-pixels is the node's processing-size knob: the fused PNGs keep the visible
    size, the report records the value, and the fused image differs from the full-size run
    (REAL TNO pairs, the fixture bundle)."""
    ir_dir, vi_dir = tno_subset
    outputs = {}
    for label, extra in (("full", []), ("small", ["--max-input-pixels", "20000"])):
        out = tmp_path / label
        code = evaluate.main(["folder", "--bundle", str(fixture_bundle), "--ir", str(ir_dir),
                              "--vi", str(vi_dir), "--out", str(out), "--save-fused", *extra])
        assert code == 0
        outputs[label] = out
    summary = json.loads((outputs["small"] / "summary.json").read_text())
    assert summary["postprocess"]["max_input_pixels"] == 20000
    full_png = sorted((outputs["full"] / "fused").glob("*.png"))
    small_png = sorted((outputs["small"] / "fused").glob("*.png"))
    assert [p.name for p in full_png] == [p.name for p in small_png] and full_png
    for a, b in zip(full_png, small_png, strict=True):
        full, small = cv2.imread(str(a)), cv2.imread(str(b))
        visible = cv2.imread(str(vi_dir / a.name.replace("_fused", "")))
        assert full.shape == small.shape
        if visible is not None:
            assert small.shape[:2] == visible.shape[:2]
        assert not np.array_equal(full, small)  # the network really ran smaller
    code = evaluate.main(["folder", "--bundle", str(fixture_bundle), "--ir", str(ir_dir),
                          "--vi", str(vi_dir), "--out", str(tmp_path / "bad"),
                          "--max-input-pixels", "-1"])
    assert code != 0


def test_folder_mode_fused_stretch_off_bundle_and_percentiles(fixture_bundle, tno_subset, tmp_path):
    """--fused-stretch: the fixture bundle has none (bundle == off); min-max raises SD on real
    TNO pairs and is recorded in the report; a bad spelling is a message."""
    ir_dir, vi_dir = tno_subset
    stds, used = {}, {}
    for choice in ("bundle", "off", "0:100"):
        out = tmp_path / choice.replace(":", "-")
        code = evaluate.main(["folder", "--bundle", str(fixture_bundle), "--ir", str(ir_dir),
                              "--vi", str(vi_dir), "--limit", "2", "--fused-stretch", choice,
                              "--out", str(out)])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        model = next(k for k in summary["means"] if "(model)" in k)
        stds[choice] = summary["means"][model]["SD"]
        used[choice] = summary["postprocess"]["fused_stretch"]
    assert used == {"bundle": "off", "off": "off", "0:100": "0:100 (max gain 4, min std 0)"}
    assert stds["bundle"] == stds["off"] < stds["0:100"]
    code = evaluate.main(["folder", "--bundle", str(fixture_bundle), "--ir", str(ir_dir),
                          "--vi", str(vi_dir), "--limit", "1", "--fused-stretch", "99:1",
                          "--out", str(tmp_path / "bad")])
    assert code == 2
