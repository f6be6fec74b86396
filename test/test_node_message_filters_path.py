"""fusion_node's message_filters pairing path, which this machine cannot import (message_filters
is not on PyPI): a SYNTHETIC stand-in with message_filters' Python API and its relevant
behaviour drives the node in this process over rclpy + Fast DDS.

Checked: frames that never end in a pair are counted (message_filters counts nothing itself),
and a second pair carrying an already published visible stamp (message_filters pairs a resent
visible frame again) is not published twice.
"""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from node_helpers import (  # noqa: E402
    QOS,
    make_pair,
    matched,
    spin_in_background,
    stamp_ns,
    wait_until,
)
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros2_bilevel_fusion.node import fusion_node  # noqa: E402


class SyntheticSimpleFilter:
    def __init__(self) -> None:
        self.callbacks = []

    def registerCallback(self, callback) -> None:  # noqa: N802 - message_filters' name
        self.callbacks.append(callback)

    def signalMessage(self, *msg) -> None:  # noqa: N802
        for callback in self.callbacks:
            callback(*msg)


class SyntheticApproximateTimeSynchronizer:
    """message_filters' behaviour that matters here: a queue per input keyed by stamp (a
    repeated stamp replaces the queued one), a pair for stamps within slop, only the two paired
    messages leave the queues (older ones stay until queue_size pushes them out), and nothing
    remembers what was already paired."""

    def __init__(self, filters, queue_size: int, slop: float) -> None:
        self.queues: list[dict[int, object]] = [{} for _ in filters]
        self.queue_size, self.slop_ns = queue_size, int(slop * 1e9)
        self.callbacks = []
        self.lock = threading.Lock()
        for index, f in enumerate(filters):
            f.registerCallback(lambda msg, i=index: self.add(i, msg))

    def registerCallback(self, callback) -> None:  # noqa: N802
        self.callbacks.append(callback)

    def add(self, index: int, msg) -> None:
        with self.lock:
            stamp = stamp_ns(msg.header)
            queue = self.queues[index]
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            other = self.queues[1 - index]
            near = [s for s in other if abs(s - stamp) <= self.slop_ns]
            if not near:
                return
            best = min(near, key=lambda s: abs(s - stamp))
            pair = [None, None]
            pair[index], pair[1 - index] = queue.pop(stamp), other.pop(best)
        for callback in self.callbacks:
            callback(*pair)


SYNTHETIC_MESSAGE_FILTERS = types.SimpleNamespace(
    SimpleFilter=SyntheticSimpleFilter,
    ApproximateTimeSynchronizer=SyntheticApproximateTimeSynchronizer,
)


def test_message_filters_path_counts_unpaired_frames_and_drops_duplicate_stamps(
    fixture_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fusion_node, "message_filters", SYNTHETIC_MESSAGE_FILTERS)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = fusion_node.FusionNode(
        context=context,
        namespace="/it_mf",
        parameter_overrides=[
            Parameter("bundle_path", value=str(fixture_bundle)),
            Parameter("backend", value="onnxruntime"),
            Parameter("threads", value=1),
            Parameter("qos", value="reliable"),
            Parameter("qos_depth", value=50),
        ],
    )
    rig = Node("synthetic_camera_rig", namespace="/it_mf", context=context)
    pub_ir = rig.create_publisher(Image, "ir/image", QOS)
    pub_visible = rig.create_publisher(Image, "visible/image", QOS)
    fused: list[Image] = []
    rig.create_subscription(Image, "fusion_node/fused", fused.append, QOS)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(rig)
    spinner = spin_in_background(executor)

    try:
        assert node._pairer is None  # the message_filters branch is the one under test
        wait_until(
            lambda: node._model is not None and matched([pub_ir, pub_visible]),
            60.0,
            "model and discovery",
        )
        base = 1_780_000_000 * 10**9
        # Three visible frames whose IR partner never comes, then a good pair (index 3).
        for index in range(3):
            pub_visible.publish(make_pair(index, base)[1])
            time.sleep(0.05)
        ir3, visible3 = make_pair(3, base)
        pub_ir.publish(ir3)
        pub_visible.publish(visible3)
        wait_until(lambda: len(fused) >= 1, 20.0, "the first fused image")
        # The visible driver resends frame 3 and a new IR frame lands within slop of it.
        ir_again, _ = make_pair(3, base)
        ir_again.header.stamp.nanosec += 1_000_000  # 2 ms before visible instead of 3 ms
        pub_visible.publish(visible3)
        pub_ir.publish(ir_again)
        time.sleep(0.5)
        pub_ir.publish(make_pair(4, base)[0])
        pub_visible.publish(make_pair(4, base)[1])
        wait_until(lambda: len(fused) >= 2, 20.0, "the second fused image")
        wait_until(
            lambda: node._drops.snapshot().get("duplicate_output_stamp", 0) >= 1,
            10.0,
            "the duplicate stamp to be counted",
        )
        time.sleep(0.5)
        stamps = [stamp_ns(m.header) for m in fused]
        assert len(stamps) == len(set(stamps)) == 2, stamps
        drops = node.health().drops
        assert drops.get("pairing_unmatched_visible", 0) == 3, drops
        assert drops.get("duplicate_output_stamp") == 1
    finally:
        executor.shutdown()
        node.destroy_node()
        node.destroy_node()  # idempotent
        rig.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5)
