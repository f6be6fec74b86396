"""``fusion-replay``: play a rosbag2 into live topics with its original timing (no rosbag2 needed).

Each message is published when its record time (relative to the bag's first message, divided by
``--rate``) has elapsed on this machine's monotonic clock. ``--loop`` plays the bag again (N times,
or forever with ``--loop`` alone); later loops shift header stamps and /clock by whole bag
lengths so stamps keep increasing, as a live camera's would. ``--restamp`` writes the scheduled
wall-clock publish time into every header (the IR/visible offset is kept), so a subscriber can
measure end-to-end latency on the wall clock. ``--clock`` publishes rosgraph_msgs/Clock with the
bag time for nodes running with use_sim_time.

The scheduling and stamp arithmetic are pure functions; :func:`replay_messages` does the work on
a given rclpy node (so tests can run it in-process) and :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros2_bilevel_fusion.bag.bagio import BagError, BagMessage, bag_topics, raw_to_rclpy, read_bag
from ros2_bilevel_fusion.messages.stamps import header_stamp_ns, set_stamp
from ros2_bilevel_fusion.messages.strict_json import write_json

LOG = logging.getLogger("fusion-replay")

CLOCK_TOPIC = "/clock"
# Bags up to this size are kept in memory after the first loop instead of being re-read.
CACHE_LIMIT_BYTES = 512 * 1024 * 1024


@dataclass
class ReplayOptions:
    bag: Path
    rate: float = 1.0
    loops: int = 1  # 0 = forever
    clock: bool = False
    clock_hz: float = 40.0
    topics: list[str] | None = None
    remaps: dict[str, str] = field(default_factory=dict)
    qos: str = "reliable"  # or sensor_data
    qos_depth: int = 10
    start_delay_s: float = 0.0
    wait_subscribers: int = 0
    wait_timeout_s: float = 30.0
    restamp: bool = False
    linger_s: float = 1.0


@dataclass
class ReplaySummary:
    published: dict[str, int]
    loops_done: int
    duration_s: float
    timing_error_ms_p50: float
    timing_error_ms_p95: float
    subscribers_matched: bool
    interrupted: bool = False


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """['/a:=/b', ...] -> {'/a': '/b'}."""
    remaps = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            raise ValueError(f"remap must look like old:=new, not {item!r}")
        remaps[old] = new
    return remaps


def loop_period_ns(record_times_by_topic: dict[str, Sequence[int]]) -> int:
    """Length of one pass: first to last record time plus one frame interval.

    The frame interval is the largest per-topic median interval, so the first frame of the
    next loop follows the last one as the next frame of that camera would.
    """
    all_times = [t for times in record_times_by_topic.values() for t in times]
    if not all_times:
        raise ValueError("no record times")
    frame_interval = 0
    for times in record_times_by_topic.values():
        intervals = np.diff(np.sort(np.asarray(times, dtype=np.int64)))
        if intervals.size:
            frame_interval = max(frame_interval, int(np.median(intervals)))
    if frame_interval <= 0:
        frame_interval = 100_000_000  # one message per topic: repeat at 10 Hz
    return int(max(all_times) - min(all_times)) + frame_interval


def schedule_offset_ns(record_ns: int, bag_start_ns: int, loop: int, period_ns: int,
                       rate: float) -> int:
    """Wall/monotonic time after the start at which a message is due."""
    return int(round((record_ns - bag_start_ns + loop * period_ns) / rate))


def shifted_stamp_ns(stamp_ns: int, record_ns: int, *, loop: int, period_ns: int, restamp: bool,
                     wall_start_ns: int, bag_start_ns: int, rate: float) -> int:
    """The header stamp to publish.

    restamp: the scheduled wall time of the message plus the header's original offset from its
    record time (so the IR/visible offset inside a pair survives). Otherwise: the original stamp,
    moved on by whole loops.
    """
    if restamp:
        due = wall_start_ns + schedule_offset_ns(record_ns, bag_start_ns, loop, period_ns, rate)
        return due + (stamp_ns - record_ns)
    return stamp_ns + loop * period_ns


def percentile_ms(values_ns: Sequence[int], q: float) -> float:
    if not values_ns:
        return float("nan")
    return float(np.percentile(np.asarray(values_ns, dtype=np.float64), q) / 1e6)


def make_qos(kind: str, depth: int) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if kind not in ("reliable", "sensor_data"):
        raise ValueError(f"qos must be reliable or sensor_data, not {kind!r}")
    reliability = (
        ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT
    )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=reliability,
        durability=DurabilityPolicy.VOLATILE,
    )


class _BagSource:
    """Messages of one pass; cached after the first pass when the bag is small."""

    def __init__(self, bag: Path, topics: Sequence[str] | None) -> None:
        self.bag, self.topics = bag, topics
        self.cache: list[BagMessage] | None = None

    def first_pass_info(self) -> tuple[dict[str, list[int]], dict[str, str], int]:
        record_times: dict[str, list[int]] = {}
        types: dict[str, str] = {}
        total = 0
        cached: list[BagMessage] = []
        for message in read_bag(self.bag, self.topics):
            record_times.setdefault(message.topic, []).append(message.timestamp_ns)
            types[message.topic] = message.msgtype
            total += len(message.raw)
            if total <= CACHE_LIMIT_BYTES:
                cached.append(message)
        self.cache = cached if total <= CACHE_LIMIT_BYTES else None
        return record_times, types, total

    def messages(self) -> Iterable[BagMessage]:
        return self.cache if self.cache is not None else read_bag(self.bag, self.topics)


def replay_messages(node: Any, options: ReplayOptions,
                    stop: threading.Event | None = None) -> ReplaySummary:
    """Publish the bag on ``node``'s publishers with the bag's timing; returns a summary."""
    from rosgraph_msgs.msg import Clock

    if options.rate <= 0:
        raise ValueError("rate must be positive")
    stop = stop or threading.Event()
    source = _BagSource(Path(options.bag), options.topics)
    record_times, types, _ = source.first_pass_info()
    if not record_times:
        raise BagError(f"{options.bag}: no messages to play")
    bag_start_ns = min(min(times) for times in record_times.values())
    period_ns = loop_period_ns(record_times)
    message_count = sum(len(times) for times in record_times.values())
    qos = make_qos(options.qos, options.qos_depth)
    publishers = {
        topic: node.create_publisher(_message_class(msgtype), options.remaps.get(topic, topic), qos)
        for topic, msgtype in types.items()
    }
    clock_publisher = node.create_publisher(Clock, CLOCK_TOPIC, 10) if options.clock else None
    LOG.info(
        "bag %s: %d messages per pass on %s, pass length %.2f s, rate %.2f, qos %s, loops %s",
        options.bag, message_count, sorted(publishers), period_ns / 1e9, options.rate,
        options.qos, options.loops or "forever",
    )

    matched = _wait_for_subscribers(publishers, options, stop)
    if options.start_delay_s > 0:
        stop.wait(options.start_delay_s)

    published = dict.fromkeys(publishers, 0)
    lateness_ns: list[int] = []
    wall_start_ns, mono_start_ns = time.time_ns(), time.monotonic_ns()
    clock_period_ns = int(1e9 / options.clock_hz) if options.clock_hz > 0 else 0
    last_clock_mono = 0
    loop = 0

    def publish_clock(sim_ns: int) -> None:
        message = Clock()
        set_stamp(message.clock, sim_ns)
        clock_publisher.publish(message)

    def sim_time_at(offset_ns: int) -> int:
        # Bag time (or wall time when restamping) that corresponds to a schedule offset.
        if options.restamp:
            return wall_start_ns + offset_ns
        return bag_start_ns + int(offset_ns * options.rate)

    while not stop.is_set() and (options.loops == 0 or loop < options.loops):
        for message in source.messages():
            if stop.is_set():
                break
            offset = schedule_offset_ns(message.timestamp_ns, bag_start_ns, loop, period_ns,
                                        options.rate)
            due_mono = mono_start_ns + offset
            # Sleep until due, ticking /clock meanwhile.
            while True:
                now = time.monotonic_ns()
                if now >= due_mono or stop.is_set():
                    break
                if clock_publisher is not None and now - last_clock_mono >= clock_period_ns:
                    publish_clock(sim_time_at(now - mono_start_ns))
                    last_clock_mono = now
                wait_ns = due_mono - now
                if clock_publisher is not None and clock_period_ns:
                    wait_ns = min(wait_ns, clock_period_ns)
                time.sleep(wait_ns / 1e9)
            if stop.is_set():
                break
            if clock_publisher is not None:
                publish_clock(sim_time_at(offset))
                last_clock_mono = time.monotonic_ns()
            payload = _payload(message, loop, period_ns, options, wall_start_ns, bag_start_ns)
            lateness_ns.append(time.monotonic_ns() - due_mono)
            publishers[message.topic].publish(payload)
            published[message.topic] += 1
        if not stop.is_set():
            loop += 1
    interrupted = stop.is_set()
    duration_s = (time.monotonic_ns() - mono_start_ns) / 1e9
    if options.linger_s > 0 and not interrupted:
        # Reliable writers may still be resending the last samples; let them finish.
        time.sleep(options.linger_s)
    summary = ReplaySummary(
        published={options.remaps.get(t, t): n for t, n in published.items()},
        loops_done=loop,
        duration_s=duration_s,
        timing_error_ms_p50=percentile_ms(lateness_ns, 50),
        timing_error_ms_p95=percentile_ms(lateness_ns, 95),
        subscribers_matched=matched,
        interrupted=interrupted,
    )
    for publisher in publishers.values():
        node.destroy_publisher(publisher)
    if clock_publisher is not None:
        node.destroy_publisher(clock_publisher)
    return summary


def _message_class(msgtype: str) -> type:
    from ros2_bilevel_fusion.bag.bagio import rclpy_message_class

    return rclpy_message_class(msgtype)


def _payload(message: BagMessage, loop: int, period_ns: int, options: ReplayOptions,
             wall_start_ns: int, bag_start_ns: int) -> Any:
    """The message to publish: raw CDR when unchanged, else a restamped rclpy message."""
    if not options.restamp and loop == 0:
        return message.raw  # rclpy publishes serialized bytes as they are
    msg = raw_to_rclpy(message.raw, message.msgtype)
    if not hasattr(msg, "header"):
        return message.raw
    set_stamp(msg.header.stamp, shifted_stamp_ns(
        header_stamp_ns(msg), message.timestamp_ns, loop=loop, period_ns=period_ns,
        restamp=options.restamp, wall_start_ns=wall_start_ns, bag_start_ns=bag_start_ns,
        rate=options.rate,
    ))
    return msg


def _wait_for_subscribers(publishers: dict[str, Any], options: ReplayOptions,
                          stop: threading.Event) -> bool:
    if options.wait_subscribers <= 0:
        return True
    deadline = time.monotonic() + options.wait_timeout_s
    while not stop.is_set():
        counts = {topic: pub.get_subscription_count() for topic, pub in publishers.items()}
        if all(n >= options.wait_subscribers for n in counts.values()):
            LOG.info("subscribers matched: %s", counts)
            return True
        if time.monotonic() > deadline:
            LOG.warning("only %s subscribers after %.0f s (wanted %d each); playing anyway",
                        counts, options.wait_timeout_s, options.wait_subscribers)
            return False
        time.sleep(0.05)
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-replay", description="Play a rosbag2 (sqlite3 or mcap) into live topics."
    )
    parser.add_argument("bag", type=Path)
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", nargs="?", type=int, const=0, default=1, metavar="N",
                        help="play N times (alone: forever)")
    parser.add_argument("--clock", action="store_true", help="publish /clock (use_sim_time)")
    parser.add_argument("--clock-hz", type=float, default=40.0)
    parser.add_argument("--topics", nargs="+", default=None, help="only these bag topics")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW")
    parser.add_argument("--qos", choices=["reliable", "sensor_data"], default="reliable")
    parser.add_argument("--qos-depth", type=int, default=10)
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="S",
                        help="seconds to wait after subscribers matched")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="wait until every topic has N subscribers before playing")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="S")
    parser.add_argument("--restamp", action="store_true",
                        help="header stamps = scheduled wall-clock publish time")
    parser.add_argument("--linger", type=float, default=1.0, metavar="S",
                        help="keep publishers alive S seconds after the last message")
    parser.add_argument("--summary-json", type=Path, default=None,
                        help="write the summary (counts, timing error) to this file")
    return parser


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(
        bag=args.bag, rate=args.rate, loops=args.loop, clock=args.clock, clock_hz=args.clock_hz,
        topics=args.topics, remaps=parse_remaps(args.remap), qos=args.qos,
        qos_depth=args.qos_depth, start_delay_s=args.start_delay,
        wait_subscribers=args.wait_subscribers, wait_timeout_s=args.wait_timeout,
        restamp=args.restamp, linger_s=args.linger,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        if options.rate <= 0:
            raise ValueError("--rate must be positive")
        # Check the bag before touching ROS, so a wrong path is a clear one-line error.
        topics = bag_topics(options.bag)
    except (ValueError, BagError) as exc:
        LOG.error("%s", exc)
        return 2
    missing = [t for t in options.topics or [] if t not in topics]
    if missing:
        LOG.error("topics %s are not in %s (it has %s)", missing, options.bag, sorted(topics))
        return 2
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("fusion_replay")
    try:
        summary = replay_messages(node, options, stop)
    except (BagError, ValueError) as exc:
        LOG.error("%s", exc)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    LOG.info(
        "published %s in %.2f s (%d loops%s); timing error p50 %.2f ms, p95 %.2f ms",
        summary.published, summary.duration_s, summary.loops_done,
        ", interrupted" if summary.interrupted else "", summary.timing_error_ms_p50,
        summary.timing_error_ms_p95,
    )
    if args.summary_json is not None:
        write_json(args.summary_json, asdict(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
