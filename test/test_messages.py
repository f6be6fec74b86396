"""The message layer besides the codec: header stamps and the detections JSON schema."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ros2_bilevel_fusion.core.processing import Detections
from ros2_bilevel_fusion.messages import detections as schema
from ros2_bilevel_fusion.messages import stamps


def _header(sec: int, nanosec: int, frame_id: str = "visible") -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def test_stamps_round_trip() -> None:
    ns = 1_700_000_000_123_456_789
    assert stamps.ns_to_sec_nanosec(ns) == (1_700_000_000, 123_456_789)
    stamp = SimpleNamespace(sec=0, nanosec=0)
    stamps.set_stamp(stamp, ns)
    assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert stamps.stamp_to_ns(stamp) == ns
    assert stamps.header_stamp_ns(SimpleNamespace(header=SimpleNamespace(stamp=stamp))) == ns
    assert stamps.header_stamp_ns(SimpleNamespace(data="no header"), default=0) == 0
    with pytest.raises(AttributeError):
        stamps.header_stamp_ns(SimpleNamespace(data="no header"))
    assert stamps.dict_to_ns({"sec": stamp.sec, "nanosec": stamp.nanosec}) == ns
    assert stamps.dict_to_ns({"sec": 2}) == 2_000_000_000


def test_detections_json_is_the_published_format() -> None:
    detections = Detections(
        boxes=np.array([[10.0, 20.0, 50.0, 80.0], [1.5, 2.5, 3.5, 4.5]], np.float32),
        scores=np.array([0.912345678, 0.3], np.float32),
        class_ids=np.array([0, 7], np.int64),
    )
    message = schema.DetectionsJson.from_detections(
        detections, ("person", "bicycle", "car"), _header(12, 345, "cam"), (480, 640)
    )
    text = message.to_json()
    # The exact text the node has always published (key order, rounding, derived fields).
    assert text == json.dumps({
        "stamp": {"sec": 12, "nanosec": 345},
        "frame_id": "cam",
        "image_size": [640, 480],
        "detections": [
            {"class_id": 0, "class_name": "person", "score": 0.91235,
             "bbox": {"x_min": 10.0, "y_min": 20.0, "x_max": 50.0, "y_max": 80.0,
                      "center_x": 30.0, "center_y": 50.0, "size_x": 40.0, "size_y": 60.0}},
            {"class_id": 7, "class_name": "7", "score": 0.3,
             "bbox": {"x_min": 1.5, "y_min": 2.5, "x_max": 3.5, "y_max": 4.5,
                      "center_x": 2.5, "center_y": 3.5, "size_x": 2.0, "size_y": 2.0}},
        ],
    })  # fmt: skip
    parsed = schema.DetectionsJson.from_json(text)
    assert parsed == message and parsed.stamp_ns == 12_000_000_345
    assert parsed.to_json() == text
    entry = parsed.prediction_entry()
    assert entry["boxes"].tolist() == [[10.0, 20.0, 50.0, 80.0], [1.5, 2.5, 3.5, 4.5]]
    assert entry["labels"].tolist() == [0, 7] and entry["scores"][0] == 0.91235
    assert schema.payload_stamp_ns(json.loads(text)) == 12_000_000_345
    assert schema.payload_stamp_ns({"detections": []}) is None


def test_empty_detections_and_detection2d_array() -> None:
    empty = schema.DetectionsJson.from_detections(
        Detections.empty(), ("person",), _header(1, 2), (4, 6)
    )
    assert json.loads(empty.to_json())["detections"] == []
    assert empty.prediction_entry()["boxes"].shape == (0, 4)
    if schema.detection2d_array_class() is None:
        pytest.skip("vision_msgs is not importable here")
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 3, 4
    detections = Detections(
        np.array([[10.0, 20.0, 50.0, 80.0]], np.float32),
        np.array([0.5], np.float32),
        np.array([2], np.int64),
    )
    array = schema.to_detection2d_array(detections, ("person", "bicycle", "car"), header)
    assert isinstance(array, schema.detection2d_array_class())
    assert schema.detection2d_array_to_list(array) == [
        {"class_id": "car", "score": 0.5, "cx": 30.0, "cy": 50.0, "w": 40.0, "h": 60.0}
    ]
