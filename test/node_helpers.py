"""Shared helpers for the fusion_node tests (real rclpy + Fast DDS on loopback, see conftest).

Imported by the node test files as ``from node_helpers import ...``, like fixture_bundle.py (pytest
puts test/ on sys.path). Importing this module skips the importing test module where rclpy is
missing.

* the node process: :func:`start_node` / :func:`stop_node`, :func:`node_session` (start, a
  :class:`Harness`, stop and the log's tail in one ``with``), :func:`fixture_params`;
* waiting: :func:`wait_until` (a condition with a timeout), :func:`wait_for_matching`
  (publishers and subscriptions matched), :func:`publish_until`, :func:`spin_in_background`;
* parameters: :meth:`Harness.parameter_client`, :meth:`Harness.set_parameters`;
* synthetic images: :func:`synthetic_ir`, :func:`synthetic_visible`, :func:`make_pair`,
  :func:`stamped`, :func:`stamp_ns`;
* /diagnostics: :func:`status_values` (one status as key/values), :meth:`Harness.node_status`,
  :meth:`Harness.status`, :func:`drop_count`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import Executor, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros2_bilevel_fusion.messages.codec import array_to_msg  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
VISIBLE_FRAME = "synthetic_visible_optical"
IR_FRAME = "synthetic_ir_optical"
# Deliberately not multiples of 32: the node must pad for the graph and crop back.
HEIGHT, WIDTH = 90, 124
QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
OUTPUT_TOPICS = {
    "fused": Image,
    "segmentation": Image,
    "segmentation/color": Image,
    "debug_image": Image,
    "detections/json": String,
}


# ------------------------------------------------------------------ the node process
def fixture_params(bundle: Path, *params: str) -> tuple[str, ...]:
    """``bundle_path:=bundle``, ``backend:=onnxruntime``, ``threads:=1``, then ``params``."""
    return (f"bundle_path:={bundle}", "backend:=onnxruntime", "threads:=1", *params)


def start_node(
    namespace: str, *params: str, log_path: Path, remaps: tuple[str, ...] = ()
) -> subprocess.Popen:
    """fusion_node (`python -m ros2_bilevel_fusion.node.fusion_node`) in ``namespace``, with
    ``-p`` for each of ``params`` and ``-r`` for each of ``remaps``; stdout and stderr go to
    ``log_path``.

    The environment comes from conftest.
    """
    args = [
        sys.executable,
        "-m",
        "ros2_bilevel_fusion.node.fusion_node",
        "--ros-args",
        "-r",
        f"__ns:={namespace}",
    ]
    for param in params:
        args += ["-p", param]
    for remap in remaps:
        args += ["-r", remap]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_node
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_file = log  # type: ignore[attr-defined]
    return process


def stop_node(process: subprocess.Popen, terminate: bool = True) -> None:
    """SIGTERM (if ``terminate``) and 10 s to exit, then SIGKILL; closes the log file."""
    if process.poll() is None:
        if terminate:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    process.log_file.close()  # type: ignore[attr-defined]


def read_log(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@contextlib.contextmanager
def node_session(
    namespace: str,
    *params: str,
    log_path: Path,
    remaps: tuple[str, ...] = (),
    log_tail: int = 4000,
    terminate: bool = True,
) -> Iterator[tuple[Harness, subprocess.Popen]]:
    """fusion_node started with ``params``/``remaps`` and a :class:`Harness` in ``namespace``.
    On leaving: the harness closed, the node stopped (:func:`stop_node`, ``terminate``), the
    last ``log_tail`` characters of its log printed (0: none)."""
    process = start_node(namespace, *params, log_path=log_path, remaps=remaps)
    harness = Harness(namespace)
    try:
        yield harness, process
    finally:
        harness.close()
        stop_node(process, terminate=terminate)
        if log_tail:
            print(read_log(log_path)[-log_tail:])


# ------------------------------------------------------------------ waiting and spinning
def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Polls ``condition`` every 50 ms; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def matched(publishers: Iterable[Any] = (), subscriptions: Iterable[Any] = ()) -> bool:
    """Every publisher has a subscription and every subscription a publisher."""
    return all(p.get_subscription_count() > 0 for p in publishers) and all(
        s.get_publisher_count() > 0 for s in subscriptions
    )


def wait_for_matching(
    publishers: Iterable[Any] = (),
    subscriptions: Iterable[Any] = (),
    timeout_s: float = 60.0,
    what: str = "discovery",
) -> None:
    publishers, subscriptions = list(publishers), list(subscriptions)
    wait_until(lambda: matched(publishers, subscriptions), timeout_s, what)


def publish_until(
    publish: Callable[[int], Any],
    done: Callable[[], Any],
    timeout_s: float = 20.0,
    period_s: float = 0.1,
) -> None:
    """``publish(0)``, ``publish(1)``, ... every ``period_s`` until ``done()`` (checked after
    each) or ``timeout_s``; no error on the timeout (the caller's assertions say what failed)."""
    deadline = time.monotonic() + timeout_s
    index = 0
    while time.monotonic() < deadline:
        publish(index)
        index += 1
        time.sleep(period_s)
        if done():
            return


def spin_in_background(executor: Executor) -> threading.Thread:
    """``executor.spin()`` in a daemon thread; the end of its context ends it quietly."""

    def spin() -> None:
        try:
            executor.spin()
        except Exception:  # context shut down while spinning
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ /diagnostics
def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """A status's key/values plus 'level' (as a decimal string) and 'message'."""
    values = {kv.key: kv.value for kv in status.values}
    values["level"] = str(status.level[0])
    values["message"] = status.message
    return values


def drop_count(status: dict[str, str] | None, reason: str) -> int:
    """The ``drops.<reason>`` counter of a status (0 where absent)."""
    return int((status or {}).get(f"drops.{reason}", 0))


# ------------------------------------------------------------------ the test rig
@dataclass
class Received:
    messages: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, msg: Any) -> None:
        with self.lock:
            self.messages[topic].append(msg)

    def get(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.messages[topic])


class Harness:
    """A test node in its own context: input publishers, output subscriptions, spinning."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("synthetic_camera_rig", namespace=namespace, context=self.context)
        self.node_ns = f"{namespace}/fusion_node"
        self.pub_ir = self.node.create_publisher(Image, "ir/image", QOS)
        self.pub_visible = self.node.create_publisher(Image, "visible/image", QOS)
        self.received = Received()
        self._parameter_client: Any = None
        self.subs = []
        for topic, msg_type in OUTPUT_TOPICS.items():
            self.subs.append(
                self.node.create_subscription(
                    msg_type, f"{self.node_ns}/{topic}", self._callback(topic), QOS
                )
            )
        self.subs.append(
            self.node.create_subscription(
                DiagnosticArray, "/diagnostics", self._diagnostics_callback, 10
            )
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = spin_in_background(self.executor)

    def _callback(self, topic: str) -> Callable[[Any], None]:
        return lambda msg: self.received.add(topic, msg)

    def _diagnostics_callback(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.received.add("diagnostics", status)

    def subscribe(self, msg_type: Any, topic: str, key: str | None = None) -> Any:
        """Also record ``topic`` (relative to the node: ``<ns>/fusion_node/<topic>``) under
        ``key`` (default: ``topic``); the subscription joins ``subs`` (waited for as ready)."""
        key = topic if key is None else key
        sub = self.node.create_subscription(
            msg_type, f"{self.node_ns}/{topic}", self._callback(key), QOS
        )
        self.subs.append(sub)
        return sub

    def node_status(self) -> dict[str, str] | None:
        """Key/values (+ 'level', 'message') of the newest status of our node, if any."""
        for status in reversed(self.received.get("diagnostics")):
            if status.name.startswith(f"{self.node_ns}:"):
                return status_values(status)
        return None

    def status(self) -> dict[str, str]:
        """:meth:`node_status`, ``{}`` before the first one."""
        return self.node_status() or {}

    def drops(self, reason: str) -> int:
        return drop_count(self.node_status(), reason)

    def fused_count(self) -> int:
        return len(self.received.get("fused"))

    def wait_for(self, condition: Callable[[], Any], timeout_s: float, what: str) -> None:
        wait_until(condition, timeout_s, what)

    def wait_for_discovery(self, timeout_s: float = 60.0, what: str | None = None) -> None:
        """Both input publishers matched (the node's subscriptions), every output matched."""
        wait_for_matching(
            (self.pub_ir, self.pub_visible),
            self.subs,
            timeout_s,
            what or "discovery between the test rig and fusion_node",
        )

    def wait_for_model(self, timeout_s: float = 60.0) -> None:
        self.wait_for(
            lambda: self.status().get("backend", "none") != "none",
            timeout_s,
            "fusion_node to load its model (diagnostics backend != none)",
        )

    def wait_for_node_ready(self, timeout_s: float = 60.0) -> None:
        """Publishers matched (the node's subscriptions) and outputs matched; model loaded."""
        self.wait_for_discovery(timeout_s)
        self.wait_for_model(timeout_s)

    def publish_pair(self, ir_msg: Image, visible_msg: Image) -> None:
        self.pub_ir.publish(ir_msg)
        self.pub_visible.publish(visible_msg)

    def parameter_client(self, timeout_s: float = 20.0) -> Any:
        """fusion_node's AsyncParameterClient (made once), its services found (asserted)."""
        if self._parameter_client is None:
            from rclpy.parameter_client import AsyncParameterClient

            self._parameter_client = AsyncParameterClient(self.node, self.node_ns)
        assert self._parameter_client.wait_for_services(timeout_sec=timeout_s)
        return self._parameter_client

    def set_parameters(self, *params: Any) -> list[Any]:
        """``ros2 param set`` through :meth:`parameter_client`: the SetParametersResult of each
        of ``params`` (rclpy Parameter), 10 s for the reply."""
        client = self._parameter_client or self.parameter_client()
        future = client.set_parameters(list(params))
        self.wait_for(future.done, 10.0, "set_parameters reply")
        return future.result().results

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


# ------------------------------------------------------------------ synthetic images
def synthetic_ir(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Dark background, one hot 32x32 square that moves with the index."""
    ir = np.full((height, width), 40, np.uint8)
    x = 16 + 4 * index
    ir[32:64, x : x + 32] = 250
    return ir


def synthetic_visible(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Horizontal grey ramp with a tint, so the colour restore has chroma to carry."""
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :].repeat(height, 0)
    bgr = np.stack([ramp, ramp * 0.8 + 20, ramp * 0.5 + 40], axis=2)
    return np.clip(bgr + index, 0, 255).astype(np.uint8)


def stamped(msg: Any, stamp: int, frame_id: str | None = None) -> Any:
    """``msg`` with its header stamp set to ``stamp`` (ns) and, if given, its frame_id."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
    if frame_id is not None:
        msg.header.frame_id = frame_id
    return msg


def make_pair(
    index: int,
    base_ns: int,
    ir: np.ndarray | None = None,
    ir_encoding: str = "mono8",
    visible: np.ndarray | None = None,
    height: int = HEIGHT,
    width: int = WIDTH,
) -> tuple[Image, Image]:
    """Pair ``index`` of a 10 Hz synthetic rig starting at ``base_ns``: IR stamped 3 ms before
    the visible image (inside the default 50 ms slop). ``ir``/``visible`` replace the
    generated ``height`` x ``width`` images."""
    stamp = base_ns + index * 100_000_000
    ir_msg = array_to_msg(synthetic_ir(index, height, width) if ir is None else ir, ir_encoding)
    if visible is None:
        visible = synthetic_visible(index, height, width)
    visible_msg = array_to_msg(visible, "bgr8")
    return stamped(ir_msg, stamp - 3_000_000, IR_FRAME), stamped(visible_msg, stamp, VISIBLE_FRAME)


def stamp_ns(header: Any) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec
