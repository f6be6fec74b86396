"""An rclpy recorder of everything the fusion node publishes (plus the inputs it was given).

Per topic it keeps :class:`Record` (header stamp, receive wall time, decoded payload):

* images (fused, segmentation, segmentation/color, debug_image): numpy arrays via
  ``codec.msg_to_array``;
* ``detections/json`` (std_msgs/String): the parsed JSON (schema and stamp:
  :mod:`ros2_bilevel_fusion.messages.detections`); ``detections`` (vision_msgs, only when
  importable): a list of ``{"class_id", "score", "cx", "cy", "w", "h"}``;
* ``/diagnostics``: ``{status name: {"level", "message", key: value, ...}}``;
* inputs (``/ir/image``, ``/visible/image``, or their ``/compressed`` topics when the bag holds
  CompressedImage): stamps and receive times only (no pixel copy).

Subscriptions are made once a publisher is discovered, with that publisher's reliability, so
the recorder matches a node publishing reliable or best effort alike (a reliable subscriber
never matches a best-effort publisher).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ros2_bilevel_fusion.bag.bagio import IR_TOPIC, VISIBLE_TOPIC
from ros2_bilevel_fusion.messages.codec import msg_to_array
from ros2_bilevel_fusion.messages.detections import detection2d_array_to_list, payload_stamp_ns
from ros2_bilevel_fusion.messages.stamps import header_stamp_ns

LOG = logging.getLogger("fusion-recorder")

NODE_NAME = "fusion_node"
IMAGE_OUTPUTS = ("fused", "segmentation", "segmentation/color", "debug_image")
DIAGNOSTICS_TOPIC = "/diagnostics"
INPUT_TOPICS = (IR_TOPIC, VISIBLE_TOPIC)
SUBSCRIPTION_DEPTH = 200


@dataclass(frozen=True)
class Record:
    stamp_ns: int  # header stamp (0 when the message has no header)
    receive_ns: int  # wall clock (time.time_ns) when the callback ran
    payload: Any = None


def output_topics(node_name: str = NODE_NAME, namespace: str = "") -> dict[str, str]:
    """Output name (as in the node's interface) -> fully qualified topic."""
    base = f"{namespace.rstrip('/')}/{node_name}"
    topics = {name: f"{base}/{name}" for name in IMAGE_OUTPUTS}
    topics["detections"] = f"{base}/detections"
    topics["detections/json"] = f"{base}/detections/json"
    topics["diagnostics"] = DIAGNOSTICS_TOPIC
    return topics


def diagnostics_to_dict(msg: Any) -> dict[str, dict[str, Any]]:
    """diagnostic_msgs/DiagnosticArray -> {status name: {"level", "message", key: value}}."""
    statuses: dict[str, dict[str, Any]] = {}
    for status in msg.status:
        level = status.level
        entry: dict[str, Any] = {
            "level": int.from_bytes(level, "little") if isinstance(level, bytes) else int(level),
            "message": str(status.message),
        }
        for item in status.values:
            entry[str(item.key)] = str(item.value)
        statuses[str(status.name)] = entry
    return statuses


def _decode_image(msg: Any) -> Any:
    return msg_to_array(msg).copy()  # the message buffer is reused after the callback


class OutputRecorder:
    """Records the fusion node's outputs on a given rclpy node (spin it yourself)."""

    def __init__(
        self,
        node: Any,
        *,
        node_name: str = NODE_NAME,
        namespace: str = "",
        input_topics: Sequence[str] = INPUT_TOPICS,
        keep_images: int = 100_000,
        poll_period_s: float = 0.2,
    ) -> None:
        self.node = node
        self.keep_images = keep_images
        self.topics = output_topics(node_name, namespace)
        self._kinds: dict[str, str] = {}
        for name, topic in self.topics.items():
            if name in IMAGE_OUTPUTS:
                self._kinds[topic] = "image"
            elif name == "detections/json":
                self._kinds[topic] = "detections_json"
            elif name == "detections":
                self._kinds[topic] = "detections_msg"
            else:
                self._kinds[topic] = "diagnostics"
        for topic in input_topics:
            # image_transport names: a .../compressed input carries CompressedImage.
            self._kinds[topic] = "input_compressed" if topic.endswith("/compressed") else "input"
        self.records: dict[str, list[Record]] = {topic: [] for topic in self._kinds}
        self.decode_errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subscriptions: dict[str, Any] = {}
        self._message_classes = self._load_message_classes()
        self._timer = node.create_timer(poll_period_s, self.poll_subscriptions)
        self.poll_subscriptions()

    @staticmethod
    def _load_message_classes() -> dict[str, type | None]:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        try:
            from vision_msgs.msg import Detection2DArray
        except ImportError:  # not on PyPI; the node's JSON fallback carries the same content
            Detection2DArray = None  # noqa: N806
        return {
            "image": Image,
            "input": Image,
            "input_compressed": CompressedImage,
            "detections_json": String,
            "detections_msg": Detection2DArray,
            "diagnostics": DiagnosticArray,
        }

    def poll_subscriptions(self) -> None:
        """Subscribe to every watched topic that has a publisher now, matching its QoS."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        for topic, kind in self._kinds.items():
            if topic in self._subscriptions or self._message_classes[kind] is None:
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            best_effort = any(
                p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers
            )
            qos = QoSProfile(
                depth=SUBSCRIPTION_DEPTH,
                reliability=(
                    ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE
                ),
            )
            self._subscriptions[topic] = self.node.create_subscription(
                self._message_classes[kind], topic,
                lambda msg, t=topic, k=kind: self._on_message(t, k, msg), qos,
            )
            LOG.debug("recording %s (%s)", topic, "best effort" if best_effort else "reliable")

    def _on_message(self, topic: str, kind: str, msg: Any) -> None:
        receive_ns = time.time_ns()
        payload: Any = None
        try:
            if kind == "image":
                if len(self.records[topic]) < self.keep_images:
                    payload = _decode_image(msg)
            elif kind == "detections_json":
                payload = json.loads(msg.data)
            elif kind == "detections_msg":
                payload = detection2d_array_to_list(msg)
            elif kind == "diagnostics":
                payload = diagnostics_to_dict(msg)
        except Exception as exc:  # keep recording; count what could not be decoded
            with self._lock:
                self.decode_errors[topic] = self.decode_errors.get(topic, 0) + 1
            LOG.warning("cannot decode a message on %s: %s", topic, exc)
        stamp_ns = header_stamp_ns(msg, default=0)
        if kind == "detections_json" and isinstance(payload, dict):
            # std_msgs/String has no header; the node writes the pair's stamp into the JSON.
            payload_stamp = payload_stamp_ns(payload)
            if payload_stamp is not None:
                stamp_ns = payload_stamp
        with self._lock:
            self.records[topic].append(Record(stamp_ns, receive_ns, payload))

    def subscribed(self, topic: str) -> bool:
        return topic in self._subscriptions

    def matched_publishers(self, topic: str) -> int:
        subscription = self._subscriptions.get(topic)
        return subscription.get_publisher_count() if subscription is not None else 0

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.records[topic])

    def last_receive_ns(self) -> int:
        """Receive time of the newest output record (inputs and diagnostics excluded)."""
        with self._lock:
            times = [
                records[-1].receive_ns
                for topic, records in self.records.items()
                if records and self._kinds[topic] in ("image", "detections_json", "detections_msg")
            ]
        return max(times, default=0)

    def snapshot(self) -> dict[str, list[Record]]:
        with self._lock:
            return {topic: list(records) for topic, records in self.records.items()}

    def close(self) -> None:
        self.node.destroy_timer(self._timer)
        for subscription in self._subscriptions.values():
            self.node.destroy_subscription(subscription)
        self._subscriptions.clear()
