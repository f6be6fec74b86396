"""Bag tools on real TNO/MSRS pairs: pairs-to-bag, reading back, live replay into rclpy."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.bag import bagio, pairs_to_bag, replay
from ros2_bilevel_fusion.messages.codec import ImageCodecError, msg_to_array
from ros2_bilevel_fusion.messages.stamps import header_stamp_ns, stamp_to_ns


def test_plan_stamps_spacing_and_offset() -> None:
    visible, ir = pairs_to_bag.plan_stamps(50, fps=10.0, ir_offset_ms=3.0, jitter_ms=0.5, seed=1)
    assert visible.dtype == np.int64
    spacing_ms = np.diff(visible) / 1e6
    assert np.all(np.abs(spacing_ms - 100.0) < 5.0)
    offset_ms = (ir - visible) / 1e6
    assert abs(float(np.mean(offset_ms)) - 3.0) < 0.5
    assert np.std(offset_ms) > 0  # jitter is there
    again_visible, _ = pairs_to_bag.plan_stamps(50, 10.0, 3.0, 0.5, seed=1)
    assert np.array_equal(visible, again_visible)


def test_yolo_to_pixel_boxes() -> None:
    boxes = pairs_to_bag.yolo_to_pixel_boxes("0 0.5 0.25 0.1 0.2\n\n2 0 1 1 1\n", 640, 480)
    assert boxes[0] == {"class": 0, "cx": 320.0, "cy": 120.0, "w": 64.0, "h": 96.0}
    assert boxes[1]["class"] == 2 and boxes[1]["cy"] == 480.0
    with pytest.raises(ValueError):
        pairs_to_bag.yolo_to_pixel_boxes("0 0.5 0.5", 10, 10)


@pytest.mark.parametrize("encoding,dtype,shape", [
    ("mono8", np.uint8, (5, 7)), ("mono16", np.uint16, (5, 7)), ("bgr8", np.uint8, (5, 7, 3)),
    ("8UC3", np.uint8, (5, 7, 3)), ("32FC1", np.float32, (5, 7)),
])
def test_image_round_trip_rosbags_and_rclpy(encoding: str, dtype: type, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        array = rng.normal(300.0, 20.0, size=shape).astype(dtype)  # synthetic thermal
    else:
        array = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)  # synthetic
    msg = bagio.make_rosbags_image(array, encoding, 1_700_000_000_123_456_789, "cam")
    assert header_stamp_ns(msg) == 1_700_000_000_123_456_789
    assert np.array_equal(msg_to_array(msg), array)  # the one codec reads rosbags messages
    rclpy_msg = bagio.rosbags_to_rclpy(msg)
    assert header_stamp_ns(rclpy_msg) == 1_700_000_000_123_456_789
    assert rclpy_msg.header.stamp.nanosec == 123_456_789 and rclpy_msg.header.frame_id == "cam"
    assert np.array_equal(msg_to_array(rclpy_msg), array)
    direct = bagio.make_rclpy_image(array, encoding, 5, "cam")
    assert (direct.header.stamp.sec, direct.header.stamp.nanosec) == (0, 5)
    assert np.array_equal(msg_to_array(direct), array)
    # Both builders write the same message: identical CDR bytes.
    assert bagio.rclpy_to_raw(direct) == bagio.rclpy_to_raw(
        bagio.rosbags_to_rclpy(bagio.make_rosbags_image(array, encoding, 5, "cam"))
    )


def test_image_with_row_padding_and_bad_input() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)  # synthetic
    msg = bagio.make_rclpy_image(array, "mono8", 0, "x")
    padded = np.zeros((3, 6), np.uint8)
    padded[:, :4] = array
    msg.step, msg.data = 6, padded.tobytes()
    assert np.array_equal(msg_to_array(msg), array)
    msg.data = padded.tobytes()[:10]
    with pytest.raises(ImageCodecError):
        msg_to_array(msg)
    msg.encoding = "yuv422_weird"
    with pytest.raises(ImageCodecError):
        msg_to_array(msg)
    with pytest.raises(ImageCodecError):
        bagio.make_rosbags_image(np.zeros((2, 2, 3), np.uint8), "mono8", 0, "x")
    with pytest.raises(ImageCodecError):
        bagio.make_rclpy_image(np.zeros((2, 2), np.uint16), "mono8", 0, "x")


def test_read_bag_rejects_non_bag(tmp_path: Path) -> None:
    with pytest.raises(bagio.BagError):
        list(bagio.read_bag(tmp_path))


@pytest.fixture(scope="module")
def tno_bag(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bags") / "tno3"
    pairs_to_bag.main([
        "--ir", str(shared_data / "tno/ir"), "--vi", str(shared_data / "tno/vi"),
        "--out", str(out), "--limit", "3", "--resize", "320x240", "--fps", "10",
        "--ir-offset-ms", "3", "--storage", "mcap", "--compress",
    ])
    return out


def test_pairs_to_bag_reads_back(tno_bag: Path, shared_data: Path) -> None:
    topics = bagio.bag_topics(tno_bag)
    assert topics == {
        "/ir/image": bagio.TopicInfo(bagio.IMAGE_MSGTYPE, 3),
        "/visible/image": bagio.TopicInfo(bagio.IMAGE_MSGTYPE, 3),
    }
    messages = list(bagio.read_bag(tno_bag))
    record_times = [m.timestamp_ns for m in messages]
    assert record_times == sorted(record_times)
    by_topic: dict[str, list] = {"/ir/image": [], "/visible/image": []}
    for message in messages:
        decoded = message.decode()
        assert header_stamp_ns(decoded) == message.timestamp_ns
        by_topic[message.topic].append(decoded)
    visible_stamps = np.array([header_stamp_ns(m) for m in by_topic["/visible/image"]])
    ir_stamps = np.array([header_stamp_ns(m) for m in by_topic["/ir/image"]])
    assert np.all(np.abs(np.diff(visible_stamps) / 1e6 - 100.0) < 5.0)
    assert np.all(np.abs((ir_stamps - visible_stamps) / 1e6 - 3.0) < 3.0)
    for msg in by_topic["/visible/image"]:
        assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == (
            "bgr8", 320, 240, "visible")
    for msg in by_topic["/ir/image"]:
        assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == (
            "mono8", 320, 240, "ir")
    # The first IR frame is the real TNO image 01, resized.
    expected = cv2.resize(cv2.imread(str(shared_data / "tno/ir/01.png"), cv2.IMREAD_GRAYSCALE),
                          (320, 240), interpolation=cv2.INTER_AREA)
    assert np.array_equal(msg_to_array(by_topic["/ir/image"][0]), expected)
    assert bagio.read_label_sidecar(tno_bag) == {}


def test_pairs_to_bag_labels_and_mono16(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "msrs"
    code = pairs_to_bag.main([
        "--ir", str(shared_data / "msrs/ir"), "--vi", str(shared_data / "msrs/vi"),
        "--out", str(out), "--limit", "2", "--ir-encoding", "mono16",
        "--labels", str(shared_data / "msrs/labels/fusion"), "--frame-ids", "thermal,color",
    ])
    assert code == 0
    visible = [m.decode() for m in bagio.read_bag(out, ["/visible/image"])]
    ir = [m.decode() for m in bagio.read_bag(out, ["/ir/image"])]
    assert ir[0].encoding == "mono16" and ir[0].header.frame_id == "thermal"
    assert msg_to_array(ir[0]).max() > 255
    labels = bagio.read_label_sidecar(out)
    assert set(labels) <= {header_stamp_ns(m) for m in visible}
    first = pairs_to_bag.find_pairs(shared_data / "msrs/ir", shared_data / "msrs/vi")[0]
    label_text = (shared_data / "msrs/labels/fusion" / f"{first.name}.txt").read_text()
    width, height = visible[0].width, visible[0].height
    expected = pairs_to_bag.yolo_to_pixel_boxes(label_text, width, height)
    assert labels.get(header_stamp_ns(visible[0]), []) == expected


def test_pairs_to_bag_errors(tmp_path: Path) -> None:
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    assert pairs_to_bag.main(["--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                              "--out", str(tmp_path / "bag")]) == 1


def test_loop_schedule_and_restamp_arithmetic() -> None:
    record = {"/visible": [0, 100, 200], "/ir": [3, 104, 205]}
    period = replay.loop_period_ns(record)
    assert period == 205 + 101  # span plus the largest per-topic median frame interval
    assert replay.schedule_offset_ns(100, 0, 0, period, rate=2.0) == 50
    assert replay.schedule_offset_ns(100, 0, 1, period, rate=1.0) == 100 + period
    kwargs = {"period_ns": 1000, "wall_start_ns": 10_000, "bag_start_ns": 500, "rate": 1.0}
    # IR 3 ns after its record time keeps that offset when restamped.
    assert replay.shifted_stamp_ns(603, 600, loop=0, restamp=True, **kwargs) == 10_103
    assert replay.shifted_stamp_ns(603, 600, loop=2, restamp=False, **kwargs) == 2603
    assert replay.parse_remaps(["/a:=/b"]) == {"/a": "/b"}
    with pytest.raises(ValueError):
        replay.parse_remaps(["/a=/b"])


def _collect_replay(bag: Path, options: replay.ReplayOptions, topics: dict[str, str]
                    ) -> tuple[replay.ReplaySummary, dict[str, list[tuple[int, int]]], int]:
    """Replay in-process into a live subscriber; returns (summary, {topic: [(stamp, recv)]},
    clock messages)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    context = rclpy.Context()
    rclpy.init(context=context)
    received: dict[str, list[tuple[int, int]]] = {t: [] for t in topics.values()}
    clocks: list[int] = []
    try:
        listener = rclpy.create_node("bag_tools_listener", context=context)
        player = rclpy.create_node("bag_tools_player", context=context)
        qos = replay.make_qos(options.qos, 10)
        for topic in topics.values():
            listener.create_subscription(
                Image, topic,
                lambda msg, t=topic: received[t].append(
                    (header_stamp_ns(msg), time.time_ns())), qos)
        listener.create_subscription(Clock, "/clock",
                                     lambda msg: clocks.append(stamp_to_ns(msg.clock)), 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        summary = replay.replay_messages(player, options)
        executor.shutdown()
        spinner.join(timeout=5)
    finally:
        rclpy.try_shutdown(context=context)
    return summary, received, len(clocks)


def test_replay_live_with_clock_and_remap(tno_bag: Path) -> None:
    options = replay.ReplayOptions(
        bag=tno_bag, rate=2.0, loops=2, clock=True, remaps={"/ir/image": "/bt/ir"},
        wait_subscribers=1, wait_timeout_s=20.0, qos="reliable", linger_s=0.5,
    )
    topics = {"/ir/image": "/bt/ir", "/visible/image": "/visible/image"}
    summary, received, clock_count = _collect_replay(tno_bag, options, topics)
    assert summary.subscribers_matched
    assert summary.published == {"/bt/ir": 6, "/visible/image": 6}
    assert summary.loops_done == 2
    original = {topic: [m.timestamp_ns for m in bagio.read_bag(tno_bag, [topic])]
                for topic in topics}
    period = replay.loop_period_ns(original)
    for bag_topic, live_topic in topics.items():
        stamps = [stamp for stamp, _ in received[live_topic]]
        expected = original[bag_topic] + [s + period for s in original[bag_topic]]
        assert stamps == expected
    assert clock_count >= 6
    assert summary.timing_error_ms_p50 == summary.timing_error_ms_p50  # not NaN


def test_replay_restamp_uses_wall_clock(tno_bag: Path) -> None:
    options = replay.ReplayOptions(bag=tno_bag, restamp=True, wait_subscribers=1,
                                   wait_timeout_s=20.0, qos="sensor_data", linger_s=0.5)
    start = time.time_ns()
    summary, received, _ = _collect_replay(
        tno_bag, options, {"/ir/image": "/ir/image", "/visible/image": "/visible/image"})
    end = time.time_ns()
    assert summary.published == {"/ir/image": 3, "/visible/image": 3}
    visible = received["/visible/image"]
    ir = received["/ir/image"]
    assert len(visible) == 3 and len(ir) == 3  # best effort, but loopback with depth 10
    for stamp, receive in visible + ir:
        assert start <= stamp <= end
        assert stamp <= receive + 1_000_000  # stamped at scheduled publish time
    original = {t: [m.timestamp_ns for m in bagio.read_bag(tno_bag, [t])]
                for t in ("/ir/image", "/visible/image")}
    for (ir_stamp, _), (vis_stamp, _), ir0, vis0 in zip(
            ir, visible, original["/ir/image"], original["/visible/image"], strict=True):
        assert ir_stamp - vis_stamp == ir0 - vis0  # pair offset kept exactly


def test_replay_cli_rejects_bad_input_before_ros(tno_bag: Path, tmp_path: Path) -> None:
    assert replay.main([str(tmp_path / "no_bag")]) == 2
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.yaml").write_text("not: [a bag")
    assert replay.main([str(tmp_path / "broken")]) == 2
    assert replay.main([str(tno_bag), "--topics", "/nope"]) == 2
    assert replay.main([str(tno_bag), "--rate", "0"]) == 2
    assert replay.main([str(tno_bag), "--remap", "bad"]) == 2


def test_truncated_bag_is_a_bag_error(tno_bag: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "truncated"
    shutil.copytree(tno_bag, broken)
    storage = next(broken.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(bagio.BagError):
        list(bagio.read_bag(broken))
