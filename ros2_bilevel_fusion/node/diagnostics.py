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

    def count(self, now_s: float) -> int:
        """Events in the last ``window_s`` seconds."""
        with self._lock:
            self._trim(now_s)
            return len(self._times)

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

    A stream's silence counts from the later of its last frame and the moment the flow resumed
    (a frame arriving when no stream had flowed for ``after_s``): after both cameras paused
    together, the one that comes back first does not make the other "silent" before ``after_s``
    has passed since the resume, and a stream never seen is silent since the other began, never
    "for inf s". ``update`` returns the streams that *became* silent since the last call, so
    each silence is counted once; ``silent`` lists every stream silent right now.
    """

    after_s: float = 3.0
    _last: dict[str, float] = field(default_factory=dict)
    _resumed: float = -float("inf")
    _reported: set[str] = field(default_factory=set)

    def seen(self, stream: str, now_s: float) -> None:
        if not any(now_s - t <= self.after_s for t in self._last.values()):
            self._resumed = now_s  # nothing flowed: a (re)start, every silence begins now
        self._last[stream] = now_s
        self._reported.discard(stream)

    def never_seen(self, stream: str) -> bool:
        return stream not in self._last

    def silent(self, now_s: float, streams: Iterable[str]) -> dict[str, float]:
        """stream -> seconds silent (finite), for streams silent > after_s while another flows."""
        streams = list(streams)
        flowing = [s for s in streams if now_s - self._last.get(s, -np.inf) <= self.after_s]
        if not flowing:
            return {}  # everything stopped: a paused bag or no cameras, not one dead camera
        out = {}
        for stream in streams:
            if stream in flowing:
                continue
            since = max(self._last.get(stream, -np.inf), self._resumed)
            if now_s - since > self.after_s:
                out[stream] = now_s - since
        return out

    def update(self, now_s: float, streams: Iterable[str]) -> dict[str, float]:
        silent = self.silent(now_s, streams)
        newly = {s: t for s, t in silent.items() if s not in self._reported}
        self._reported.update(newly)
        return newly


class StampOffsetMeter:
    """How far apart the two streams' stamps are: the smallest |ir - visible| stamp difference
    between the newest stamp of one stream and the recent stamps of the other.

    When both cameras flow but no pair forms, this is the number to compare with ``slop``.
    """

    def __init__(self, keep: int = 20) -> None:
        self._stamps: dict[str, deque[int]] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, stream: str, stamp_ns: int) -> None:
        with self._lock:
            self._stamps.setdefault(stream, deque(maxlen=self._keep)).append(int(stamp_ns))

    def nearest_offset_s(self, a: str = "ir", b: str = "visible") -> float | None:
        with self._lock:
            first, second = self._stamps.get(a), self._stamps.get(b)
            if not first or not second:
                return None
            best = min(
                min(abs(first[-1] - s) for s in second), min(abs(second[-1] - s) for s in first)
            )
        return best * 1e-9


# Stamps further than this from the node clock are not a processing delay: a bag played
# without use_sim_time, or a camera stamping with its own clock.
LATENCY_PLAUSIBLE_S = 60.0
# A stamp this far in the node's future is not clock jitter between machines either.
LATENCY_FUTURE_S = 1.0


class LatencyTracker:
    """Input stamp -> output latency on one clock, with implausible samples kept out.

    A sample is ``now - stamp`` on the node's ROS clock. When it is beyond
    ``LATENCY_PLAUSIBLE_S`` (or more than ``LATENCY_FUTURE_S`` in the future) the two times come
    from different clocks; it is counted, not averaged, and while the newest sample is such,
    :meth:`unavailable` gives the reason latency is not reported.
    """

    def __init__(self, size: int = 200, plausible_s: float = LATENCY_PLAUSIBLE_S) -> None:
        self.window = LatencyWindow(size)
        self.plausible_s = plausible_s
        self.implausible = 0
        self._last_offset_s: float | None = None
        self._last_plausible = True

    def add(self, now_ns: int, stamp_ns: int) -> bool:
        """Record one output; False when the sample was implausible (not added)."""
        latency_s = (int(now_ns) - int(stamp_ns)) * 1e-9
        if -LATENCY_FUTURE_S <= latency_s <= self.plausible_s:
            self.window.add(latency_s * 1e3)
            self._last_plausible = True
            return True
        self.implausible += 1
        self._last_offset_s = latency_s
        self._last_plausible = False
        return False

    @property
    def clock_offset_s(self) -> float | None:
        """node clock - input stamp of the newest implausible sample."""
        return self._last_offset_s

    def unavailable(self) -> str:
        """Why latency is not reported now ('' when it is)."""
        if self._last_plausible:
            return ""
        offset = self._last_offset_s
        where = "behind" if offset >= 0 else "ahead of"
        return (
            f"input stamps are {abs(offset):.1f} s {where} the node clock (a bag played "
            "without use_sim_time, or a camera clock not synchronised to this machine)"
        )

    def percentiles(self) -> list[float] | None:
        return None if self.unavailable() else self.window.percentiles()


# Warning thresholds of the health checks.
RATE_IMBALANCE = 0.5  # one stream below half the other's rate
DROP_RATIO_WARN = 0.5  # more than half the input frames in the window end in no output
MIN_WINDOW_FRAMES = 4  # per stream, before rates and ratios are judged


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
    # Frames in the rate window (the last RateMeter.window_s seconds) per name: ir, visible,
    # pairs, processed. Empty: the window checks are skipped.
    window_counts: Mapping[str, int] = field(default_factory=dict)
    window_s: float = 5.0
    slop_s: float | None = None
    stamp_offset_s: float | None = None  # nearest IR/visible stamp difference (StampOffsetMeter)
    latency_unavailable: str = ""  # LatencyTracker.unavailable()
    clock_offset_s: float | None = None  # node clock - stamp when latency is unavailable
    reload_error: str = ""  # a failed reload while the previous model still serves
    counters: Mapping[str, int] = field(default_factory=dict)  # not drops: nonfinite pixels
    never_seen: tuple[str, ...] = ()
    precision: str = ""  # of the serving graph (fp32, int8)
    # per pair, the node's own work beyond inference (decode, pre/post-processing, encode,
    # publish); p50, p95 as the other windows
    overhead_ms: list[float] | None = None


def _fmt(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "n/a"


def health_key_values(snapshot: HealthSnapshot) -> list[tuple[str, str]]:
    values: list[tuple[str, str]] = [
        ("backend", snapshot.backend or "none"),
        ("model", snapshot.model or "none"),
        ("precision", snapshot.precision or "none"),
        ("qos", snapshot.qos),
    ]
    for name, rate in snapshot.rates_hz.items():
        values.append((f"rate_{name}_hz", _fmt(rate)))
    values += [("pairs", str(snapshot.pairs)), ("processed", str(snapshot.processed))]
    values.append(("drops_total", str(sum(snapshot.drops.values()))))
    for reason in sorted(snapshot.drops):
        values.append((f"drops.{reason}", str(snapshot.drops[reason])))
    ratio = drop_ratio(snapshot)
    if ratio is not None:
        values.append(("drop_ratio", f"{ratio:.2f}"))
    for name in sorted(snapshot.counters):
        values.append((name, str(snapshot.counters[name])))
    for label, window in (
        ("inference_ms", snapshot.inference_ms),
        ("total_ms", snapshot.total_ms),
        ("overhead_ms", snapshot.overhead_ms),
    ):
        if window is not None:
            values += [(f"{label}_p50", _fmt(window[0])), (f"{label}_p95", _fmt(window[1]))]
    if snapshot.use_sim_time:
        # Stamps are sim time and "now" is sim time too, but their difference says nothing
        # about this machine's delay (a bag may play at any rate), so it is not reported.
        values.append(("latency_ms", "n/a (use_sim_time)"))
    elif snapshot.latency_unavailable:
        values.append(("latency_ms", f"n/a ({snapshot.latency_unavailable})"))
        if snapshot.clock_offset_s is not None:
            values.append(("stamp_clock_offset_s", _fmt(snapshot.clock_offset_s)))
    elif snapshot.latency_ms is not None:
        values += [
            ("latency_ms_p50", _fmt(snapshot.latency_ms[0])),
            ("latency_ms_p95", _fmt(snapshot.latency_ms[1])),
        ]
    if snapshot.stamp_offset_s is not None:
        values.append(("stamp_offset_ms", _fmt(snapshot.stamp_offset_s * 1e3)))
    for stream, seconds in sorted(snapshot.silent_streams.items()):
        values.append((f"silent_{stream}_s", _fmt(seconds)))
    if snapshot.model_error:
        values.append(("model_error", snapshot.model_error))
    if snapshot.reload_error:
        values.append(("model_reload_error", snapshot.reload_error))
    return values


def drop_ratio(snapshot: HealthSnapshot) -> float | None:
    """Share of the window's input frames that ended in no output (None: too few frames)."""
    counts = snapshot.window_counts
    seen = counts.get("ir", 0) + counts.get("visible", 0)
    if min(counts.get("ir", 0), counts.get("visible", 0)) < MIN_WINDOW_FRAMES:
        return None
    used = min(seen, 2 * counts.get("processed", 0))
    return 1.0 - used / seen


def health_warnings(snapshot: HealthSnapshot) -> list[tuple[str, str]]:
    """(key, sentence naming the numbers) for every WARN condition, most specific first."""
    warnings: list[tuple[str, str]] = []
    if snapshot.reload_error:
        warnings.append(
            (
                "model_reload",
                f"model reload failed ({snapshot.reload_error}); still serving "
                f"'{snapshot.model}' on {snapshot.backend}",
            )
        )
    for stream, seconds in sorted(snapshot.silent_streams.items()):
        never = " (never received)" if stream in snapshot.never_seen else ""
        warnings.append(
            (
                f"silent_{stream}",
                f"no {stream} images for {seconds:.1f} s{never} while the other stream flows; "
                "check the camera, topic name and QoS",
            )
        )
    counts = snapshot.window_counts
    ir, visible = counts.get("ir", 0), counts.get("visible", 0)
    window = f"the last {snapshot.window_s:g} s"
    if not snapshot.silent_streams and max(ir, visible) >= MIN_WINDOW_FRAMES and min(ir, visible):
        rates = {name: snapshot.rates_hz.get(name, 0.0) for name in ("ir", "visible")}
        slow, fast = sorted(rates, key=rates.get)
        if rates[slow] < RATE_IMBALANCE * rates[fast]:
            warnings.append(
                (
                    "rate_imbalance",
                    f"{slow} arrives at {rates[slow]:.1f} Hz, below half of {fast}'s "
                    f"{rates[fast]:.1f} Hz: pairs form at most at the slower rate",
                )
            )
    if min(ir, visible) >= MIN_WINDOW_FRAMES and counts.get("pairs", 0) == 0:
        offset = snapshot.stamp_offset_s
        measured = (
            f"nearest stamps {offset * 1e3:.1f} ms apart"
            if offset is not None
            else "stamp offset unknown"
        )
        slop = f"slop {snapshot.slop_s * 1e3:.1f} ms" if snapshot.slop_s is not None else "slop"
        warnings.append(
            (
                "no_pairs",
                f"ir ({ir}) and visible ({visible}) images arrive but no pair formed in {window}: "
                f"{measured}, {slop}; are the cameras stamped on one clock?",
            )
        )
    else:
        ratio = drop_ratio(snapshot)
        if ratio is not None and ratio > DROP_RATIO_WARN:
            worst = sorted(snapshot.drops.items(), key=lambda kv: -kv[1])[:3]
            reasons = ", ".join(f"{k} {v}" for k, v in worst if v) or "none counted"
            warnings.append(
                (
                    "drop_ratio",
                    f"{ratio:.0%} of the {ir + visible} input frames of {window} ended in no "
                    f"output ({counts.get('processed', 0)} pairs processed); drops so far: "
                    f"{reasons}",
                )
            )
    return warnings


def health_level(snapshot: HealthSnapshot) -> tuple[int, str]:
    """(level, message): ERROR without a model, WARN for each health_warnings, else OK."""
    if snapshot.model_error or not snapshot.backend:
        return ERROR, f"no model loaded: {snapshot.model_error or 'not loaded yet'}"
    warnings = health_warnings(snapshot)
    if warnings:
        return WARN, "; ".join(text for _, text in warnings)
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
