"""Packaging: the wheel holds what ros2 run/launch and the demo need, and installs working."""

from __future__ import annotations

import os
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


def test_package_xml_declares_ament_python_and_deps(repo_root: Path) -> None:
    root = ET.parse(repo_root / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.find("export/build_type").text == "ament_python"
    depends = {element.text for element in root if element.tag.endswith("depend")}
    for name in ("rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "message_filters",
                 "cv_bridge", "diagnostic_msgs", "launch", "launch_ros", "python3-numpy",
                 "python3-opencv", "python3-yaml", "python3-pytest"):
        assert name in depends, name


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
