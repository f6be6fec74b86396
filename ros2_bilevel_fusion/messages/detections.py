"""The detections schema: the JSON the node publishes on ``~/detections/json`` (std_msgs/String),
defined once, and the vision_msgs/Detection2DArray conversions.

The JSON, in visible-image pixels::

    {"stamp": {"sec": int, "nanosec": int}, "frame_id": str, "image_size": [width, height],
     "detections": [{"class_id": int, "class_name": str, "score": float (5 decimals),
                     "bbox": {"x_min", "y_min", "x_max", "y_max",
                              "center_x", "center_y", "size_x", "size_y"}}]}

The stamp is the visible image's header stamp (std_msgs/String has no header).
:class:`DetectionsJson` writes it (node) and reads it back (recorder, ``fusion-eval bag``).
vision_msgs is imported only by the functions that need it: it is not on PyPI.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ros2_bilevel_fusion.messages.stamps import dict_to_ns, ns_to_sec_nanosec, stamp_to_ns
from ros2_bilevel_fusion.messages.strict_json import dumps


def class_name_of(class_id: int, class_names: Sequence[str]) -> str:
    """The class's name, or its id as text when it is outside ``class_names``."""
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)


@dataclass(frozen=True)
class Detection:
    """One box in visible-image pixels (x1, y1, x2, y2) with its class and score."""

    class_id: int
    class_name: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "bbox": {
                "x_min": self.x_min,
                "y_min": self.y_min,
                "x_max": self.x_max,
                "y_max": self.y_max,
                "center_x": (self.x_min + self.x_max) / 2.0,
                "center_y": (self.y_min + self.y_max) / 2.0,
                "size_x": self.x_max - self.x_min,
                "size_y": self.y_max - self.y_min,
            },
        }

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> Detection:
        box = item["bbox"]
        class_id = int(item["class_id"])
        return cls(
            class_id=class_id,
            class_name=str(item.get("class_name", class_id)),
            score=float(item["score"]),
            x_min=float(box["x_min"]),
            y_min=float(box["y_min"]),
            x_max=float(box["x_max"]),
            y_max=float(box["y_max"]),
        )


@dataclass
class DetectionsJson:
    """One ``~/detections/json`` message: the detections of one fused pair."""

    stamp_ns: int
    frame_id: str = ""
    image_size: tuple[int, int] = (0, 0)  # (width, height)
    detections: list[Detection] = field(default_factory=list)

    @classmethod
    def from_detections(
        cls,
        detections: Any,
        class_names: Sequence[str],
        header: Any,
        image_hw: tuple[int, int],
    ) -> DetectionsJson:
        """From the pipeline's Detections (boxes, scores, class_ids), the visible header and the
        visible image's (height, width)."""
        items = []
        for box, score, class_id in zip(
            detections.boxes, detections.scores, detections.class_ids, strict=True
        ):
            x1, y1, x2, y2 = (float(v) for v in box)
            cid = int(class_id)
            items.append(
                Detection(cid, class_name_of(cid, class_names), round(float(score), 5),
                          x1, y1, x2, y2)
            )
        return cls(
            stamp_ns=stamp_to_ns(header.stamp),
            frame_id=header.frame_id,
            image_size=(int(image_hw[1]), int(image_hw[0])),
            detections=items,
        )

    def to_dict(self) -> dict[str, Any]:
        sec, nanosec = ns_to_sec_nanosec(self.stamp_ns)
        return {
            "stamp": {"sec": sec, "nanosec": nanosec},
            "frame_id": self.frame_id,
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "detections": [d.to_dict() for d in self.detections],
        }

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> DetectionsJson:
        """A parsed payload; missing stamp, frame_id or image size read as 0 / empty."""
        stamp = payload.get("stamp") or {}
        size = payload.get("image_size") or (0, 0)
        return cls(
            stamp_ns=dict_to_ns(stamp),
            frame_id=str(payload.get("frame_id", "")),
            image_size=(int(size[0]), int(size[1])),
            detections=[Detection.from_dict(item) for item in payload.get("detections", [])],
        )

    @classmethod
    def from_json(cls, text: str) -> DetectionsJson:
        return cls.from_dict(json.loads(text))

    def prediction_entry(self) -> dict[str, np.ndarray]:
        """boxes [N, 4] xyxy, scores [N], labels [N]: a ``detection_map`` prediction entry."""
        return {
            "boxes": np.asarray(
                [[d.x_min, d.y_min, d.x_max, d.y_max] for d in self.detections], dtype=np.float64
            ).reshape(-1, 4),
            "scores": np.asarray([d.score for d in self.detections], dtype=np.float64),
            "labels": np.asarray([d.class_id for d in self.detections], dtype=np.int64),
        }


def payload_stamp_ns(payload: Mapping[str, Any]) -> int | None:
    """The stamp of a parsed detections JSON payload in ns, or None when it has none."""
    stamp = payload.get("stamp")
    return dict_to_ns(stamp) if isinstance(stamp, Mapping) else None


@functools.cache
def _vision_msgs() -> tuple[type, type, type] | None:
    """(Detection2DArray, Detection2D, ObjectHypothesisWithPose), imported once, or None where
    vision_msgs is not importable (it is not on PyPI)."""
    try:
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    except ImportError:
        return None
    return Detection2DArray, Detection2D, ObjectHypothesisWithPose


def detection2d_array_class() -> type | None:
    """vision_msgs/Detection2DArray, or None where vision_msgs is not importable."""
    classes = _vision_msgs()
    return classes[0] if classes is not None else None


def to_detection2d_array(detections: Any, class_names: Sequence[str], header: Any) -> Any:
    """The pipeline's Detections -> vision_msgs/Detection2DArray (class_id holds the name)."""
    classes = _vision_msgs()
    if classes is None:
        raise ImportError("vision_msgs is not importable")
    Detection2DArray, Detection2D, ObjectHypothesisWithPose = classes  # noqa: N806 (classes)

    array = Detection2DArray()
    array.header = header
    for box, score, class_id in zip(
        detections.boxes, detections.scores, detections.class_ids, strict=True
    ):
        x1, y1, x2, y2 = (float(v) for v in box)
        det = Detection2D()
        det.header = header
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = class_name_of(int(class_id), class_names)
        hypothesis.hypothesis.score = float(score)
        det.results = [hypothesis]
        array.detections.append(det)
    return array


def detection2d_array_to_list(msg: Any) -> list[dict[str, Any]]:
    """vision_msgs/Detection2DArray -> plain dicts (best hypothesis per detection):
    ``{"class_id", "score", "cx", "cy", "w", "h"}`` in pixels."""
    detections = []
    for detection in msg.detections:
        best = max(detection.results, key=lambda r: r.hypothesis.score, default=None)
        center = detection.bbox.center
        position = getattr(center, "position", center)  # Humble+ Pose2D has .position
        detections.append({
            "class_id": best.hypothesis.class_id if best is not None else "",
            "score": float(best.hypothesis.score) if best is not None else 0.0,
            "cx": float(position.x),
            "cy": float(position.y),
            "w": float(detection.bbox.size_x),
            "h": float(detection.bbox.size_y),
        })
    return detections
