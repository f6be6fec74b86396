"""The one place that picks cv_bridge or the package codec to turn an image message into numpy.

Where cv_bridge is installed (a full ROS 2 install; it is not on PyPI) a raw sensor_msgs/Image
in an encoding both read the same way (:data:`CV_BRIDGE_ENCODINGS`: OpenCV's own layouts) goes
through ``CvBridge.imgmsg_to_cv2(msg, "passthrough")``. Everything else goes through
:func:`ros2_bilevel_fusion.messages.codec.message_to_array`: packed YUV and Bayer (which the codec
converts to BGR, while cv_bridge's passthrough keeps the raw layout), CompressedImage (the codec
keeps 16-bit PNG thermal 16-bit), rosbags' message classes (cv_bridge reads rclpy messages
only), and every image where cv_bridge is absent. Both paths return the same (array, encoding)
for the encodings they share; test_cv_bridge_path checks it where cv_bridge exists.

Callers (the node's decode) use :func:`message_to_array` in place of the codec's function of the
same name.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ros2_bilevel_fusion.messages import codec

CV_BRIDGE_ENCODINGS: frozenset[str] = frozenset({
    "mono8", "8UC1", "mono16", "16UC1", "32FC1", "bgr8", "rgb8", "8UC3", "bgra8", "rgba8",
    "bgr16", "rgb16", "bgra16", "rgba16",
})


@functools.cache
def _bridge() -> Any:
    """A CvBridge, or None where cv_bridge does not import (pip-only ROS)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


def cv_bridge_available() -> bool:
    return _bridge() is not None


def uses_cv_bridge(msg: Any, bridge: Any = None) -> bool:
    """Whether :func:`message_to_array` reads ``msg`` with cv_bridge."""
    bridge = _bridge() if bridge is None else bridge
    return (
        bridge is not None
        and getattr(msg, "encoding", None) in CV_BRIDGE_ENCODINGS
        and not hasattr(msg, "format")
        and type(msg).__module__.startswith("sensor_msgs.")  # rclpy's class, not rosbags'
    )


def message_to_array(msg: Any, bridge: Any = None) -> tuple[np.ndarray, str]:
    """(array, encoding) of a sensor_msgs/Image or CompressedImage, ready for
    :func:`codec.to_mono8` / :func:`codec.to_bgr8`. ``bridge``: a CvBridge to use (tests)."""
    bridge = _bridge() if bridge is None else bridge
    if uses_cv_bridge(msg, bridge):
        array = bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
        return np.asarray(array), msg.encoding
    if hasattr(msg, "encoding") and not hasattr(msg, "format"):
        return codec.msg_to_array(msg), msg.encoding
    return codec.message_to_array(msg)  # CompressedImage
