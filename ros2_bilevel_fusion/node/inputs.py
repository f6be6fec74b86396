"""fusion_node's input side: the image subscriptions (raw or compressed transport), their QoS
(chosen from the publishers' when ``qos`` is ``auto``) and the visible camera_info cache, plus
the camera_info the node publishes beside its outputs.

Topic names follow image_transport: the node's relative ``ir/image`` and ``visible/image`` are
resolved first (namespace and remapping), then the ``compressed`` transport subscribes
``<resolved>/compressed`` and camera_info is ``<namespace of resolved>/camera_info``. So one
remap (``-r visible/image:=/cam/image_raw``) moves all three (``/cam/image_raw/compressed``,
``/cam/camera_info``), as for any image_transport subscriber.

QoS ``auto``: a subscription is reliable when every publisher of its topic is reliable, best
effort when any publisher is best effort (a reliable subscription would not match it), and
best effort while no publisher is known (it matches either kind). Measured with Fast DDS on
loopback: a best-effort subscription gets only 0.5-5 of 10 frames/s of 640x480 bgr8 from a
reliable publisher, a reliable one all of them, hence not simply "best effort always". The
publishers are looked at every :data:`RECHECK_S`; when the choice changes the subscription is
recreated make-before-break: the new one is created first, the old one is destroyed once the
new one has matched (at most :data:`OVERLAP_MAX_S` later), and while both live a message
whose stamp was already delivered is not delivered again.

The executor thread runs every callback here; the inference thread only reads
:meth:`NodeInputs.camera_info` (a reference).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ros2_bilevel_fusion.node.parameters import (
    IR_IMAGE_TOPIC,
    VISIBLE_IMAGE_TOPIC,
    FusionParameters,
)

STREAM_NAMES = ("ir", "visible")
INPUT_TOPICS = (IR_IMAGE_TOPIC, VISIBLE_IMAGE_TOPIC)  # index = stream (0 IR, 1 visible)
RECHECK_S = 0.5
OVERLAP_MAX_S = 3.0
# A retiring subscription lives at least this long after the new one matched.
OVERLAP_MIN_S = 0.5
RELIABLE = "reliable"
BEST_EFFORT = "best effort"


def camera_info_topic(image_topic: str) -> str:
    """image_transport's camera_info name: ``/a/b/image`` -> ``/a/b/camera_info``."""
    head, _, _ = image_topic.rstrip("/").rpartition("/")
    return f"{head}/camera_info"


def transport_topic(image_topic: str, transport: str) -> str:
    """The topic a transport subscribes for a (resolved) image topic."""
    return image_topic if transport == "raw" else f"{image_topic.rstrip('/')}/{transport}"


def type_name(msg_type: Any) -> str:
    """``sensor_msgs/msg/Image`` for rclpy's Image class (as the graph reports types)."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


def choose_reliability(publishers: Sequence[tuple[str, bool]]) -> tuple[str, str]:
    """(``reliable`` or ``best effort``, reason) for publishers given as (name, is_reliable)."""
    if not publishers:
        return BEST_EFFORT, "no publisher yet; best effort matches either kind"
    best_effort = sorted({name for name, reliable in publishers if not reliable})
    if best_effort:
        return BEST_EFFORT, (
            f"publisher(s) {', '.join(best_effort)} offer best effort, which a reliable "
            "subscription would not match"
        )
    return RELIABLE, f"all {len(publishers)} publisher(s) are reliable"


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=(
            ReliabilityPolicy.RELIABLE if reliability == RELIABLE else ReliabilityPolicy.BEST_EFFORT
        ),
        durability=DurabilityPolicy.VOLATILE,
    )


def _stamp_key(msg: Any) -> tuple[int, int]:
    stamp = msg.header.stamp
    return int(stamp.sec), int(stamp.nanosec)


class AdaptiveSubscription:
    """One subscription whose reliability follows ``mode`` (auto / reliable / sensor_data)."""

    def __init__(
        self,
        node: Node,
        msg_type: Any,
        topic: str,
        callback: Callable[[Any], None],
        mode: str,
        depth: int,
        now_s: Callable[[], float],
        label: str,
    ) -> None:
        self._node = node
        self._msg_type = msg_type
        self._type_name = type_name(msg_type)
        self.topic = topic
        self._callback = callback
        self.mode = mode
        self._depth = depth
        self._now_s = now_s
        self.label = label
        self._generation = 0
        self._subscription: Any = None
        self._retiring: list[tuple[Any, float]] = []
        self._recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=4 * depth)
        self._publishers: tuple[tuple[str, bool], ...] | None = None
        self.reliability = RELIABLE if mode == "reliable" else BEST_EFFORT
        self.reason = f"forced by qos:={mode}"
        if mode == "auto":
            self.reliability, self.reason = choose_reliability(self._current_publishers())
        self._subscription = self._create(self.reliability)
        self._log_choice()

    # ------------------------------------------------------------ graph
    def _current_publishers(self) -> tuple[tuple[str, bool], ...]:
        found = []
        for info in self._node.get_publishers_info_by_topic(self.topic):
            if info.topic_type != self._type_name:
                continue
            name = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            reliable = info.qos_profile.reliability != ReliabilityPolicy.BEST_EFFORT
            found.append((name, reliable))
        return tuple(sorted(found))

    def _create(self, reliability: str) -> Any:
        self._generation += 1
        generation = self._generation
        return self._node.create_subscription(
            self._msg_type,
            self.topic,
            lambda msg: self._deliver(generation, msg),
            qos_profile(reliability, self._depth),
        )

    def _log_choice(self) -> None:
        self._node.get_logger().info(
            f"{self.label} {self.topic}: QoS {self.reliability}, keep last {self._depth} "
            f"(qos:={self.mode}: {self.reason})"
        )

    def refresh(self) -> None:
        """Retire superseded subscriptions; in auto mode, follow the publishers' QoS."""
        now = self._now_s()
        publishers = self._current_publishers()
        if self._retiring:
            matched = self._subscription.get_publisher_count() >= len(publishers)
            keep = []
            for subscription, since in self._retiring:
                age = now - since
                if age >= OVERLAP_MAX_S or (matched and age >= OVERLAP_MIN_S):
                    self._node.destroy_subscription(subscription)
                else:
                    keep.append((subscription, since))
            self._retiring = keep
            if not keep:
                self._recent.clear()
        if publishers == self._publishers:
            return
        self._publishers = publishers
        if self.mode != "auto":
            if self.mode == "reliable" and any(not reliable for _, reliable in publishers):
                self._node.get_logger().warning(
                    f"{self.label} {self.topic}: qos:=reliable does not match its best-effort "
                    f"publisher(s) {[n for n, r in publishers if not r]}; use qos:=auto or "
                    "qos:=sensor_data"
                )
            return
        if not publishers:
            return  # keep the current choice: a publisher gone is no reason to switch
        reliability, reason = choose_reliability(publishers)
        if reliability == self.reliability:
            return
        self.reliability, self.reason = reliability, reason
        self._retiring.append((self._subscription, now))
        self._subscription = self._create(reliability)
        self._log_choice()

    # ------------------------------------------------------------ messages
    def _deliver(self, generation: int, msg: Any) -> None:
        if self._retiring:
            # Old and new subscription both live: each stamp is delivered once.
            key = _stamp_key(msg)
            if key in self._recent:
                return
            self._recent.append(key)
        self._callback(msg)

    @property
    def subscriptions(self) -> list[Any]:
        return [self._subscription, *(sub for sub, _ in self._retiring)]

    def destroy(self) -> None:
        for subscription in self.subscriptions:
            self._node.destroy_subscription(subscription)
        self._retiring = []


@dataclass
class InputStream:
    name: str
    image_topic: str  # resolved base topic (remapping applied)
    transport: str
    image: AdaptiveSubscription
    camera_info: AdaptiveSubscription | None = None


class NodeInputs:
    """The node's two image inputs and the visible camera_info, subscribed per the parameters.

    ``callbacks[stream]`` receives each Image or CompressedImage of that stream (0 IR,
    1 visible), undecoded, on the executor thread.
    """

    def __init__(
        self,
        node: Node,
        params: FusionParameters,
        callbacks: Sequence[Callable[[Any], None]],
        now_s: Callable[[], float],
        clock: Any = None,
    ) -> None:
        self._node = node
        self._mode = params.qos
        self._depth = params.qos_depth
        self._camera_info: list[CameraInfo | None] = [None, None]
        self.streams: list[InputStream] = []
        transports = (params.ir_transport, params.visible_transport)
        for stream, base in enumerate(INPUT_TOPICS):
            name = STREAM_NAMES[stream]
            resolved = node.resolve_topic_name(base)
            transport = transports[stream]
            msg_type = Image if transport == "raw" else CompressedImage
            image = AdaptiveSubscription(
                node,
                msg_type,
                transport_topic(resolved, transport),
                callbacks[stream],
                params.qos,
                params.qos_depth,
                now_s,
                f"{name} image ({transport})",
            )
            info = None
            if name == "visible":  # the outputs are in the visible geometry
                info = AdaptiveSubscription(
                    node,
                    CameraInfo,
                    camera_info_topic(resolved),
                    self._camera_info_callback(stream),
                    params.qos,
                    params.qos_depth,
                    now_s,
                    f"{name} camera_info",
                )
            self.streams.append(InputStream(name, resolved, transport, image, info))
        self._timer = node.create_timer(RECHECK_S, self.refresh, clock=clock)

    def _camera_info_callback(self, stream: int) -> Callable[[CameraInfo], None]:
        def callback(msg: CameraInfo) -> None:
            self._camera_info[stream] = msg

        return callback

    def _adaptive(self) -> list[AdaptiveSubscription]:
        subs = []
        for stream in self.streams:
            subs.append(stream.image)
            if stream.camera_info is not None:
                subs.append(stream.camera_info)
        return subs

    def refresh(self) -> None:
        for subscription in self._adaptive():
            subscription.refresh()

    def camera_info(self, stream: int) -> CameraInfo | None:
        """The newest camera_info of ``stream``, or None if none arrived (IR: always None)."""
        return self._camera_info[stream]

    def topics(self) -> list[str]:
        return [stream.image.topic for stream in self.streams]

    def qos_summary(self) -> str:
        """``auto depth 10: ir reliable, visible best effort`` (for diagnostics)."""
        parts = ", ".join(f"{s.name} {s.image.reliability}" for s in self.streams)
        return f"{self._mode} depth {self._depth}: {parts}"

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        for subscription in self._adaptive():
            subscription.destroy()


# ---------------------------------------------------------------- camera_info out


def output_camera_info(
    info: CameraInfo,
    header: Any,
    output_hw: tuple[int, int],
    input_hw: tuple[int, int],
) -> CameraInfo:
    """camera_info for an output image stamped ``header``.

    ``info`` is the visible camera's, ``input_hw`` the visible image's size and ``output_hw``
    the output's. Same size: ``info`` as is (binning and ROI kept) with the output's header.
    Another size (a scaled output): intrinsics for the output as a full image: K and P scaled
    (pixel centres kept, ROI offset and binning folded in), width/height = the output's, no
    ROI, no binning; distortion (in normalised coordinates) is unchanged.
    """
    out = CameraInfo()
    out.header = header
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    out.r = list(info.r)
    if tuple(output_hw) == tuple(input_hw):
        out.height, out.width = info.height, info.width
        out.k = list(info.k)
        out.p = list(info.p)
        out.binning_x, out.binning_y = info.binning_x, info.binning_y
        out.roi = info.roi
        return out
    out_h, out_w = (int(v) for v in output_hw)
    in_h, in_w = (int(v) for v in input_hw)
    bin_x = max(1, int(info.binning_x))
    bin_y = max(1, int(info.binning_y))
    sx = out_w / in_w / bin_x  # full-resolution pixel -> output pixel
    sy = out_h / in_h / bin_y
    x0, y0 = float(info.roi.x_offset), float(info.roi.y_offset)

    def centre(c: float, offset: float, scale: float) -> float:
        return (c - offset + 0.5) * scale - 0.5

    k = [float(v) for v in info.k]
    k[0], k[1], k[2] = k[0] * sx, k[1] * sx, centre(k[2], x0, sx)
    k[4], k[5] = k[4] * sy, centre(k[5], y0, sy)
    p = [float(v) for v in info.p]
    p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sx, centre(p[2], x0, sx), p[3] * sx
    p[5], p[6], p[7] = p[5] * sy, centre(p[6], y0, sy), p[7] * sy
    out.k, out.p = k, p
    out.height, out.width = out_h, out_w
    return out
