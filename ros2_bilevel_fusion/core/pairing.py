"""Approximate-time pairing of the IR and visible streams, and the latest-pair mailbox.

:class:`ApproximateTimePairer` follows ROS 2 message_filters' Python
``ApproximateTimeSynchronizer(fs, queue_size, slop)`` for two inputs: messages are queued per
input by stamp (a dict, so a repeated stamp replaces the queued message); each queue keeps at
most ``queue_size`` messages, dropping the oldest stamp; on each arrival the other queue is
searched for the stamp closest to the new one, and if it lies within ``slop`` the pair is
emitted and both messages leave their queues. At most one pair is emitted per arrival.

Differences from message_filters, all deliberate and tested:

* Older messages are discarded when a pair is emitted (message_filters leaves them queued until
  ``queue_size`` pushes them out). They can no longer make a pair newer than the one emitted,
  and counting them as ``unmatched_*`` tells the user which camera runs ahead.
* A message whose stamp is not newer than the last paired stamp of its stream is dropped
  (``duplicate_stamp`` if equal, ``stamp_went_backwards`` if older), so pairs leave in stamp
  order. Out-of-order arrival among still-queued messages is accepted and sorted out by stamp.
  A jump backwards of more than ``reset_after_backwards_s`` (a bag replayed in a loop, a
  simulator restart) clears the pairer instead, so it does not drop everything afterwards.
* The slop test is ``|delta| <= slop`` (message_filters requires ``< slop``), so ``slop = 0``
  pairs exactly equal stamps instead of never pairing.
* Headerless messages (``stamp_ns=None``) get the clock's current time when
  ``allow_headerless`` is set, as in message_filters; otherwise they are counted and dropped.
  A zero stamp is an ordinary stamp here: with a driver that never sets its header, every
  frame after the first pair is a ``duplicate_stamp`` (message_filters would keep pairing
  whatever frames happen to be queued); a caller that wants to pair such cameras by arrival
  time passes ``None`` for them.

Every received message ends up in exactly one of: a pair, a ``dropped`` reason, or a queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

IR_STREAM = 0
VISIBLE_STREAM = 1
_STREAM_NAMES = ("ir", "visible")

T = TypeVar("T")


@dataclass
class PairingStats:
    """A snapshot of the pairer's counters (a copy; later arrivals do not change it)."""

    received: list[int] = field(default_factory=lambda: [0, 0])  # [ir, visible]
    pairs: int = 0
    # Reason -> count: queue_overflow, unmatched_ir, unmatched_visible, duplicate_stamp,
    # stamp_went_backwards, clock_reset, headerless.
    dropped: dict[str, int] = field(default_factory=dict)
    queued: list[int] = field(default_factory=lambda: [0, 0])  # [ir, visible] waiting now
    resets: int = 0

    @property
    def received_ir(self) -> int:
        return self.received[IR_STREAM]

    @property
    def received_visible(self) -> int:
        return self.received[VISIBLE_STREAM]

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class ApproximateTimePairer:
    """Pairs (ir, visible) items whose stamps lie within ``slop_s``; thread-safe."""

    def __init__(
        self,
        queue_size: int,
        slop_s: float,
        allow_headerless: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
        reset_after_backwards_s: float = 1.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop_s >= 0.0:
            raise ValueError(f"slop_s must be >= 0, got {slop_s}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop_s * 1e9))
        self.allow_headerless = allow_headerless
        self.reset_after_backwards_ns = int(round(reset_after_backwards_s * 1e9))
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._queues: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        # Stamp of the last paired message of each stream; nothing at or before it is queued.
        self._last_paired: list[int | None] = [None, None]
        self._stats = PairingStats()

    @property
    def stats(self) -> PairingStats:
        with self._lock:
            return PairingStats(
                received=list(self._stats.received),
                pairs=self._stats.pairs,
                dropped=dict(self._stats.dropped),
                queued=[len(q) for q in self._queues],
                resets=self._stats.resets,
            )

    def reset(self) -> None:
        """Forget queued messages (counted as ``clock_reset``) and the last paired stamps."""
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        for queue in self._queues:
            self._drop("clock_reset", len(queue))
            queue.clear()
        self._last_paired = [None, None]
        self._stats.resets += 1

    def _drop(self, reason: str, count: int = 1) -> None:
        if count:
            self._stats.dropped[reason] = self._stats.dropped.get(reason, 0) + count

    def add(self, stream: int, stamp_ns: int | None, item: Any) -> list[tuple[Any, Any]]:
        """Queue one message of ``stream`` (0 = IR, 1 = visible); return the pairs it completes.

        The returned list holds at most one ``(ir_item, visible_item)`` tuple.
        """
        if stream not in (IR_STREAM, VISIBLE_STREAM):
            raise ValueError(f"stream must be 0 (IR) or 1 (visible), got {stream!r}")
        with self._lock:
            self._stats.received[stream] += 1
            if stamp_ns is None:
                if not self.allow_headerless:
                    self._drop("headerless")
                    return []
                stamp_ns = self._clock_ns()
            stamp_ns = int(stamp_ns)
            last = self._last_paired[stream]
            if last is not None and stamp_ns <= last:
                if last - stamp_ns > self.reset_after_backwards_ns:
                    self._reset_locked()
                elif stamp_ns == last:
                    self._drop("duplicate_stamp")
                    return []
                else:
                    self._drop("stamp_went_backwards")
                    return []
            mine = self._queues[stream]
            if stamp_ns in mine:
                self._drop("duplicate_stamp")  # the queued one is replaced, as message_filters
            mine[stamp_ns] = item
            while len(mine) > self.queue_size:
                del mine[min(mine)]
                self._drop("queue_overflow")
            if stamp_ns not in mine:  # it was itself the oldest of a full queue
                return []
            other = self._queues[1 - stream]
            best: int | None = None
            for candidate in other:
                delta = abs(candidate - stamp_ns)
                if delta > self.slop_ns:
                    continue
                if (
                    best is None
                    or delta < abs(best - stamp_ns)
                    or (delta == abs(best - stamp_ns) and candidate < best)
                ):
                    best = candidate
            if best is None:
                return []
            stamps = [0, 0]
            stamps[stream], stamps[1 - stream] = stamp_ns, best
            items = (self._queues[0].pop(stamps[0]), self._queues[1].pop(stamps[1]))
            for index, queue in enumerate(self._queues):
                older = [s for s in queue if s < stamps[index]]
                for s in older:
                    del queue[s]
                self._drop(f"unmatched_{_STREAM_NAMES[index]}", len(older))
                self._last_paired[index] = stamps[index]
            self._stats.pairs += 1
            return [items]


class PairAccounting:
    """Frames seen vs frames that ended in a pair, for a synchroniser that counts nothing
    itself (message_filters' ApproximateTimeSynchronizer).

    ``seen(stream, stamp)`` for every arriving frame, ``paired(ir_stamp, visible_stamp)`` for
    every emitted pair. A frame of a stream older than that stream's newest paired stamp can no
    longer pair: it is counted as ``unmatched_<stream>``, as :class:`ApproximateTimePairer`
    counts it. At most ``keep`` frames per stream wait; older ones are counted as
    ``unmatched_<stream>`` too (the synchroniser's own queue is smaller than that).
    """

    def __init__(self, keep: int = 1000) -> None:
        self.keep = int(keep)
        self._lock = threading.Lock()
        self._waiting: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.received = [0, 0]
        self.pairs = 0
        self.unmatched = [0, 0]

    def seen(self, stream: int, stamp_ns: int) -> None:
        with self._lock:
            self.received[stream] += 1
            waiting = self._waiting[stream]
            waiting[stamp_ns] = waiting.get(stamp_ns, 0) + 1
            while sum(waiting.values()) > self.keep:
                oldest = min(waiting)
                self.unmatched[stream] += 1
                waiting[oldest] -= 1
                if not waiting[oldest]:
                    del waiting[oldest]

    def paired(self, ir_stamp_ns: int, visible_stamp_ns: int) -> None:
        with self._lock:
            self.pairs += 1
            for stream, stamp in ((IR_STREAM, ir_stamp_ns), (VISIBLE_STREAM, visible_stamp_ns)):
                waiting = self._waiting[stream]
                if waiting.get(stamp):
                    waiting[stamp] -= 1
                for old in [s for s in waiting if s <= stamp]:
                    self.unmatched[stream] += waiting.pop(old)

    def dropped(self) -> dict[str, int]:
        """``unmatched_ir`` / ``unmatched_visible`` counts (as ``PairingStats.dropped``)."""
        with self._lock:
            return {
                f"unmatched_{name}": count
                for name, count in zip(_STREAM_NAMES, self.unmatched, strict=True)
            }


class LatestPairSlot(Generic[T]):
    """Single-slot mailbox from the subscription callbacks to the inference thread.

    ``put`` replaces a pair that was not taken yet (counted in ``dropped_superseded``): when
    inference is slower than the cameras the newest pair wins and no backlog builds up. The
    lock is held only to swap the slot, never while a consumer processes a pair.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._pair: T | None = None
        self._full = False
        self._closed = False
        self.dropped_superseded = 0
        self.put_count = 0

    def put(self, pair: T) -> None:
        with self._condition:
            if self._closed:
                return
            self.put_count += 1
            if self._full:
                self.dropped_superseded += 1
            self._pair = pair
            self._full = True
            self._condition.notify()

    def take(self, timeout_s: float | None) -> T | None:
        """The newest pair, waiting up to ``timeout_s``; None on timeout or once closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._full or self._closed, timeout_s)
            if not self._full:
                return None
            pair, self._pair, self._full = self._pair, None, False
            return pair

    def close(self) -> None:
        """Wake every waiting ``take``; later ``put`` calls are ignored."""
        with self._condition:
            self._closed = True
            self._pair, self._full = None, False
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
