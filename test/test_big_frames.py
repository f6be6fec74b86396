"""Big frames: memory comes back after one large pair (onnxruntime arena shrink) and the
default pixel limit bounds the size the network runs at. RSS is read from /proc in a fresh
process per case, so other tests' allocations do not blur the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
