"""Approximate-time pairing and the latest-pair mailbox, on synthetic stamp sequences."""

from __future__ import annotations

import threading
import time

import pytest

from ros2_bilevel_fusion.core.pairing import (
    IR_STREAM,
    VISIBLE_STREAM,
    ApproximateTimePairer,
    LatestPairSlot,
    PairAccounting,
    PairingStats,
)

MS = 1_000_000


def ir(pairer: ApproximateTimePairer, stamp_ms: float, name: str | None = None) -> list:
    return pairer.add(IR_STREAM, int(stamp_ms * MS), name or f"ir{stamp_ms:g}")


def vis(pairer: ApproximateTimePairer, stamp_ms: float, name: str | None = None) -> list:
    return pairer.add(VISIBLE_STREAM, int(stamp_ms * MS), name or f"vis{stamp_ms:g}")


def assert_accounted(stats: PairingStats) -> None:
    """Every received message is in a pair, dropped for a reason, or still queued."""
    assert sum(stats.received) == 2 * stats.pairs + stats.dropped_total + sum(stats.queued)


def test_pairs_within_slop_only() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    assert ir(pairer, 0) == []
    assert vis(pairer, 9) == [("ir0", "vis9")]
    assert ir(pairer, 100) == []
    assert vis(pairer, 111) == []  # 11 ms apart, slop 10 ms
    stats = pairer.stats
    assert stats.pairs == 1 and stats.queued == [1, 1]
    assert_accounted(stats)


def test_slop_boundary_is_inclusive_and_zero_slop_pairs_equal_stamps() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    ir(pairer, 0)
    assert vis(pairer, 10) == [("ir0", "vis10")]
    exact = ApproximateTimePairer(queue_size=10, slop_s=0.0)
    ir(exact, 5)
    assert vis(exact, 6) == []
    assert ir(exact, 6) == [("ir6", "vis6")]


def test_closest_stamp_wins_and_older_unmatched_are_dropped() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.050)
    for stamp in (0, 33, 66):
        ir(pairer, stamp)
    assert vis(pairer, 40) == [("ir33", "vis40")]
    stats = pairer.stats
    assert stats.dropped == {"unmatched_ir": 1}  # ir0 can never pair after ir33 did
    assert stats.queued == [1, 0]  # ir66 waits
    assert vis(pairer, 70) == [("ir66", "vis70")]
    assert_accounted(pairer.stats)


def test_tie_prefers_the_older_stamp() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.050)
    ir(pairer, 10)
    ir(pairer, 30)
    assert vis(pairer, 20) == [("ir10", "vis20")]


def test_out_of_order_arrival_is_sorted_by_stamp() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.005)
    ir(pairer, 66)
    ir(pairer, 33)  # arrives late but newer than anything paired: accepted
    ir(pairer, 0)
    assert vis(pairer, 1) == [("ir0", "vis1")]
    assert vis(pairer, 34) == [("ir33", "vis34")]
    assert vis(pairer, 65) == [("ir66", "vis65")]
    stats = pairer.stats
    assert stats.pairs == 3 and stats.dropped == {}
    assert_accounted(stats)


def test_stamp_older_than_last_pair_is_dropped() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    ir(pairer, 100)
    vis(pairer, 100)
    vis(pairer, 95)  # a late visible frame: pairing it would emit a pair out of order
    assert ir(pairer, 133) == []
    assert pairer.stats.dropped == {"stamp_went_backwards": 1}
    assert pairer.stats.queued == [1, 0]
    assert vis(pairer, 134) == [("ir133", "vis134")]
    assert_accounted(pairer.stats)


def test_large_backwards_jump_resets_instead_of_dropping_forever() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010, reset_after_backwards_s=1.0)
    ir(pairer, 5000)
    vis(pairer, 5000)
    ir(pairer, 5033)  # queued, then discarded by the reset
    assert vis(pairer, 0) == []  # bag looped back to its start
    assert ir(pairer, 1) == [("ir1", "vis0")]
    stats = pairer.stats
    assert stats.resets == 1 and stats.dropped == {"clock_reset": 1}
    assert_accounted(stats)


def test_duplicate_stamps() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    ir(pairer, 0, "first")
    ir(pairer, 0, "second")  # replaces the queued one, as message_filters does
    assert vis(pairer, 0) == [("second", "vis0")]
    assert ir(pairer, 0, "third") == []  # same stamp as the last pair
    assert vis(pairer, 0) == []
    stats = pairer.stats
    assert stats.dropped == {"duplicate_stamp": 3}
    assert stats.queued == [0, 0]
    assert_accounted(stats)


def test_silent_stream_keeps_queue_bounded_and_counts_overflow() -> None:
    pairer = ApproximateTimePairer(queue_size=5, slop_s=0.010)
    for frame in range(100):
        assert ir(pairer, frame * 33) == []
    stats = pairer.stats
    assert stats.queued == [5, 0]
    assert stats.dropped == {"queue_overflow": 95}
    assert stats.received_ir == 100 and stats.received_visible == 0
    # The newest five survive: the visible camera coming back pairs with a recent frame.
    assert vis(pairer, 99 * 33) == [("ir3267", "vis3267")]
    assert pairer.stats.dropped["unmatched_ir"] == 4
    assert_accounted(pairer.stats)


def test_message_older_than_a_full_queue_is_dropped_at_once() -> None:
    pairer = ApproximateTimePairer(queue_size=2, slop_s=0.010)
    ir(pairer, 100)
    ir(pairer, 200)
    ir(pairer, 50)
    assert pairer.stats.dropped == {"queue_overflow": 1}
    assert vis(pairer, 50) == []


def test_bursts_pair_one_to_one() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.005)
    stamps = [1000 + 33.3 * k for k in range(10)]
    for stamp in stamps:
        ir(pairer, stamp)
    pairs = []
    for stamp in stamps:
        pairs += vis(pairer, stamp + 2)
    assert [p[0] for p in pairs] == [f"ir{s:g}" for s in stamps]
    assert pairer.stats.pairs == 10 and pairer.stats.dropped == {}


def test_burst_larger_than_queue_loses_the_oldest() -> None:
    pairer = ApproximateTimePairer(queue_size=4, slop_s=0.005)
    for k in range(10):
        ir(pairer, 33 * k)
    pairs = []
    for k in range(10):
        pairs += vis(pairer, 33 * k + 1)
    assert [p[0] for p in pairs] == [f"ir{33 * k}" for k in range(6, 10)]
    stats = pairer.stats
    # 6 IR frames overflow, then 3 visible ones wait in vain (queue of 4) before vis198 pairs.
    assert stats.dropped == {"queue_overflow": 9, "unmatched_visible": 3}
    assert_accounted(stats)


def test_headerless_messages() -> None:
    strict = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    assert strict.add(IR_STREAM, None, "a") == []
    assert strict.stats.dropped == {"headerless": 1}
    now = [1_000 * MS]
    lenient = ApproximateTimePairer(
        queue_size=10, slop_s=0.010, allow_headerless=True, clock_ns=lambda: now[0]
    )
    assert lenient.add(IR_STREAM, None, "a") == []
    now[0] += 5 * MS
    assert lenient.add(VISIBLE_STREAM, None, "b") == [("a", "b")]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ApproximateTimePairer(queue_size=0, slop_s=0.01)
    with pytest.raises(ValueError):
        ApproximateTimePairer(queue_size=5, slop_s=-1.0)
    with pytest.raises(ValueError):
        ApproximateTimePairer(queue_size=5, slop_s=0.01).add(2, 0, "x")


def test_stats_is_a_snapshot() -> None:
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    before = pairer.stats
    ir(pairer, 0)
    assert before.received == [0, 0] and pairer.stats.received == [1, 0]


def test_concurrent_adds_keep_counts_consistent() -> None:
    # Threads are not in lockstep (one may run far ahead), so the queues hold everything.
    pairer = ApproximateTimePairer(queue_size=600, slop_s=0.004)
    pairs: list = []
    pairs_lock = threading.Lock()

    def camera(stream: int, offset_ms: float) -> None:
        for k in range(500):
            out = pairer.add(stream, int((33.3 * k + offset_ms) * MS), k)
            with pairs_lock:
                pairs.extend(out)

    threads = [
        threading.Thread(target=camera, args=(IR_STREAM, 0.0)),
        threading.Thread(target=camera, args=(VISIBLE_STREAM, 1.5)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pairer.stats
    assert stats.received == [500, 500]
    assert stats.pairs == len(pairs)
    assert all(a == b for a, b in pairs)  # frame k only pairs with frame k
    assert stats.pairs == 500
    assert_accounted(stats)


def test_latest_pair_slot_supersedes_unconsumed_pair() -> None:
    slot: LatestPairSlot[str] = LatestPairSlot()
    assert slot.take(0.0) is None
    slot.put("a")
    slot.put("b")
    assert slot.take(0.0) == "b"
    assert slot.take(0.01) is None
    assert slot.dropped_superseded == 1


def test_latest_pair_slot_close_wakes_a_waiting_consumer() -> None:
    slot: LatestPairSlot[int] = LatestPairSlot()
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(slot.take(30.0)))
    consumer.start()
    time.sleep(0.05)
    slot.close()
    consumer.join(5.0)
    assert not consumer.is_alive() and result == [None]
    slot.put(1)  # ignored once closed
    assert slot.take(0.0) is None and slot.closed


def test_latest_pair_slot_threaded_slow_consumer_never_backs_up() -> None:
    slot: LatestPairSlot[int] = LatestPairSlot()
    produced = 2000
    taken: list[int] = []
    done = threading.Event()

    def consumer() -> None:
        while True:
            pair = slot.take(0.5)
            if pair is None:
                if done.is_set():
                    return
                continue
            taken.append(pair)
            time.sleep(0.001)  # "inference" is slower than the producer, outside the lock

    def producer() -> None:
        for k in range(produced):
            slot.put(k)
            if k % 200 == 0:
                time.sleep(0.002)
        done.set()

    threads = [threading.Thread(target=consumer), threading.Thread(target=producer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert not any(thread.is_alive() for thread in threads)
    assert taken == sorted(taken) and len(set(taken)) == len(taken)
    assert taken[-1] == produced - 1  # the newest pair is always delivered
    assert len(taken) + slot.dropped_superseded == produced
    assert slot.dropped_superseded > 0


def test_pair_accounting_counts_what_the_pairer_counts_from_outside() -> None:
    """message_filters counts nothing: PairAccounting, fed only with 'frame seen' and 'pair
    emitted' events, finds the same unmatched frames as the in-package pairer counts itself."""
    import random

    rng = random.Random(7)
    pairer = ApproximateTimePairer(queue_size=50, slop_s=0.02)
    accounting = PairAccounting()
    stamp = [1_000_000_000, 1_000_000_000]
    for _ in range(400):
        stream = rng.randrange(2)
        stamp[stream] += rng.choice([10, 33, 50, 100]) * 1_000_000
        accounting.seen(stream, stamp[stream])
        for ir_item, visible_item in pairer.add(stream, stamp[stream], stamp[stream]):
            accounting.paired(ir_item, visible_item)
    stats = pairer.stats
    assert accounting.pairs == stats.pairs > 20
    assert accounting.received == stats.received
    expected = {k: stats.dropped.get(k, 0) for k in ("unmatched_ir", "unmatched_visible")}
    assert accounting.dropped() == expected
    assert sum(expected.values()) > 20


def test_pair_accounting_bounds_waiting_frames_of_a_stream_that_never_pairs() -> None:
    accounting = PairAccounting(keep=5)
    for i in range(12):
        accounting.seen(0, i)
    assert accounting.dropped() == {"unmatched_ir": 7, "unmatched_visible": 0}
