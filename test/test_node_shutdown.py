"""Ctrl-C and SIGTERM end fusion_node cleanly: exit status 0, no traceback, every time.

The node runs in its own process (as under ``ros2 run``/``ros2 launch``) with the fixture bundle
and is fed synthetic pairs, so the inference thread is busy when the signal comes. A second
signal while the node is already shutting down (``ros2 launch`` forwards SIGINT and the
terminal sends its own to the process group) must not raise in ``destroy_node`` either.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from node_helpers import fixture_params, make_pair, node_session  # noqa: E402

CASES = [
    ("SIGINT", (signal.SIGINT,)),
    ("SIGINT", (signal.SIGINT,)),
    ("SIGINT twice", (signal.SIGINT, signal.SIGINT)),
    ("SIGINT twice", (signal.SIGINT, signal.SIGINT)),
    ("SIGTERM", (signal.SIGTERM,)),
    ("SIGTERM", (signal.SIGTERM,)),
    ("SIGTERM then SIGINT", (signal.SIGTERM, signal.SIGINT)),
]


@pytest.mark.parametrize(
    ("label", "signals"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_signal_ends_the_node_with_exit_0_and_no_traceback(
    label: str, signals: tuple[int, ...], fixture_bundle: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "fusion_node.log"
    namespace = f"/it_sig{abs(hash((label, str(tmp_path)))) % 10**6}"
    with node_session(
        namespace,
        *fixture_params(fixture_bundle, "qos:=reliable", "diagnostics_period:=0.2"),
        log_path=log_path,
        log_tail=0,
        terminate=False,  # a node still running after its signals is killed, not asked again
    ) as (harness, process):
        harness.wait_for_node_ready()
        base = time.time_ns()
        for index in range(5):  # keep the inference thread busy
            harness.publish_pair(*make_pair(index, base))
            time.sleep(0.02)
        for number in signals:
            process.send_signal(number)
            time.sleep(0.05)
        code = process.wait(timeout=30)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert code == 0, f"{label}: exit status {code}\n{log[-3000:]}"
