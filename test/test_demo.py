"""The demo end to end: sample bag -> live fusion node (own process) -> recorded outputs -> report.

Uses the shipped models/default bundle when it exists, else the untrained fixture bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from ros2_bilevel_fusion.bag import live_run, recorder
from ros2_bilevel_fusion.bag.bagio import BagError
from ros2_bilevel_fusion.core import resources
from ros2_bilevel_fusion.core.bundle import MODEL_YAML
from ros2_bilevel_fusion.evaluation import demo
from ros2_bilevel_fusion.messages import stamps
from ros2_bilevel_fusion.messages.detections import DetectionsJson


@pytest.fixture(scope="module")
def demo_bundle(fixture_bundle: Path) -> Path:
    default = resources.default_bundle_path()
    return default if (default / MODEL_YAML).is_file() else fixture_bundle


@pytest.fixture(scope="module")
def demo_run(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    # A relative --out, as `make demo` passes it: the node runs in another working directory,
    # so every path handed to it must be absolute (this once broke the demo on a fresh clone).
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out.parent)
        # About 3 s of input (5 passes of the 6-pair sample) keeps the suite fast.
        code = demo.main(["--out", out.name, "--bundle", str(demo_bundle), "--duration", "3",
                          "--timeout", "150"])
    assert code == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    return out


def test_demo_writes_report_images_and_detections(demo_run: Path, demo_bundle: Path) -> None:
    summary = json.loads((demo_run / "summary.json").read_text())
    loops, _ = demo.loops_for_duration(resources.sample_bag_path(), 3.0)
    assert summary["loops"] == loops
    assert summary["input_pairs_published"] == 6 * loops
    assert 0 < summary["pairs_out"] <= summary["input_pairs_published"]
    # Every input pair is either fused or counted as dropped by the node.
    dropped = sum(summary["drops_by_reason"].values())
    assert summary["pairs_out"] + dropped >= summary["input_pairs_published"] - 1
    assert summary["latency_ms_p50"] > 0
    assert summary["inference_ms_p50"] is not None and summary["inference_ms_p50"] > 0
    # live_run stops the node with SIGINT: it must shut down cleanly (exit 0), not need the
    # SIGTERM/SIGKILL fallbacks (negative codes) or die with an error.
    assert summary["node_exit_code"] == 0, (demo_run / "node.log").read_text()[-2000:]
    topics = recorder.output_topics()
    assert summary["records"][topics["fused"]] == summary["pairs_out"]

    fused = sorted((demo_run / "fused").glob("*.png"))
    assert len(fused) == summary["pairs_out"] == summary["pngs"]["fused"]
    for folder in ("segmentation", "debug"):
        assert len(list((demo_run / folder).glob("*.png"))) == summary["pngs"][folder]
    # PNG names are <index>_<stamp_ns>: the recorded order is the stamp order.
    fused_stamps = [int(path.stem.split("_")[1]) for path in fused]
    assert fused_stamps == sorted(set(fused_stamps))
    image = cv2.imread(str(fused[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (480, 640)
    assert any((demo_run / "debug").glob("*.png"))
    assert any((demo_run / "segmentation").glob("*.png"))

    overview = cv2.imread(str(demo_run / "overview.png"))
    assert overview.shape[1] == 4 * 320 and overview.shape[0] >= 240

    detections = json.loads((demo_run / "detections.json").read_text())
    assert len(detections) > 0
    assert len(detections) == summary["records"][topics["detections/json"]]
    for document in detections:
        # The recorded stamp is the one inside the JSON, and belongs to a fused image.
        assert document["stamp_ns"] == stamps.dict_to_ns(document["stamp"]) > 0
        assert document["stamp_ns"] in fused_stamps
        parsed = DetectionsJson.from_dict(document)
        assert parsed.image_size == (640, 480) and parsed.stamp_ns == document["stamp_ns"]
    boxes = sum(len(d["detections"]) for d in detections)

    report = (demo_run / "report.md").read_text()
    for needle in ("input pairs published", "latency", "inference", "drops by reason",
                   summary["backend"]):
        assert needle in report
    assert f"| fused images received | {summary['pairs_out']} |" in report
    assert f"| input pairs published | {summary['input_pairs_published']} |" in report
    assert f"| detection messages / boxes | {len(detections)} / {boxes} |" in report
    assert (f"| latency input stamp -> fused received, p50 / p95 | "
            f"{summary['latency_ms_p50']:.1f} ms / {summary['latency_ms_p95']:.1f} ms |") in report
    drops = ", ".join(f"{k} {v}" for k, v in sorted(summary["drops_by_reason"].items()))
    assert f"| drops by reason (node diagnostics) | {drops or 'none'} |" in report


def test_demo_fails_clearly_on_missing_bundle(tmp_path: Path) -> None:
    code = demo.main(["--out", str(tmp_path / "out"), "--bundle", str(tmp_path / "nothing")])
    assert code == 1
    assert not (tmp_path / "out" / "report.md").exists()


def test_demo_on_a_bag_without_its_topics_fails_fast_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sample bag has /ir/image and /visible/image; other names fail before any process
    starts, and the message lists what the bag has."""
    import time

    started = time.monotonic()
    with caplog.at_level("ERROR"):
        code = demo.main(["--out", str(tmp_path / "out"), "--ir-topic", "/thermal/image_raw",
                          "--visible-topic", "/color/image_raw"])
    assert code == 1 and time.monotonic() - started < 5.0
    assert "ir topic /thermal/image_raw is not in the bag (pass --ir-topic)" in caplog.text
    assert "/ir/image (sensor_msgs/msg/Image" in caplog.text
    assert "/visible/image (sensor_msgs/msg/Image" in caplog.text
    assert not (tmp_path / "out" / "node.log").exists()
    # The live run checks the same before starting its node.
    with pytest.raises(live_run.LiveRunError, match="visible topic /color/image_raw"):
        live_run.run_bag_through_node(resources.sample_bag_path(),
                                      visible_topic="/color/image_raw", out_dir=tmp_path / "lr")
    assert not (tmp_path / "lr" / "node.log").exists()


def test_live_run_rejects_non_bag(tmp_path: Path) -> None:
    with pytest.raises(live_run.LiveRunError):
        live_run.run_bag_through_node(tmp_path)


def test_resolve_bag_accepts_bag_or_folder_of_one(tmp_path: Path) -> None:
    sample = resources.sample_bag_path()
    assert demo.resolve_bag(sample) == sample
    assert demo.resolve_bag(sample.parent) == sample
    with pytest.raises(BagError):
        demo.resolve_bag(tmp_path)


def test_loops_for_duration_on_sample() -> None:
    loops, pass_s = demo.loops_for_duration(resources.sample_bag_path(), 10.0)
    assert abs(pass_s - 0.6) < 0.01  # six frames at 10 fps
    assert loops == 17


def test_diagnostics_summary_and_latency_helpers(tmp_path: Path) -> None:
    status = {"level": 0, "drops.superseded": "4", "drops.pairing_unmatched_ir": "1",
              "drops_total": "5", "inference_ms_p50": "12.50", "inference_ms_p95": "n/a"}
    drops, p50, p95 = live_run.summarise_diagnostics(status)
    assert drops == {"superseded": 4, "pairing_unmatched_ir": 1}
    assert (p50, p95) == (12.5, None)
    assert live_run.node_status({"/fusion_node: fusion": status, "other": {}}) is status
    records = [recorder.Record(stamp_ns=1_000_000_000 + i * 100_000_000,
                               receive_ns=1_050_000_000 + i * 100_000_000) for i in range(5)]
    assert live_run.latencies_ms(records) == pytest.approx([50.0] * 5)
    assert live_run.throughput_per_s(records) == pytest.approx(10.0)
    assert live_run.throughput_per_s(records[:1]) == 0.0
    params = live_run.write_params_file(tmp_path / "p.yaml", {"qos": "reliable"})
    assert "ros__parameters" in params.read_text()


def test_recorder_converts_diagnostics_message() -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    message = DiagnosticArray()
    status = DiagnosticStatus(name="fusion_node: fusion", message="fusing")
    status.level = DiagnosticStatus.WARN
    status.values = [KeyValue(key="drops.superseded", value="3")]
    message.status = [status]
    converted = recorder.diagnostics_to_dict(message)
    assert converted == {"fusion_node: fusion": {"level": 1, "message": "fusing",
                                                 "drops.superseded": "3"}}
    topics = recorder.output_topics()
    assert topics["fused"] == "/fusion_node/fused"
    assert topics["detections/json"] == "/fusion_node/detections/json"
    assert recorder.output_topics(namespace="/robot")["fused"] == "/robot/fusion_node/fused"


def test_recorder_matches_best_effort_and_reliable_publishers() -> None:
    """A best-effort fused publisher and a reliable JSON one are both recorded (in-process)."""
    import threading
    import time

    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from ros2_bilevel_fusion.bag.bagio import make_rclpy_image

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        fake = rclpy.create_node("fusion_node", context=context)  # stands in for the node
        fused_pub = fake.create_publisher(
            type(make_rclpy_image(np.zeros((1, 1), np.uint8), "mono8", 0, "")),
            "~/fused", QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        json_pub = fake.create_publisher(String, "~/detections/json", 10)
        listener = rclpy.create_node("recorder_test", context=context)
        rec = recorder.OutputRecorder(listener, poll_period_s=0.05)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        topics = recorder.output_topics()
        deadline = time.monotonic() + 20
        while (rec.matched_publishers(topics["fused"]) < 1
               or rec.matched_publishers(topics["detections/json"]) < 1):
            assert time.monotonic() < deadline, "recorder never matched the publishers"
            time.sleep(0.05)
        while fused_pub.get_subscription_count() < 1 or json_pub.get_subscription_count() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rng = np.random.default_rng(3)
        frames = [rng.integers(0, 255, (4, 6, 3), dtype=np.uint8) for _ in range(3)]  # synthetic
        for index, frame in enumerate(frames):
            stamp = 1_000_000_000 * (index + 1)
            fused_pub.publish(make_rclpy_image(frame, "bgr8", stamp, "visible"))
            json_pub.publish(String(data=json.dumps(
                {"stamp": {"sec": index + 1, "nanosec": 0}, "detections": []})))
            time.sleep(0.05)
        while rec.count(topics["fused"]) < 3 or rec.count(topics["detections/json"]) < 3:
            assert time.monotonic() < deadline, rec.snapshot()
            time.sleep(0.05)
        records = rec.snapshot()
        fused = records[topics["fused"]]
        assert [r.stamp_ns for r in fused] == [1_000_000_000, 2_000_000_000, 3_000_000_000]
        for record, frame in zip(fused, frames, strict=True):
            assert np.array_equal(record.payload, frame)
        assert [r.stamp_ns for r in records[topics["detections/json"]]] == [
            1_000_000_000, 2_000_000_000, 3_000_000_000]
        rec.close()
        executor.shutdown()
        spinner.join(timeout=5)
    finally:
        rclpy.try_shutdown(context=context)
