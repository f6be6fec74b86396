"""messages.cv_bridge_path: cv_bridge where installed for the encodings it reads like the codec,
the package codec for the rest; both give the same arrays where both exist."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_bilevel_fusion.messages import codec, cv_bridge_path

sensor_msgs = pytest.importorskip("sensor_msgs.msg")

RNG = np.random.default_rng(7)


def _synthetic(encoding: str) -> np.ndarray:
    """A synthetic image in ``encoding``'s decoded layout."""
    layout = codec._layout(encoding)
    channels = layout.raw_channels or layout.channels
    shape = (6, 10) if channels == 1 else (6, 10, channels)
    dtype = layout.dtype.newbyteorder("=")
    if dtype.kind == "f":
        return RNG.random(shape, dtype=np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


class _RecordingBridge:
    """Stands in for CvBridge: records the calls, answers as passthrough would."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def imgmsg_to_cv2(self, msg, desired_encoding: str = "passthrough") -> np.ndarray:
        assert desired_encoding == "passthrough"
        self.calls.append(msg.encoding)
        return codec.msg_to_array(msg).copy()


@pytest.mark.parametrize("encoding", ["mono16", "bgr8", "rgb8", "32FC1", "8UC3", "bgra16"])
def test_encodings_cv_bridge_reads_go_through_it(encoding: str) -> None:
    bridge = _RecordingBridge()
    image = _synthetic(encoding)
    msg = codec.array_to_msg(image, encoding)
    array, name = cv_bridge_path.message_to_array(msg, bridge=bridge)
    assert bridge.calls == [encoding] and name == encoding
    np.testing.assert_array_equal(array, image)


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "uyvy", "yuv422_yuy2", "bayer_gbrg16"])
def test_converted_encodings_stay_with_the_codec(encoding: str) -> None:
    bridge = _RecordingBridge()
    msg = codec.array_to_msg(_synthetic("bgr16" if encoding.endswith("16") else "bgr8"), encoding)
    array, name = cv_bridge_path.message_to_array(msg, bridge=bridge)
    assert bridge.calls == []
    expected, expected_name = codec.message_to_array(msg)
    assert name == expected_name
    np.testing.assert_array_equal(array, expected)


def test_compressed_and_rosbags_messages_stay_with_the_codec() -> None:
    bridge = _RecordingBridge()
    thermal = _synthetic("mono16")
    compressed = codec.array_to_compressed_msg(thermal, "mono16", "png")
    array, name = cv_bridge_path.message_to_array(compressed, bridge=bridge)
    assert name == "mono16" and array.dtype == np.uint16
    np.testing.assert_array_equal(array, thermal)
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_KILTED).types
    height, width, step, data = codec.encode_array(thermal, "mono16")
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="synthetic"
    )
    msg = types["sensor_msgs/msg/Image"](header=header, height=height, width=width,
                                         encoding="mono16", is_bigendian=0, step=step, data=data)
    array, _ = cv_bridge_path.message_to_array(msg, bridge=bridge)
    assert bridge.calls == []
    np.testing.assert_array_equal(array, thermal)


def test_without_cv_bridge_the_codec_reads_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv_bridge_path, "_bridge", lambda: None)
    image = _synthetic("mono16")
    msg = codec.array_to_msg(image, "mono16")
    assert not cv_bridge_path.uses_cv_bridge(msg)
    array, name = cv_bridge_path.message_to_array(msg)
    assert name == "mono16"
    np.testing.assert_array_equal(array, image)


@pytest.mark.parametrize("encoding", sorted(cv_bridge_path.CV_BRIDGE_ENCODINGS))
def test_cv_bridge_and_codec_agree(encoding: str) -> None:
    pytest.importorskip(
        "cv_bridge", reason="cv_bridge is not on PyPI: only a full ROS 2 install has it"
    )
    assert cv_bridge_path.cv_bridge_available()
    image = _synthetic(encoding)
    msg = codec.array_to_msg(image, encoding)
    assert cv_bridge_path.uses_cv_bridge(msg)
    through_bridge, name = cv_bridge_path.message_to_array(msg)
    through_codec, codec_name = codec.message_to_array(msg)
    assert name == codec_name == encoding
    assert through_bridge.dtype == through_codec.dtype
    np.testing.assert_array_equal(through_bridge, through_codec)
