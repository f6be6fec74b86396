"""Packaging: the wheel holds what ros2 run/launch and the demo need, and installs working."""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from ros2_bilevel_fusion.core import resources

PACKAGE = "ros2_bilevel_fusion"
SCRIPTS = ("fusion_node", "fusion-replay", "fusion-pairs-to-bag", "fusion-eval", "fusion-demo")
# What setup.py reads; copied so the build never writes build/ into the shared checkout.
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "package.xml", "README.md", "resource",
           PACKAGE, "launch", "config", "models", "sample")


@pytest.fixture(scope="module")
def wheel(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("pkg_src")
    for name in SOURCES:
        path = repo_root / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.engine"))
        elif path.is_file():
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)],
        check=True, cwd=source, timeout=300,
    )
    wheels = list(out.glob(f"{PACKAGE}-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def _data_entries(wheel: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            info.filename.split(".data/data/", 1)[1]: info
            for info in archive.infolist()
            if ".data/data/" in info.filename
        }


def test_wheel_holds_wrappers_share_files_and_marker(wheel: Path, repo_root: Path) -> None:
    data = _data_entries(wheel)
    for script in SCRIPTS:
        info = data[f"lib/{PACKAGE}/{script}"]
        assert (info.external_attr >> 16) & stat.S_IXUSR, f"{script} wrapper is not executable"
    assert f"share/ament_index/resource_index/packages/{PACKAGE}" in data
    share = f"share/{PACKAGE}"
    for relative in ("package.xml", "launch/fusion.launch.py", "config/fusion.yaml",
                     "config/fusion.rviz", "sample/README.md", "sample/tno_sample/metadata.yaml",
                     "sample/tno_sample/tno_sample.mcap"):
        assert f"{share}/{relative}" in data, relative
    shipped_models = [p for p in (repo_root / "models").rglob("*")
                      if p.is_file() and p.suffix not in (".engine", ".timing_cache", ".pyc")
                      and "__pycache__" not in p.parts]
    for path in shipped_models:
        assert f"{share}/{path.relative_to(repo_root).as_posix()}" in data
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
    for script in SCRIPTS:
        assert f"{script} = " in text


def test_installed_wrapper_runs_from_any_cwd(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    subprocess.run(
        # --ignore-installed: an editable install of the package in this environment would
        # otherwise make pip skip the prefix install ("already installed").
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
         "--prefix", str(prefix), str(wheel)],
        check=True, timeout=300,
    )
    site = next(prefix.glob("lib/python*/site-packages"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop(resources.SHARE_OVERRIDE_ENV, None)
    env.pop("AMENT_PREFIX_PATH", None)
    wrapper = prefix / "lib" / PACKAGE / "fusion-pairs-to-bag"
    run = subprocess.run([str(wrapper), "--help"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--ir-offset-ms" in run.stdout
    # The installed code finds its share folder in the prefix it was installed into.
    probe = subprocess.run(
        [sys.executable, "-c",
         "from ros2_bilevel_fusion.core import resources as r; "
         "print(r.__file__); print(r.share_dir()); print(r.sample_bag_path())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, share, sample = probe.stdout.split()
    assert Path(module_file).is_relative_to(prefix)
    assert Path(share) == prefix / "share" / PACKAGE
    assert (Path(sample) / "metadata.yaml").is_file()


# Top-level modules the package imports -> the PyPI distribution the wheel must require.
# ROS 2 modules come from ROS (or the ros-kilted-* wheels of requirements/runtime.txt).
PYPI_FOR_MODULE = {
    "numpy": "numpy", "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime",
    "yaml": "pyyaml", "rosbags": "rosbags", "skimage": "scikit-image",
    "pycocotools": "pycocotools", "matplotlib": "matplotlib",
}
# Top-level modules -> package.xml keys (rosdep).
ROSDEP_FOR_MODULE = {
    "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces",
    "ament_index_python": "ament_index_python", "sensor_msgs": "sensor_msgs",
    "std_msgs": "std_msgs", "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs", "vision_msgs": "vision_msgs",
    "message_filters": "message_filters", "cv_bridge": "cv_bridge", "launch": "launch",
    "launch_ros": "launch_ros", "numpy": "python3-numpy", "cv2": "python3-opencv",
    "yaml": "python3-yaml", "skimage": "python3-skimage", "matplotlib": "python3-matplotlib",
    "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
}
# Imported only by optional backends (GPU machines) or without a rosdep key (pip).
OPTIONAL_MODULES = {"tensorrt", "cuda", "torch", "pycocotools"}


def _imported_top_modules(repo_root: Path) -> set[str]:
    files = [*(repo_root / PACKAGE).rglob("*.py"), repo_root / "launch" / "fusion.launch.py"]
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return found - stdlib - {PACKAGE}


def _requires_dist(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    requirements = {}
    for line in metadata.get_all("Requires-Dist") or []:
        if "extra ==" in line:
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line)
        requirements[match.group(1).lower()] = match.group(2).strip()
    return requirements


def test_wheel_requires_what_the_package_imports(wheel: Path, repo_root: Path) -> None:
    """The PEP 517 build (pip) declares the runtime dependencies; before, setup.py looked for
    bdist_wheel in sys.argv, which pip's metadata step does not pass, so only setuptools was
    declared and `pip install .` left the node unable to start."""
    requires = _requires_dist(wheel)
    imported = _imported_top_modules(repo_root)
    unknown = imported - set(PYPI_FOR_MODULE) - set(ROSDEP_FOR_MODULE) - OPTIONAL_MODULES
    assert not unknown, f"imports with no declared dependency: {sorted(unknown)}"
    for module, distribution in PYPI_FOR_MODULE.items():
        assert module in imported, f"{module} is declared but never imported"
        assert distribution in requires, distribution
    assert requires["opencv-python-headless"] == ">=4.7"  # cv2.dnn.NMSBoxesBatched
    assert set(requires) == {"setuptools", *PYPI_FOR_MODULE.values()}
    # requirements/runtime.txt: the same distributions plus the ROS 2 wheels.
    lines = [line.split("#")[0].strip() for line in
             (repo_root / "requirements" / "runtime.txt").read_text().splitlines()]
    listed = {re.split(r"[<>=!~ ]", line)[0].lower() for line in lines if line}
    assert {name for name in listed if not name.startswith("ros-")} == set(PYPI_FOR_MODULE.values())


def test_colcon_setup_py_declares_no_pypi_dependencies(repo_root: Path, tmp_path: Path) -> None:
    """colcon runs setup.py directly: there the runtime dependencies come from rosdep."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "package.xml", "resource", PACKAGE):
        path = repo_root / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    egg_base = tmp_path / "egg"
    egg_base.mkdir()
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg_base)],
                   cwd=source, check=True, timeout=120, capture_output=True)
    requires = next(egg_base.glob("*.egg-info/requires.txt")).read_text().split("[", 1)[0]
    assert requires.split() == ["setuptools"]


def test_package_xml_lists_exactly_what_the_code_imports(repo_root: Path) -> None:
    root = ET.parse(repo_root / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.find("export/build_type").text == "ament_python"
    exec_depends = {e.text for e in root if e.tag in ("exec_depend", "depend")}
    imported = _imported_top_modules(repo_root)
    expected = {ROSDEP_FOR_MODULE[m] for m in imported if m in ROSDEP_FOR_MODULE}
    assert exec_depends == expected, (
        f"declared, never imported: {sorted(exec_depends - expected)}; "
        f"imported, not declared: {sorted(expected - exec_depends)}"
    )
    assert {e.text for e in root if e.tag == "test_depend"} == {"python3-pytest"}


def test_setup_cfg_sends_colcon_scripts_to_lib(repo_root: Path) -> None:
    text = (repo_root / "setup.cfg").read_text()
    assert f"script_dir=$base/lib/{PACKAGE}" in text
    assert f"install_scripts=$base/lib/{PACKAGE}" in text


def test_resources_in_source_checkout(repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(resources.SHARE_OVERRIDE_ENV, raising=False)
    assert resources.share_dir() == repo_root
    assert resources.default_bundle_path() == repo_root / "models" / "default"
    assert (resources.sample_bag_path() / "metadata.yaml").is_file()
    assert resources.config_path("fusion.yaml").is_file()
    with pytest.raises(resources.ResourceError):
        resources.config_path("no_such_file.yaml")
    monkeypatch.setenv(resources.SHARE_OVERRIDE_ENV, "/somewhere/else")
    assert resources.share_dir() == Path("/somewhere/else")
