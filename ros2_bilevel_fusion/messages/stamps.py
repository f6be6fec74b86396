"""Header stamps: builtin_interfaces/Time <-> integer nanoseconds, and the stamp of JSON payloads.

Works on rclpy messages, rosbags' message classes and plain ``{"sec", "nanosec"}`` dicts alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (anything with ``sec`` and ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) with 0 <= nanosec < 1e9."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec


def set_stamp(stamp: Any, stamp_ns: int) -> None:
    """Write ``stamp_ns`` into a builtin_interfaces/Time (``msg.header.stamp``) in place."""
    stamp.sec, stamp.nanosec = ns_to_sec_nanosec(stamp_ns)


def header_stamp_ns(msg: Any, default: int | None = None) -> int:
    """``msg.header.stamp`` in nanoseconds; ``default`` for messages without a header (when
    given, else AttributeError)."""
    header = getattr(msg, "header", None)
    if header is None:
        if default is None:
            raise AttributeError(f"{type(msg).__name__} has no header")
        return default
    return stamp_to_ns(header.stamp)


def dict_to_ns(stamp: Mapping[str, Any]) -> int:
    """``{"sec", "nanosec"}`` (missing fields are 0) -> integer nanoseconds."""
    return int(stamp.get("sec", 0)) * NS_PER_S + int(stamp.get("nanosec", 0))
