"""fusion_node end to end: real rclpy + Fast DDS, the node in its own process, the fixture bundle.

The test process publishes synthetic IR (mono8) + visible (bgr8) pairs and checks every output
topic: count, encoding, size, stamp and frame_id copied from the visible input, content.
The helpers (node process, test rig, synthetic pairs) are in node_helpers.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_helpers import (  # noqa: E402
    HEIGHT,
    OUTPUT_TOPICS,
    VISIBLE_FRAME,
    WIDTH,
    fixture_params,
    make_pair,
    node_session,
    read_log,
    stamp_ns,
    synthetic_ir,
    synthetic_visible,
)
from std_msgs.msg import String  # noqa: E402

from ros2_bilevel_fusion.messages.codec import msg_to_array  # noqa: E402


@pytest.fixture(scope="module")
def running_node(fixture_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    log_path = tmp_path_factory.mktemp("node_log") / "fusion_node.log"
    with node_session(
        "/it_good",
        *fixture_params(
            fixture_bundle,
            "qos:=reliable",
            "qos_depth:=50",  # no silent DDS history drops if this process stalls under load
            "diagnostics_period:=0.5",
        ),
        log_path=log_path,
    ) as (harness, process):
        try:
            harness.wait_for_node_ready()
        except AssertionError:
            print(read_log(log_path))
            raise
        yield harness, process


PAIRS = 12


BASE_NS = 1_700_000_000 * 10**9


def pair_index(stamp: int) -> int:
    return (stamp - BASE_NS) // 100_000_000


def json_stamp(msg: String) -> int:
    stamp = json.loads(msg.data)["stamp"]
    return stamp["sec"] * 10**9 + stamp["nanosec"]


def test_every_output_topic_for_every_pair(running_node) -> None:
    harness, process = running_node
    sent = [make_pair(i, BASE_NS) for i in range(PAIRS)]
    for ir_msg, visible_msg in sent:
        harness.publish_pair(ir_msg, visible_msg)
        time.sleep(0.1)  # 10 Hz: the fixture on a 90x124 image keeps up by far
    visible_stamps = [stamp_ns(v.header) for _, v in sent]

    def superseded() -> int:
        return harness.drops("superseded")

    def have_all() -> bool:
        # Only the documented drop is tolerated: a pair superseded by a newer one while the
        # inference thread was busy (possible on a loaded CI machine, counted in diagnostics).
        return all(len(harness.received.get(t)) + superseded() >= PAIRS for t in OUTPUT_TOPICS)

    harness.wait_for(have_all, 30.0, f"{PAIRS} messages on every output topic")
    assert process.poll() is None
    assert superseded() <= PAIRS // 4, "the node should keep up with 10 Hz on tiny images"

    fused_stamps = [stamp_ns(m.header) for m in harness.received.get("fused")]
    assert len(fused_stamps) >= PAIRS - superseded()
    # Output stamps are visible input stamps, in order, none invented or repeated.
    assert fused_stamps == [s for s in visible_stamps if s in set(fused_stamps)]
    for topic in OUTPUT_TOPICS:
        messages = harness.received.get(topic)
        if topic == "detections/json":
            payloads = [json.loads(m.data) for m in messages]
            stamps = [json_stamp(m) for m in messages]
            assert all(p["frame_id"] == VISIBLE_FRAME for p in payloads)
            assert all(p["image_size"] == [WIDTH, HEIGHT] for p in payloads)
        else:
            stamps = [stamp_ns(m.header) for m in messages]
            assert all(m.header.frame_id == VISIBLE_FRAME for m in messages), topic
            assert all((m.height, m.width) == (HEIGHT, WIDTH) for m in messages), topic
        assert stamps == fused_stamps, f"{topic}: one message per processed pair, same stamp"

    encodings = {
        "fused": "bgr8",
        "segmentation": "mono8",
        "segmentation/color": "bgr8",
        "debug_image": "bgr8",
    }
    for topic, encoding in encodings.items():
        assert {m.encoding for m in harness.received.get(topic)} == {encoding}, topic


def test_fused_content_follows_both_inputs(running_node) -> None:
    harness, _ = running_node
    fused_msgs = harness.received.get("fused")
    if not fused_msgs:
        pytest.skip("needs the messages of test_every_output_topic_for_every_pair")
    for msg in fused_msgs:
        index = pair_index(stamp_ns(msg.header))
        fused = msg_to_array(msg)
        fused_y = cv2.cvtColor(fused, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(int)
        ir = synthetic_ir(index).astype(int)
        visible_y = cv2.cvtColor(synthetic_visible(index), cv2.COLOR_BGR2YCrCb)[:, :, 0]
        # The fixture fuses with max(ir, Y): the fused luma is at least each input's (to within
        # the rounding of two colour conversions).
        assert (fused_y >= ir - 3).mean() > 0.99
        assert (fused_y >= visible_y.astype(int) - 3).mean() > 0.99
        assert abs(fused_y[32:64, 16 + 4 * index : 48 + 4 * index].mean() - 250) < 6


def test_detections_find_the_hot_square(running_node) -> None:
    harness, _ = running_node
    messages = harness.received.get("detections/json")
    if not messages:
        pytest.skip("needs the messages of test_every_output_topic_for_every_pair")
    for msg in messages:
        index = pair_index(json_stamp(msg))
        payload = json.loads(msg.data)
        hits = [d for d in payload["detections"] if d["class_name"] == "bicycle"]
        assert hits, f"pair {index}: the fixture's IR-hot class must fire on the hot square"
        cx = max(hits, key=lambda d: d["score"])["bbox"]["center_x"]
        assert 16 + 4 * index - 8 <= cx <= 48 + 4 * index + 8


def test_segmentation_labels_are_fixture_classes(running_node) -> None:
    harness, _ = running_node
    messages = harness.received.get("segmentation")
    if not messages:
        pytest.skip("needs the messages of test_every_output_topic_for_every_pair")
    labels = msg_to_array(messages[0])
    assert labels.max() < 4
    assert labels[40, 30] != 0  # the hot square is not background


def test_diagnostics_report_counts_and_backend(running_node) -> None:
    harness, _ = running_node
    harness.wait_for(
        lambda: int(harness.status().get("processed", 0)) >= harness.fused_count() > 0,
        10.0,
        "diagnostics to count the processed pairs",
    )
    status = harness.node_status()
    assert status["backend"].startswith("onnxruntime")
    assert status["model"] == "fixture"
    assert int(status["pairs"]) >= PAIRS
    assert int(status["processed"]) >= PAIRS - int(status.get("drops.superseded", 0))
    assert "inference_ms_p50" in status
    # The synthetic stamps are from 2023, not from the node's clock: no garbage latency.
    assert "latency_ms_p95" not in status and status["latency_ms"].startswith("n/a (input stamps")
    assert status["level"] == "0"


def test_live_parameter_change_and_rejection(running_node) -> None:
    from rclpy.parameter import Parameter

    harness, _ = running_node
    harness.parameter_client()

    rejected = harness.set_parameters(Parameter("score_threshold", value=1.5))
    assert not rejected[0].successful and rejected[0].reason
    rejected = harness.set_parameters(
        Parameter("agc_low_percentile", value=99.5),
    )
    assert not rejected[0].successful and "agc_high_percentile" in rejected[0].reason
    rejected = harness.set_parameters(
        Parameter("qos", value="reliable")
    )  # read-only: needs a restart
    assert not rejected[0].successful
    accepted = harness.set_parameters(Parameter("colour_output", value=False))
    assert accepted[0].successful
    before = harness.fused_count()
    ir_msg, visible_msg = make_pair(0, 1_800_000_000 * 10**9)
    harness.publish_pair(ir_msg, visible_msg)
    harness.wait_for(lambda: harness.fused_count() > before, 10.0, "a fused image")
    assert harness.received.get("fused")[-1].encoding == "mono8"
    harness.set_parameters(Parameter("colour_output", value=True))


def test_raising_score_threshold_live_drops_the_weaker_detections(running_node) -> None:
    """``ros2 param set score_threshold`` through the parameter service: the next frame keeps
    only the detections above it; -1 gives the bundle's threshold back."""
    from rclpy.parameter import Parameter

    harness, _ = running_node
    harness.parameter_client()
    # IR brightening left to right: the fixture's IR class scores every strength in one frame.
    ramp_ir = np.tile(np.linspace(0, 255, WIDTH).astype(np.uint8), (HEIGHT, 1))
    base_ns = 1_900_000_000 * 10**9

    def set_threshold(value: float) -> None:
        assert harness.set_parameters(Parameter("score_threshold", value=value))[0].successful

    def scores_of_frame(index: int) -> list[float]:
        ir_msg, visible_msg = make_pair(index, base_ns, ir=ramp_ir)
        wanted = stamp_ns(visible_msg.header)
        harness.publish_pair(ir_msg, visible_msg)

        def reply() -> list[String]:
            return [m for m in harness.received.get("detections/json") if json_stamp(m) == wanted]

        harness.wait_for(lambda: bool(reply()), 15.0, f"detections of frame {index}")
        return sorted(d["score"] for d in json.loads(reply()[0].data)["detections"])

    at_bundle_threshold = scores_of_frame(0)
    assert min(at_bundle_threshold) > 0.3  # the fixture bundle's model.yaml threshold
    # Halfway between two distinct scores of the frame: no detection sits on the threshold.
    levels = sorted(set(at_bundle_threshold))
    assert len(levels) >= 2, at_bundle_threshold
    middle = len(levels) // 2
    raised = (levels[middle - 1] + levels[middle]) / 2
    set_threshold(raised)
    try:
        at_raised = scores_of_frame(1)
    finally:
        set_threshold(-1.0)
    assert at_raised == [s for s in at_bundle_threshold if s > raised]
    assert 0 < len(at_raised) < len(at_bundle_threshold)
    assert scores_of_frame(2) == at_bundle_threshold


def test_sim_time_without_clock_still_serves_and_reports(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """use_sim_time with no /clock publisher: diagnostics run on the steady clock, outputs keep
    the input stamps, latency is reported as n/a. Also the default input QoS (auto)."""
    log_path = tmp_path / "fusion_node.log"
    with node_session(
        "/it_sim",
        *fixture_params(fixture_bundle, "use_sim_time:=true", "diagnostics_period:=0.3"),
        log_path=log_path,
        log_tail=3000,
    ) as (harness, _):
        harness.wait_for_node_ready()
        sent = [make_pair(i, 5 * 10**9) for i in range(3)]  # sim time: 5 s after start
        for ir_msg, visible_msg in sent:
            harness.publish_pair(ir_msg, visible_msg)
            time.sleep(0.1)
        harness.wait_for(lambda: harness.fused_count() >= 1, 20.0, "fused image")
        stamps = {stamp_ns(v.header) for _, v in sent}
        assert {stamp_ns(m.header) for m in harness.received.get("fused")} <= stamps
        harness.wait_for(
            lambda: int(harness.status().get("processed", 0)) >= 1,
            10.0,
            "diagnostics under sim time",
        )
        status = harness.node_status()
        assert status["latency_ms"].startswith("n/a") and "latency_ms_p50" not in status
        assert status["qos"].startswith("auto")


def test_fused_stretch_from_the_bundle_and_its_parameter(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """A bundle with ``fused_stretch: 0:100`` publishes a dim pair's fused image over the full
    8-bit range; ``fused_stretch:=false`` (live) publishes the network's narrower output."""
    import shutil

    import yaml
    from rclpy.parameter import Parameter

    bundle = tmp_path / "stretched"
    shutil.copytree(fixture_bundle, bundle)
    data = yaml.safe_load((bundle / "model.yaml").read_text())
    data["fused_stretch"] = {"low_percentile": 0.0, "high_percentile": 100.0}
    (bundle / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # Synthetic dim pair: every grey level of both cameras within [40, 160] (a range wide
    # enough for the stretch: narrower than 255 / max_gain levels is kept as it is).
    ir = (40 + synthetic_ir(0) * (120 / 250)).astype(np.uint8)
    visible = (40 + synthetic_visible(0) * (120 / 255)).astype(np.uint8)
    log_path = tmp_path / "fusion_node.log"
    with node_session(
        "/it_stretch", *fixture_params(bundle, "qos:=reliable", "colour_output:=false"),
        log_path=log_path,
    ) as (harness, _):
        harness.wait_for_node_ready()
        harness.parameter_client()
        spans = {}
        for index, stretch in enumerate((True, False)):
            accepted = harness.set_parameters(Parameter("fused_stretch", value=stretch))
            assert accepted[0].successful
            before = harness.fused_count()
            harness.publish_pair(*make_pair(index, BASE_NS, ir=ir, visible=visible))
            harness.wait_for(lambda b=before: harness.fused_count() > b, 20.0, "a fused image")
            fused = msg_to_array(harness.received.get("fused")[-1])
            spans[stretch] = (int(fused.min()), int(fused.max()))
    assert spans[True] == (0, 255), read_log(log_path)
    assert 64 < spans[False][1] - spans[False][0] < 200, spans
