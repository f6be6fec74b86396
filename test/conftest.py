"""Shared pytest set-up: DDS stays on this machine, in a domain and ROS_HOME of this run's own."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Set before any test imports rclpy, so that every node and subprocess inherits them.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(20, 99)))
os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="ros_home_")
os.environ["ROS_LOG_DIR"] = os.path.join(os.environ["ROS_HOME"], "log")
# Measured here: default transports deliver mono8 beside bgr8 at 30 Hz late or not at all.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixture_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the untrained "fixture" bundle (max fusion, hand-set heads): fixture_bundle.py."""
    from fixture_bundle import make_fixture_bundle

    return make_fixture_bundle(tmp_path_factory.mktemp("fixture_bundle"))


#: The commit whose models/default holds the networks stage 3 and the ablation rows start from
#: (stage 1's fusion net, stage 2's segmenter): training/configs/yolox_semantic.yaml.
STAGE2_COMMIT = "c5f95fa"


@pytest.fixture(scope="session")
def stage2_model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.pt`` (with its ``model.yaml`` and ``model.onnx``) of the models/default of
    :data:`STAGE2_COMMIT`,
    from git history: what ``init_from`` of stage 3 and of the ablation rows loads, for a
    clone without ``runs/``."""
    out = tmp_path_factory.mktemp("stage2_bundle")
    for name in ("model.pt", "model.yaml", "model.onnx"):
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{STAGE2_COMMIT}:models/default/{name}"],
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip(f"git history without {STAGE2_COMMIT} (shallow clone?)")
        (out / name).write_bytes(result.stdout)
    return out / "model.pt"
