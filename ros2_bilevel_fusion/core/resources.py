"""Where the package's data files are: launch files, config, model bundles, the sample bag.

Order of lookup for :func:`share_dir`:

1. ``ROS2_BILEVEL_FUSION_SHARE`` (an explicit override);
2. the source checkout this module was imported from (``package.xml`` next to the package
   folder), so code and data always come from the same tree while developing (this is also what
   a colcon ``--symlink-install`` resolves to);
3. the ament index: ``get_package_share_directory`` with ``AMENT_PREFIX_PATH`` (a colcon install
   or a sourced ROS 2 workspace);
4. ``<prefix>/share/ros2_bilevel_fusion`` when the ament marker is there, for the prefix this
   module was installed into, then ``sys.prefix``: a plain ``pip install`` (venv, ``--user`` or
   ``--prefix``). The pip ROS 2 wheels install their own markers under ``sys.prefix`` but do not
   set ``AMENT_PREFIX_PATH``, so the index in 3 cannot see them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PACKAGE = "ros2_bilevel_fusion"
SHARE_OVERRIDE_ENV = "ROS2_BILEVEL_FUSION_SHARE"
DEFAULT_BUNDLE = "default"
SAMPLE_BAG = "tno_sample"


class ResourceError(FileNotFoundError):
    """The package's share folder (or a file in it) cannot be found."""


def _source_checkout() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # <root>/ros2_bilevel_fusion/core/
    if (root / "package.xml").is_file() and (root / "setup.py").is_file():
        return root
    return None


def _ament_share() -> Path | None:
    if not os.environ.get("AMENT_PREFIX_PATH"):
        return None
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, ValueError, OSError):
        return None


def _prefix_share(prefix: Path) -> Path | None:
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    share = prefix / "share" / PACKAGE
    return share if marker.is_file() and share.is_dir() else None


def share_dir() -> Path:
    """The folder holding launch/, config/, models/, sample/ and package.xml."""
    override = os.environ.get(SHARE_OVERRIDE_ENV)
    if override:
        return Path(override)
    # <prefix>/lib/pythonX.Y/site-packages/ros2_bilevel_fusion/core/resources.py -> <prefix>:
    # covers pip install --prefix/--user, where sys.prefix is not where the package went.
    parents = Path(__file__).resolve().parents
    lookups = (
        _source_checkout,
        _ament_share,
        lambda: _prefix_share(parents[5]) if len(parents) > 5 else None,
        lambda: _prefix_share(Path(sys.prefix)),
    )
    for lookup in lookups:
        candidate = lookup()
        if candidate is not None:
            return candidate
    raise ResourceError(
        f"cannot find the share folder of {PACKAGE}: not a source checkout, not in the ament "
        f"index (AMENT_PREFIX_PATH) and not installed under {sys.prefix}; set "
        f"{SHARE_OVERRIDE_ENV}"
    )


def models_dir() -> Path:
    return share_dir() / "models"


def default_bundle_path() -> Path:
    """The shipped default model bundle folder (models/default)."""
    return models_dir() / DEFAULT_BUNDLE


def sample_dir() -> Path:
    return share_dir() / "sample"


def sample_bag_path() -> Path:
    """The demo's rosbag2 folder (sample/tno_sample)."""
    return sample_dir() / SAMPLE_BAG


def config_path(name: str) -> Path:
    """A file in config/, e.g. ``config_path("fusion.yaml")``."""
    path = share_dir() / "config" / name
    if not path.is_file():
        raise ResourceError(f"no config file {path}")
    return path



def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model files, engine cache keys, the
    pretrained files a bundle's provenance names)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
