"""Shared pytest set-up: DDS stays on this machine, in a domain and ROS_HOME of this run's own."""

from __future__ import annotations

import os
import random
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
