"""fusion_node's input side (node/inputs.py): QoS ``auto``, camera_info in and out, the
compressed transport, topics set by remapping only.

Pure parts first (QoS choice, topic names, camera_info geometry, the parameter table), then
the node in its own process over real rclpy + Fast DDS on loopback (conftest keeps DDS local):

* the default qos (auto) and a reliable publisher of 640x480 pairs at 10 Hz: the node
  subscribes reliable and pairs every frame (the old default, best effort, got 0.5-5 of 10
  frames/s here); a best-effort publisher appearing turns the subscription best effort, its
  leaving turns it back; the choice and its reason are logged;
* compressed transport with one remap: JPEG and PNG visible, 16-bit PNG thermal, the visible
  camera_info found beside the remapped topic, and ``~/camera_info`` published with each
  fused image's header.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from node_helpers import (  # noqa: E402
    HEIGHT,
    IR_FRAME,
    QOS,
    VISIBLE_FRAME,
    WIDTH,
    Harness,
    fixture_params,
    make_pair,
    matched,
    node_session,
    read_log,
    stamp_ns,
    stamped,
    synthetic_visible,
)
from rclpy.node import Node  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ros2_bilevel_fusion.messages.codec import (  # noqa: E402
    array_to_compressed_msg,
    msg_to_array,
)
from ros2_bilevel_fusion.node import inputs  # noqa: E402
from ros2_bilevel_fusion.node.parameters import (  # noqa: E402
    PARAMETERS,
    SPECS,
    FusionParameters,
    validate,
)

# ------------------------------------------------------------------ pure parts


def test_camera_info_and_transport_topics_follow_image_transport() -> None:
    assert inputs.camera_info_topic("/cam/image_raw") == "/cam/camera_info"
    assert inputs.camera_info_topic("/a/b/visible/image") == "/a/b/visible/camera_info"
    assert inputs.camera_info_topic("/image") == "/camera_info"
    assert inputs.transport_topic("/cam/image_raw", "raw") == "/cam/image_raw"
    assert inputs.transport_topic("/cam/image_raw", "compressed") == "/cam/image_raw/compressed"
    assert inputs.type_name(Image) == "sensor_msgs/msg/Image"
    assert inputs.type_name(CompressedImage) == "sensor_msgs/msg/CompressedImage"


def test_choose_reliability() -> None:
    choice, reason = inputs.choose_reliability([])
    assert choice == inputs.BEST_EFFORT and "no publisher" in reason
    choice, reason = inputs.choose_reliability([("/cam", True), ("/bag", True)])
    assert choice == inputs.RELIABLE and "all 2" in reason
    choice, reason = inputs.choose_reliability([("/cam", False), ("/bag", True)])
    assert choice == inputs.BEST_EFFORT and "/cam" in reason and "/bag" not in reason


def test_parameters_topics_by_remap_only_and_qos_auto_by_default() -> None:
    names = {spec.name for spec in PARAMETERS}
    assert not {"ir_topic", "visible_topic"} & names
    assert SPECS["qos"].default == "auto"
    assert SPECS["ir_transport"].default == SPECS["visible_transport"].default == "raw"
    defaults = FusionParameters.from_values({s.name: s.default for s in PARAMETERS})
    assert validate(defaults) is None
    for qos in ("auto", "reliable", "sensor_data"):
        assert validate(defaults.replace({"qos": qos})) is None
    assert "qos" in validate(defaults.replace({"qos": "best_effort"}))
    assert validate(defaults.replace({"visible_transport": "compressed"})) is None
    assert "ir_transport" in validate(defaults.replace({"ir_transport": "theora"}))


def synthetic_camera_info(width: int = WIDTH, height: int = HEIGHT) -> CameraInfo:
    """Synthetic pinhole calibration: f = 100 px, principal point at the image centre."""
    info = CameraInfo()
    info.header.frame_id = VISIBLE_FRAME
    info.width, info.height = width, height
    info.distortion_model = "plumb_bob"
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info.k = [100.0, 0.0, cx, 0.0, 100.0, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [100.0, 0.0, cx, 0.0, 0.0, 100.0, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def test_output_camera_info_same_size_copies_with_the_output_header() -> None:
    info = synthetic_camera_info()
    header = Header(frame_id="fused_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    out = inputs.output_camera_info(info, header, (HEIGHT, WIDTH), (HEIGHT, WIDTH))
    assert out.header == header
    assert (out.width, out.height) == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(out.k, info.k)
    np.testing.assert_array_equal(out.p, info.p)
    np.testing.assert_array_equal(out.d, info.d)
    assert out.distortion_model == "plumb_bob"


def test_output_camera_info_scaled_output_keeps_the_projection() -> None:
    """A half-size output: a point projected with the output's K lands where the full-size
    projection lands, scaled by the resize (pixel centres kept)."""
    info = synthetic_camera_info(640, 480)
    out = inputs.output_camera_info(info, Header(), (240, 320), (480, 640))
    assert (out.width, out.height) == (320, 240)
    point = np.array([0.3, -0.2, 2.0])

    def project(k: Any) -> np.ndarray:
        k = np.asarray(k, float).reshape(3, 3)
        uvw = k @ point
        return uvw[:2] / uvw[2]

    u_full, v_full = project(info.k)
    u_half, v_half = project(out.k)
    assert u_half == pytest.approx((u_full + 0.5) / 2 - 0.5)
    assert v_half == pytest.approx((v_full + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(
        np.asarray(out.p).reshape(3, 4)[:, :3], np.asarray(out.k).reshape(3, 3)
    )


# ------------------------------------------------------------------ node process helpers

BASE_NS = 1_750_000_000 * 10**9


def node_subscriptions(rig: Node, topic: str) -> list[Any]:
    return [i for i in rig.get_subscriptions_info_by_topic(topic) if i.node_name == "fusion_node"]


def all_subscriptions_are(rig: Node, topic: str, policy: ReliabilityPolicy) -> bool:
    """The node subscribes ``topic`` with ``policy`` only (a retired subscription is gone)."""
    subs = node_subscriptions(rig, topic)
    return bool(subs) and all(i.qos_profile.reliability == policy for i in subs)


# ------------------------------------------------------------------ qos auto


@pytest.fixture(scope="module")
def auto_node(
    fixture_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, Path]]:
    """fusion_node with the default input QoS (qos auto) and the test rig's reliable
    publishers (Harness: depth 50), as `ros2 bag play` or fusion-replay publish."""
    log_path = tmp_path_factory.mktemp("node_log") / "fusion_node.log"
    params = fixture_params(
        fixture_bundle,
        "diagnostics_period:=0.5",
        # Not the QoS choice (left at its default, auto): room for this process or the node
        # to stall under load without a frame falling out of the DDS history or the pairer.
        "qos_depth:=50",
        "queue_size:=50",
    )
    with node_session("/in_auto", *params, log_path=log_path, log_tail=0) as (harness, process):
        harness.subscribe(CameraInfo, "camera_info")
        try:
            harness.wait_for_node_ready()
            yield harness, log_path
            assert process.poll() is None, "fusion_node exited"
        except AssertionError:
            print(read_log(log_path)[-6000:])
            raise


def test_auto_qos_subscribes_reliable_to_reliable_publishers_and_gets_every_frame(
    auto_node,
) -> None:
    harness, log_path = auto_node
    rig = harness.node
    for topic in ("/in_auto/ir/image", "/in_auto/visible/image"):
        harness.wait_for(
            lambda topic=topic: all_subscriptions_are(rig, topic, ReliabilityPolicy.RELIABLE),
            20.0,
            f"fusion_node's {topic} subscription to be reliable (qos auto, reliable publisher)",
        )
    assert "QoS reliable" in read_log(log_path)
    assert "all 1 publisher(s) are reliable" in read_log(log_path)

    # 20 synthetic 640x480 pairs at 10 Hz: the size that loses most frames best effort.
    pairs = 20
    height, width = 480, 640
    for index in range(pairs):
        harness.publish_pair(*make_pair(index, BASE_NS, height=height, width=width))
        time.sleep(0.1)

    def counted_pairs() -> int:
        return int(harness.status().get("pairs", 0))

    try:
        harness.wait_for(lambda: counted_pairs() >= pairs, 60.0, f"{pairs} pairs in diagnostics")
    except AssertionError:
        print(harness.node_status(), read_log(log_path)[-6000:])
        raise
    status = harness.node_status()
    assert counted_pairs() == pairs, status
    assert status["qos"] == "auto depth 50: ir reliable, visible reliable"

    def fused_or_superseded() -> int:
        return harness.fused_count() + harness.drops("superseded")

    harness.wait_for(lambda: fused_or_superseded() >= pairs, 120.0, "every pair processed")
    fused = harness.received.get("fused")
    assert fused and (fused[-1].height, fused[-1].width) == (height, width)
    # No camera_info was published to the node, so it publishes none (no invented intrinsics).
    assert harness.received.get("camera_info") == []


def test_auto_qos_follows_a_best_effort_publisher_and_back(auto_node) -> None:
    harness, log_path = auto_node
    rig = harness.node
    topic = "/in_auto/visible/image"
    harness.wait_for(
        lambda: all_subscriptions_are(rig, topic, ReliabilityPolicy.RELIABLE), 20.0, "reliable"
    )
    camera = Node("synthetic_best_effort_camera", context=harness.context)
    best_effort = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT
    )
    publisher = camera.create_publisher(Image, topic, best_effort)
    try:
        harness.wait_for(
            lambda: all_subscriptions_are(rig, topic, ReliabilityPolicy.BEST_EFFORT),
            20.0,
            "the visible subscription to turn best effort (a best-effort publisher appeared)",
        )
        log = read_log(log_path)
        assert "synthetic_best_effort_camera offer best effort" in log
        assert all_subscriptions_are(rig, "/in_auto/ir/image", ReliabilityPolicy.RELIABLE)
        harness.wait_for(
            lambda: "visible best effort" in harness.status().get("qos", ""),
            10.0,
            "diagnostics to report the visible input best effort",
        )
    finally:
        camera.destroy_publisher(publisher)
        camera.destroy_node()
    harness.wait_for(
        lambda: all_subscriptions_are(rig, topic, ReliabilityPolicy.RELIABLE),
        20.0,
        "the visible subscription to turn reliable again (the best-effort publisher left)",
    )


# ------------------------------------------------------------------ compressed + camera_info


def synthetic_thermal16(index: int) -> np.ndarray:
    """Synthetic 16-bit thermal: 7000-7400 counts ramp, a 9500-count square moving with index."""
    ramp = np.linspace(7000, 7400, WIDTH)[None, :].repeat(HEIGHT, 0)
    ramp[32:64, 16 + 4 * index : 48 + 4 * index] = 9500
    return ramp.astype(np.uint16)


def test_compressed_inputs_one_remap_and_camera_info_out(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """ir_transport/visible_transport compressed; only visible/image is remapped, and the node
    finds <remapped>/compressed and the camera_info beside it. JPEG and PNG visible frames,
    16-bit PNG thermal; ~/camera_info and ~/segmentation/camera_info carry each fused
    image's header and the visible calibration."""
    namespace = "/in_comp"
    camera_ns = "/synthetic_cams/visible"
    log_path = tmp_path / "fusion_node.log"
    with node_session(
        namespace,
        *fixture_params(
            fixture_bundle,
            "diagnostics_period:=0.5",
            "ir_transport:=compressed",
            "visible_transport:=compressed",
        ),
        log_path=log_path,
        remaps=(f"visible/image:={camera_ns}/image_raw",),
        log_tail=0,
    ) as (harness, process):
        rig = harness.node
        pub_ir = rig.create_publisher(CompressedImage, f"{namespace}/ir/image/compressed", QOS)
        pub_visible = rig.create_publisher(
            CompressedImage, f"{camera_ns}/image_raw/compressed", QOS
        )
        pub_info = rig.create_publisher(CameraInfo, f"{camera_ns}/camera_info", QOS)
        for topic in ("camera_info", "segmentation/camera_info"):
            harness.subscribe(CameraInfo, topic)
        try:
            harness.wait_for(
                lambda: matched((pub_ir, pub_visible, pub_info), harness.subs),
                60.0,
                "discovery of the compressed inputs, the camera_info input and the outputs",
            )
            harness.wait_for_model()
            info = synthetic_camera_info()
            sent_stamps = []
            pairs = 6
            for index in range(pairs):
                stamp = BASE_NS + index * 100_000_000
                pub_info.publish(stamped(info, stamp, VISIBLE_FRAME))
                ir = array_to_compressed_msg(synthetic_thermal16(index), "mono16", "png")
                codec_name = "jpeg" if index % 2 == 0 else "png"
                visible = array_to_compressed_msg(synthetic_visible(index), "bgr8", codec_name)
                pub_ir.publish(stamped(ir, stamp - 3_000_000, IR_FRAME))
                pub_visible.publish(stamped(visible, stamp, VISIBLE_FRAME))
                sent_stamps.append(stamp)
                time.sleep(0.15)

            harness.wait_for(
                lambda: (
                    harness.fused_count() + harness.drops("superseded") >= pairs
                    and len(harness.received.get("camera_info")) >= harness.fused_count()
                ),
                60.0,
                f"{pairs} fused images (or superseded) and their camera_info",
            )
            fused = harness.received.get("fused")
            assert len(fused) >= 2, "both JPEG and PNG visible frames must get through"
            assert process.poll() is None
            for msg in fused:
                assert stamp_ns(msg.header) in sent_stamps
                assert (msg.height, msg.width, msg.header.frame_id) == (
                    HEIGHT,
                    WIDTH,
                    VISIBLE_FRAME,
                )
                index = (stamp_ns(msg.header) - BASE_NS) // 100_000_000
                image = msg_to_array(msg)
                grey = image.mean(axis=2) if image.ndim == 3 else image
                # The 16-bit thermal square went through gain control: the hottest region, bright.
                square = grey[36:60, 20 + 4 * index : 44 + 4 * index].mean()
                assert square > 200 and square > grey[70:, :].mean() + 60, (index, square)
            fused_headers = [(stamp_ns(m.header), m.header.frame_id) for m in fused]
            infos = harness.received.get("camera_info")
            assert [(stamp_ns(m.header), m.header.frame_id) for m in infos] == fused_headers
            for out in infos:
                assert (out.width, out.height) == (WIDTH, HEIGHT)
                np.testing.assert_array_equal(out.k, info.k)
                np.testing.assert_array_equal(out.p, info.p)
            harness.wait_for(
                lambda: len(harness.received.get("segmentation/camera_info")) >= len(fused),
                10.0,
                "segmentation camera_info",
            )
            seg_infos = harness.received.get("segmentation/camera_info")
            assert [stamp_ns(m.header) for m in seg_infos] == [s for s, _ in fused_headers]
            log = read_log(log_path)
            assert f"{camera_ns}/image_raw/compressed" in log
            assert f"{camera_ns}/camera_info" in log
        except AssertionError:
            print(read_log(log_path)[-6000:])
            raise
