"""ros2_bilevel_fusion: an ament_python package that also installs with plain pip.

Two install paths, one file:

* colcon (``colcon build``) runs ``setup.py develop/install``; setup.cfg sends the console
  scripts to ``<prefix>/lib/ros2_bilevel_fusion``, where ``ros2 run`` and ``ros2 launch`` look.
* pip (``pip install .``, via setuptools.build_meta, which runs ``bdist_wheel`` or
  ``editable_wheel``) puts console scripts in ``<prefix>/bin``; we then also install
  tiny sh wrappers into ``<prefix>/lib/ros2_bilevel_fusion`` that exec their sibling in
  ``../../bin``, so ``ros2 run``-style lookups work too. They are added for wheel builds only,
  so colcon's own scripts are never overwritten.

A PEP 517 build (pip, ``python -m build``) is told apart from colcon's direct ``setup.py``
calls by the backend being loaded (``setuptools.build_meta`` in sys.modules): sys.argv does not
say it, since pip first asks for the metadata (``dist_info``/``egg_info``) and only then builds.
Only PEP 517 builds declare the runtime dependencies (RUNTIME_REQUIREMENTS): with colcon they
come from rosdep (package.xml), and apt's python3-opencv is not a distribution named
opencv-python-headless, so a declared requirement would make the installed scripts refuse to
start, and ``setup.py develop`` would try to fetch it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "ros2_bilevel_fusion"
HERE = Path(__file__).resolve().parent
SHARE = f"share/{PACKAGE}"
LIB = f"lib/{PACKAGE}"

CONSOLE_SCRIPTS = {
    "fusion_node": "ros2_bilevel_fusion.node.fusion_node:main",
    "fusion-replay": "ros2_bilevel_fusion.bag.replay:main",
    "fusion-pairs-to-bag": "ros2_bilevel_fusion.bag.pairs_to_bag:main",
    "fusion-eval": "ros2_bilevel_fusion.evaluation.evaluate:main",
    "fusion-demo": "ros2_bilevel_fusion.evaluation.demo:main",
}
# TensorRT engines and timing caches are built per GPU; never ship them.
SKIP_SUFFIXES = (".engine", ".timing_cache", ".pyc")

PEP517_BUILD = "setuptools.build_meta" in sys.modules
WHEEL_BUILD = PEP517_BUILD or any(arg in ("bdist_wheel", "editable_wheel") for arg in sys.argv)

# What ros2_bilevel_fusion imports (the node, bag tools, fusion-eval, fusion-demo), as PyPI
# names; requirements/runtime.txt lists the same plus the ROS 2 wheels. The ROS 2 Python
# packages themselves (rclpy, messages) are not listed: on PyPI they are the ros-kilted-*
# wheels (requirements/runtime.txt), on a ROS install they come with ROS.
RUNTIME_REQUIREMENTS = [
    "numpy",
    "opencv-python-headless>=4.7",  # cv2.dnn.NMSBoxesBatched (older OpenCV: a slower fallback)
    "onnxruntime",
    "pyyaml",
    "rosbags",
    "scikit-image",
    "pycocotools",  # fusion-eval's COCO mAP
    "matplotlib",  # fusion-eval / fusion-demo plots
]

def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries for every file under ``folder``, keeping sub-folders."""
    entries: dict[str, list[str]] = {}
    root = HERE / folder
    if not root.is_dir():
        return []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(SKIP_SUFFIXES) or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(HERE)
        entries.setdefault(f"{SHARE}/{relative.parent.as_posix()}", []).append(
            relative.as_posix()
        )
    return sorted(entries.items())


def wheel_wrappers() -> list[tuple[str, list[str]]]:
    """Write sh wrappers (lib/<package>/<script> -> ../../bin/<script>) for a wheel build."""
    folder = HERE / "build" / "lib_wrappers"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in CONSOLE_SCRIPTS:
        wrapper = folder / name
        wrapper.write_text(
            "#!/bin/sh\n"
            "# pip installs console scripts in <prefix>/bin; ros2 run/launch look in\n"
            f"# <prefix>/{LIB}. Exec the real one, from any working directory.\n"
            'here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)\n'
            f'exec "$here/../../bin/{name}" "$@"\n'
        )
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        files.append(os.path.relpath(wrapper, HERE))
    return [(LIB, files)]


data_files = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (SHARE, ["package.xml", "README.md"] if (HERE / "README.md").is_file() else ["package.xml"]),
    *tree("launch"),
    *tree("config"),
    *tree("models"),
    *tree("sample"),
]
if WHEEL_BUILD:
    data_files += wheel_wrappers()

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Infrared + visible image fusion (bi-level dynamic learning) with detection "
    "and segmentation, live in ROS 2.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=data_files,
    install_requires=["setuptools", *(RUNTIME_REQUIREMENTS if WHEEL_BUILD else [])],
    extras_require={"test": ["pytest"]},
    zip_safe=False,
    entry_points={"console_scripts": [f"{n} = {t}" for n, t in CONSOLE_SCRIPTS.items()]},
)
