"""rosbag2 reading and writing with ``rosbags`` (no ROS bag libraries needed).

Pure helpers shared by the replayer, the pairs-to-bag converter, the recorder and evaluation:

* :func:`read_bag` yields :class:`BagMessage` (topic, type, receive timestamp, raw CDR bytes) from a
  rosbag2 folder (sqlite3 or mcap, compressed or not); :meth:`BagMessage.decode` gives the
  ``rosbags`` message and :func:`raw_to_rclpy` the rclpy one (the CDR bytes are the same, so this is
  one C call, no per-field copy).
* :class:`ImageBagWriter` writes ``sensor_msgs/msg/Image`` messages from numpy arrays.
* Images are converted by :mod:`ros2_bilevel_fusion.messages.codec` (rosbags and rclpy messages
  have the same fields), stamps by :mod:`ros2_bilevel_fusion.messages.stamps`.
* The label side-car (``labels.json`` inside the bag folder): ``{visible_stamp_ns: [{"class": int,
  "cx": float, "cy": float, "w": float, "h": float}, ...]}`` with box centre and size in pixels of
  the image as stored in the bag. :func:`read_label_sidecar` returns it with integer keys.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from ros2_bilevel_fusion.messages import codec
from ros2_bilevel_fusion.messages.stamps import ns_to_sec_nanosec, set_stamp
from ros2_bilevel_fusion.messages.strict_json import write_json

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_MSGTYPE = "sensor_msgs/msg/CompressedImage"
#: The input topics of our bags: the node's default subscriptions (IR, visible).
IR_TOPIC = "/ir/image"
VISIBLE_TOPIC = "/visible/image"
LABELS_SIDECAR = "labels.json"
# rosbag2 metadata version written by ROS 2 Kilted (the distro our wheels come from).
BAG_VERSION = 9

class BagError(RuntimeError):
    """A bag is missing, unreadable or holds something we cannot convert."""


@functools.cache
def typestore() -> Typestore:
    """The Kilted message definitions (sensor_msgs, std_msgs, rosgraph_msgs, ...)."""
    return get_typestore(Stores.ROS2_KILTED)


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int  # the bag's record time (not the header stamp)
    raw: bytes  # CDR, exactly as rclpy serialises it

    def decode(self) -> Any:
        """The rosbags dataclass of this message."""
        return typestore().deserialize_cdr(self.raw, self.msgtype)


@dataclass(frozen=True)
class TopicInfo:
    msgtype: str
    count: int


@contextlib.contextmanager
def _open_reader(bag: Path) -> Iterator[Reader]:
    """An opened rosbags Reader; every failure to open becomes a BagError."""
    bag = Path(bag)
    if not (bag / "metadata.yaml").is_file():
        raise BagError(f"{bag} is not a rosbag2 folder (no metadata.yaml)")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as exc:  # rosbags raises several types for a broken bag
        raise BagError(f"cannot open bag {bag}: {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(bag: Path) -> dict[str, TopicInfo]:
    """Topics of a bag with their type and message count."""
    with _open_reader(bag) as reader:
        return {
            topic: TopicInfo(msgtype=info.msgtype or "", count=info.msgcount)
            for topic, info in reader.topics.items()
        }


@dataclass(frozen=True)
class InputTopic:
    """One camera stream of a bag: its topic there and whether it holds CompressedImage."""

    bag_topic: str
    msgtype: str

    @property
    def compressed(self) -> bool:
        return self.msgtype == COMPRESSED_IMAGE_MSGTYPE

    def live_topic(self, node_input: str) -> str:
        """The topic to replay it on for a node reading ``node_input`` (image_transport names:
        a compressed stream goes to ``<node_input>/compressed``)."""
        return f"{node_input}/compressed" if self.compressed else node_input


def _describe_topics(topics: dict[str, TopicInfo]) -> str:
    if not topics:
        return "no topics"
    return ", ".join(f"{name} ({info.msgtype}, {info.count} msgs)"
                     for name, info in sorted(topics.items()))


def find_input_topics(
    bag: Path, ir_topic: str = IR_TOPIC, visible_topic: str = VISIBLE_TOPIC
) -> dict[str, InputTopic]:
    """{"ir": ..., "visible": ...}: the bag's two camera streams, checked before anything runs.

    Each name may be an Image topic, a CompressedImage topic, or an Image topic name whose
    ``/compressed`` sibling is what the bag holds (as image_transport names it). Raises
    :class:`BagError` naming every topic of the bag (type, count) when one is missing, empty or
    not an image.
    """
    topics = bag_topics(bag)
    found: dict[str, InputTopic] = {}
    problems = []
    for stream, flag, name in (("ir", "--ir-topic", ir_topic),
                               ("visible", "--visible-topic", visible_topic)):
        candidates = [name, f"{name.rstrip('/')}/compressed"]
        present = [c for c in candidates if c in topics]
        images = [c for c in present if topics[c].msgtype in (IMAGE_MSGTYPE,
                                                              COMPRESSED_IMAGE_MSGTYPE)]
        if images and topics[images[0]].count > 0:
            found[stream] = InputTopic(images[0], topics[images[0]].msgtype)
        elif images:
            problems.append(f"{stream} topic {images[0]} has no messages")
        elif present:
            problems.append(f"{stream} topic {present[0]} is {topics[present[0]].msgtype}, not "
                            "sensor_msgs/msg/Image or CompressedImage")
        else:
            problems.append(f"{stream} topic {name} is not in the bag (pass {flag})")
    if problems:
        raise BagError(f"{bag}: {'; '.join(problems)}. The bag has: {_describe_topics(topics)}")
    return found


def read_bag(bag: Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """Messages in record-time order, optionally only from ``topics``."""
    with _open_reader(bag) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        if topics is not None and not connections:
            have = {c.topic: TopicInfo(c.msgtype or "", c.msgcount) for c in reader.connections}
            raise BagError(f"{bag}: none of the topics {list(topics)} are in the bag; it has: "
                           f"{_describe_topics(have)}")
        messages = reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # a truncated or corrupt storage file
                raise BagError(f"cannot read {bag}: {exc}") from exc
            yield BagMessage(connection.topic, connection.msgtype, int(timestamp), bytes(raw))


def make_rosbags_image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags sensor_msgs/msg/Image dataclass from a numpy image."""
    types = typestore().types
    height, width, step, data = codec.encode_array(array, encoding)
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return types[IMAGE_MSGTYPE](
        header=types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=data,
    )


@functools.cache
def rclpy_message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy class sensor_msgs.msg.Image."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not available to rclpy: {exc}") from exc


def raw_to_rclpy(raw: bytes, msgtype: str) -> Any:
    """CDR bytes (from a bag) -> rclpy message."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(raw, rclpy_message_class(msgtype))


def rclpy_to_raw(msg: Any) -> bytes:
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def rosbags_to_rclpy(msg: Any) -> Any:
    """rosbags dataclass -> rclpy message, through CDR (fast: the data field is one memcpy)."""
    raw = typestore().serialize_cdr(msg, msg.__msgtype__)
    return raw_to_rclpy(bytes(raw), msg.__msgtype__)


def rclpy_to_rosbags(msg: Any, msgtype: str) -> Any:
    return typestore().deserialize_cdr(rclpy_to_raw(msg), msgtype)


def make_rclpy_image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """An rclpy sensor_msgs/msg/Image from a numpy image."""
    msg = codec.array_to_msg(array, encoding)
    set_stamp(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    return msg


class ImageBagWriter:
    """Write Image topics into a new rosbag2 folder.

    ``compress`` uses zstd: chunk compression inside the file for mcap, whole-file compression
    for sqlite3. rosbags and ``ros2 bag play`` read both.
    """

    def __init__(self, path: Path, storage: str = "sqlite3", compress: bool = False) -> None:
        path = Path(path)
        if path.exists():
            raise BagError(f"{path} already exists; rosbag2 writes a new folder")
        plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
        if storage not in plugins:
            raise BagError(f"storage must be one of {sorted(plugins)}, not {storage!r}")
        self.path = path
        self._writer = Writer(path, version=BAG_VERSION, storage_plugin=plugins[storage])
        if compress:
            mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.FILE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> ImageBagWriter:
        self._writer.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._writer.close()

    def _connection(self, topic: str, msgtype: str) -> Any:
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore()
            )
            self.counts[topic] = 0
        return self._connections[topic]

    def write_message(self, topic: str, msg: Any, record_time_ns: int) -> None:
        """Write any rosbags message dataclass."""
        connection = self._connection(topic, msg.__msgtype__)
        self._writer.write(
            connection, record_time_ns, typestore().serialize_cdr(msg, msg.__msgtype__)
        )
        self.counts[topic] += 1

    def write_image(
        self,
        topic: str,
        array: np.ndarray,
        encoding: str,
        stamp_ns: int,
        frame_id: str,
        record_time_ns: int | None = None,
    ) -> None:
        """Write one image; the record time defaults to the header stamp."""
        msg = make_rosbags_image(array, encoding, stamp_ns, frame_id)
        self.write_message(topic, msg, stamp_ns if record_time_ns is None else record_time_ns)


def label_sidecar_path(bag: Path) -> Path:
    return Path(bag) / LABELS_SIDECAR


def write_label_sidecar(bag: Path, labels: dict[int, list[dict[str, float]]]) -> Path:
    """Write ``labels.json`` into the bag folder (keys: visible header stamps in ns)."""
    path = label_sidecar_path(bag)
    payload = {str(int(stamp)): boxes for stamp, boxes in sorted(labels.items())}
    write_json(path, payload)
    return path


def read_label_sidecar(bag: Path) -> dict[int, list[dict[str, Any]]]:
    """Ground-truth boxes by visible header stamp (ns); empty when the bag has no side-car.

    Each box: ``{"class": int, "cx", "cy", "w", "h": float}`` in pixels of the bag's images.
    """
    path = label_sidecar_path(bag)
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BagError(f"{path}: not valid JSON: {exc}") from exc
    labels: dict[int, list[dict[str, Any]]] = {}
    for stamp, boxes in payload.items():
        labels[int(stamp)] = [
            {
                "class": int(box["class"]),
                "cx": float(box["cx"]),
                "cy": float(box["cy"]),
                "w": float(box["w"]),
                "h": float(box["h"]),
            }
            for box in boxes
        ]
    return labels
