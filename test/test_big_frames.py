"""Big frames: memory comes back after one large pair (onnxruntime arena shrink) and the
default pixel limit bounds the size the network runs at. RSS is read from /proc in a fresh
process per case, so other tests' allocations do not blur the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import gc, json, sys, time
import numpy as np
from ros2_bilevel_fusion.backends import create_backend
from ros2_bilevel_fusion.core.bundle import load_bundle
from ros2_bilevel_fusion.core.pipeline import FusionPipeline

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

bundle = load_bundle(sys.argv[1])
limit, big_h, big_w = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
backend = create_backend("onnxruntime", bundle, threads=1)
pipeline = FusionPipeline(backend, max_input_pixels=limit)
# Synthetic frames: a 640x480 camera, then one large pair, then the camera again.
small = (np.full((480, 640), 50, np.uint8), np.full((480, 640, 3), 60, np.uint8))
for _ in range(3):
    pipeline.process(*small)
gc.collect()
before = rss_mb()
rng = np.random.default_rng(0)
ir = rng.integers(0, 256, (big_h, big_w), dtype=np.uint8)
visible = rng.integers(0, 256, (big_h, big_w, 3), dtype=np.uint8)
start = time.perf_counter()
result = pipeline.process(ir, visible)
big_s = time.perf_counter() - start
shape = result.fused_bgr.shape
del result, ir, visible
gc.collect()
after_big = rss_mb()
for _ in range(3):
    pipeline.process(*small)
gc.collect()
print(json.dumps(dict(
    before_mb=before, after_big_mb=after_big, after_mb=rss_mb(), big_s=big_s,
    shape=list(shape), shrinks=backend.arena_shrinks,
)))
"""


def _run(bundle: Path, limit: int, height: int, width: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(limit), str(height), str(width)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=True,
    )
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    print(numbers)
    return numbers


def test_memory_returns_after_one_large_pair_without_a_limit(fixture_bundle: Path) -> None:
    """No pixel limit, one 2048x1536 pair: the arena grows by hundreds of MB for it and gives
    them back on the next normal frame (before this change it kept them for the process)."""
    numbers = _run(fixture_bundle, 0, 1536, 2048)
    assert numbers["shape"] == [1536, 2048, 3]
    assert numbers["after_big_mb"] - numbers["before_mb"] > 150  # the big run did cost memory
    assert numbers["after_mb"] - numbers["before_mb"] < 60
    assert numbers["shrinks"] == 1  # only the first frame after the big one shrinks


def test_default_limit_bounds_a_4096x3072_pair(fixture_bundle: Path) -> None:
    from ros2_bilevel_fusion.node.parameters import SPECS

    limit = SPECS["max_input_pixels"].default
    numbers = _run(fixture_bundle, limit, 3072, 4096)
    assert numbers["shape"] == [3072, 4096, 3]  # results in the full visible geometry
    assert numbers["after_mb"] - numbers["before_mb"] < 60
    assert numbers["after_big_mb"] - numbers["before_mb"] < 400


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# Fast DDS keeps, by default (rmw_fastrtps: PREALLOCATED_WITH_REALLOC), every history slot's
# payload buffer at the largest size it ever held: one 4096x3072 frame leaves ~190 MB in the
# node's input and output pools for good (measured: 183 MB before, 371 MB after 12 more
# 640x480 pairs). DYNAMIC frees a payload with its sample; it is a deployment choice, made
# with this profile and RMW_FASTRTPS_USE_QOS_FROM_XML=1 (QoS still comes from the node).
FASTDDS_DYNAMIC_MEMORY_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <data_writer profile_name="default_writer" is_default_profile="true">
      <historyMemoryPolicy>DYNAMIC</historyMemoryPolicy>
    </data_writer>
    <data_reader profile_name="default_reader" is_default_profile="true">
      <historyMemoryPolicy>DYNAMIC</historyMemoryPolicy>
    </data_reader>
  </profiles>
</dds>
"""


def test_node_serves_a_4096x3072_pair_and_gives_the_memory_back(
    fixture_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over rclpy + Fast DDS: one synthetic 4096x3072 pair between 640x480 frames. The outputs
    keep the full visible geometry; the node's RSS returns near its level before the big pair
    once a few normal frames have followed (output histories hold the last 10 messages), with
    Fast DDS's history memory set to DYNAMIC (see FASTDDS_DYNAMIC_MEMORY_XML)."""
    pytest.importorskip("rclpy")
    profile = tmp_path / "fastdds_dynamic_memory.xml"
    profile.write_text(FASTDDS_DYNAMIC_MEMORY_XML)
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    monkeypatch.setenv("RMW_FASTRTPS_USE_QOS_FROM_XML", "1")
    import numpy as np
    from node_helpers import fixture_params, make_pair, node_session, stamp_ns

    rng = np.random.default_rng(1)
    base = time.time_ns()
    index = 0

    def publish(harness, height: int, width: int) -> int:
        """One synthetic pair of ``height`` x ``width``; returns the visible stamp."""
        nonlocal index
        ir = rng.integers(0, 256, (height, width), dtype=np.uint8)
        visible = np.repeat(ir[:, :, None] // 2, 3, axis=2)  # synthetic, the IR's size
        ir_msg, visible_msg = make_pair(index, base, ir=ir, visible=visible)
        harness.publish_pair(ir_msg, visible_msg)
        index += 1
        return stamp_ns(visible_msg.header)

    def fused_with(harness, stamp: int) -> list:
        return [m for m in harness.received.get("fused") if stamp_ns(m.header) == stamp]

    def camera(harness, fused_wanted: int) -> None:
        """640x480 pairs every 0.1 s until ``fused_wanted`` more fused images came back, then
        until the last pair's: no pair is in flight afterwards. Not one pair per round trip:
        here a 640x480 sample of the rig's writer now and then waits ~3 s (Fast DDS's default
        heartbeat period) for its repair, and that stalled 12+12 round trips for 20-30 s."""
        target = harness.fused_count() + fused_wanted
        deadline = time.monotonic() + 60.0
        while harness.fused_count() < target:
            assert time.monotonic() < deadline, f"{harness.fused_count()} of {target} fused"
            last = publish(harness, 480, 640)
            time.sleep(0.1)
        harness.wait_for(lambda: fused_with(harness, last), 30.0, "the last pair's fused image")

    with node_session(
        "/it_big",
        *fixture_params(fixture_bundle, "qos:=reliable", "diagnostics_period:=0.5"),
        log_path=tmp_path / "fusion_node.log",
        log_tail=0,
    ) as (harness, process):
        harness.wait_for_node_ready()
        # Output histories hold the last 10 messages: 12 fused 640x480 images fill them before
        # the big pair, and 12 more push every 4096x3072 output out of them afterwards.
        camera(harness, 12)
        time.sleep(0.5)
        before = _rss_mb(process.pid)
        start = time.monotonic()
        big_stamp = publish(harness, 3072, 4096)
        harness.wait_for(lambda: fused_with(harness, big_stamp), 60.0, "the big fused image")
        big_s = time.monotonic() - start
        after_big = _rss_mb(process.pid)
        big = fused_with(harness, big_stamp)[0]
        assert (big.height, big.width) == (3072, 4096)
        camera(harness, 12)
        time.sleep(0.5)
        after = _rss_mb(process.pid)
        print(
            f"node RSS: before {before:.0f} MB, after the 4096x3072 pair {after_big:.0f} MB, "
            f"after 12 more 640x480 pairs {after:.0f} MB; big pair round trip {big_s:.2f} s"
        )
        # Measured here (MB, before -> after the big pair -> after 12 more 640x480 pairs):
        # 191 -> 465 -> 240, 200 -> 501 -> 238, 199 -> 521 -> 228, 182 -> 486 -> 219,
        # 182 -> 666 -> 221: the big pair costs 270-480 MB, 28-49 MB of it stay. Bounds with
        # room for another machine's allocator and load: > 100 MB cost (so that its return
        # means something; 170+ MB margin), < 120 MB kept (71+ MB margin; with Fast DDS's
        # default pools ~190 MB stay, see above).
        assert after_big - before > 100, (before, after_big, after)
        assert after - before < 120, (before, after_big, after)
        assert process.poll() is None
