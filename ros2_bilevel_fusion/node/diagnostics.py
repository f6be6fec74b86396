"""Pure parts of the node's health reporting: rates, latency percentiles, drop counters,
silent-stream detection, and the key/values of its diagnostic_msgs/DiagnosticStatus.

Everything takes times as arguments (seconds on one monotonic clock), so it is tested without
ROS and without sleeping. Only :func:`make_status` touches a ROS message type, imported lazily.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# diagnostic_msgs/DiagnosticStatus levels, repeated here so the pure code needs no ROS import.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self._last: float | None = None

    def tick(self, now_s: float) -> None:
        with self._lock:
            self._times.append(now_s)
            self._last = now_s
            self.total += 1
            self._trim(now_s)

    def _trim(self, now_s: float) -> None:
        while self._times and self._times[0] <= now_s - self.window_s:
            self._times.popleft()

    def rate(self, now_s: float) -> float:
        """Hz: events in the window divided by the span they cover (0 for fewer than two).

        Using the span from the oldest kept event, rather than the full window, gives the true
        rate soon after start instead of under-reporting for the first window.
        """
        with self._lock:
            self._trim(now_s)
            if len(self._times) < 2:
                return 0.0
            span = now_s - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def last(self) -> float | None:
        """Time of the newest event ever seen (kept after it leaves the window)."""
        return self._last


class LatencyWindow:
    """The last ``size`` samples (milliseconds) and their percentiles."""

    def __init__(self, size: int = 200) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value_ms: float) -> None:
        with self._lock:
            self._samples.append(float(value_ms))

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles(self, qs: Iterable[float] = (50.0, 95.0)) -> list[float] | None:
        """Linear-interpolated percentiles (numpy default), or None with no samples yet."""
        with self._lock:
            if not self._samples:
                return None
            values = np.fromiter(self._samples, dtype=np.float64)
        return [float(v) for v in np.percentile(values, list(qs))]


class DropCounter:
    """Thread-safe counts by reason (decode_error_ir, size_mismatch_visible, ...)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass
class SilentStreamWatch:
    """Finds a stream that stopped while the other still flows (a camera that died).

    ``update`` returns the streams that *became* silent since the last call, so each silence
    is counted once; ``silent`` lists every stream silent right now.
    """

    after_s: float = 3.0
    _last: dict[str, float] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def seen(self, stream: str, now_s: float) -> None:
        self._last[stream] = now_s
        self._reported.discard(stream)

    def silent(self, now_s: float, streams: Iterable[str]) -> dict[str, float]:
        """stream -> seconds silent, for streams silent > after_s while another flowed."""
        streams = list(streams)
        flowing = [s for s in streams if now_s - self._last.get(s, -np.inf) <= self.after_s]
        if not flowing:
            return {}  # everything stopped: a paused bag or no cameras, not one dead camera
        out = {}
        for stream in streams:
            if stream in flowing:
                continue
            last = self._last.get(stream)
            out[stream] = float("inf") if last is None else now_s - last
        return out

    def update(self, now_s: float, streams: Iterable[str]) -> dict[str, float]:
        silent = self.silent(now_s, streams)
        newly = {s: t for s, t in silent.items() if s not in self._reported}
        self._reported.update(newly)
        return newly


@dataclass
class HealthSnapshot:
    """What one /diagnostics status reports; built by the node, turned into key/values here."""

    backend: str
    model: str
    qos: str
    rates_hz: Mapping[str, float]
    pairs: int
    processed: int
    drops: Mapping[str, int]
    inference_ms: list[float] | None
    total_ms: list[float] | None
    latency_ms: list[float] | None
    use_sim_time: bool
    silent_streams: Mapping[str, float] = field(default_factory=dict)
    model_error: str = ""


def _fmt(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.2f}"


def health_key_values(snapshot: HealthSnapshot) -> list[tuple[str, str]]:
    values: list[tuple[str, str]] = [
        ("backend", snapshot.backend or "none"),
        ("model", snapshot.model or "none"),
        ("qos", snapshot.qos),
    ]
    for name, rate in snapshot.rates_hz.items():
        values.append((f"rate_{name}_hz", _fmt(rate)))
    values += [("pairs", str(snapshot.pairs)), ("processed", str(snapshot.processed))]
    values.append(("drops_total", str(sum(snapshot.drops.values()))))
    for reason in sorted(snapshot.drops):
        values.append((f"drops.{reason}", str(snapshot.drops[reason])))
    for label, window in (("inference_ms", snapshot.inference_ms), ("total_ms", snapshot.total_ms)):
        if window is not None:
            values += [(f"{label}_p50", _fmt(window[0])), (f"{label}_p95", _fmt(window[1]))]
    if snapshot.use_sim_time:
        # Stamps are sim time and "now" is sim time too, but their difference says nothing
        # about this machine's delay (a bag may play at any rate), so it is not reported.
        values.append(("latency_ms", "n/a (use_sim_time)"))
    elif snapshot.latency_ms is not None:
        values += [
            ("latency_ms_p50", _fmt(snapshot.latency_ms[0])),
            ("latency_ms_p95", _fmt(snapshot.latency_ms[1])),
        ]
    for stream, seconds in sorted(snapshot.silent_streams.items()):
        values.append((f"silent_{stream}_s", _fmt(seconds)))
    if snapshot.model_error:
        values.append(("model_error", snapshot.model_error))
    return values


def health_level(snapshot: HealthSnapshot) -> tuple[int, str]:
    """(level, message): ERROR without a model, WARN when a stream is silent, else OK."""
    if snapshot.model_error or not snapshot.backend:
        return ERROR, f"no model loaded: {snapshot.model_error or 'not loaded yet'}"
    if snapshot.silent_streams:
        names = ", ".join(sorted(snapshot.silent_streams))
        return WARN, f"input stream silent while the other flows: {names}"
    if snapshot.processed == 0:
        return OK, "waiting for image pairs"
    return OK, "fusing"


def make_status(
    name: str, hardware_id: str, level: int, message: str, key_values: Iterable[tuple[str, str]]
) -> Any:
    """A diagnostic_msgs/DiagnosticStatus (imported here: the rest of the module is pure)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=k, value=v) for k, v in key_values]
    return status
