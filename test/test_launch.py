"""launch/fusion.launch.py, config/fusion.yaml and config/fusion.rviz.

launch and launch_ros are not on PyPI (no ros-kilted-launch* wheels either), so the launch file
is checked two ways: everywhere against recording stand-ins of the launch classes (what the file
passes to DeclareLaunchArgument, Node and LogInfo, with its OpaqueFunction run on given argument
values), and, where the real packages import, by building and running the description with them
(those tests skip here with that reason). The parameter file is checked against the node's
parameter table and loaded by rcl for a namespaced node.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import yaml

from ros2_bilevel_fusion.backends import BACKEND_KINDS
from ros2_bilevel_fusion.core.bundle import PreprocessSpec
from ros2_bilevel_fusion.node.parameters import (
    FROM_BUNDLE,
    PARAMETERS,
    SPECS,
    FusionParameters,
    gain_percentiles,
    validate,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / "launch" / "fusion.launch.py"
PARAMS_FILE = REPO_ROOT / "config" / "fusion.yaml"
RVIZ_FILE = REPO_ROOT / "config" / "fusion.rviz"
LAUNCH_ARGUMENTS = {
    "backend": "",
    "bundle": "",
    "qos": "",
    "params_file": None,  # share/config/fusion.yaml, machine dependent
    "ir_topic": "ir/image",
    "visible_topic": "visible/image",
    "namespace": "",
    "use_sim_time": "false",
    "log_level": "info",
    "rviz": "false",
    "fixed_frame": "camera_link",
}


def test_launch_file_declares_every_argument_statically() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    declared = {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument"
    }
    assert declared == set(LAUNCH_ARGUMENTS)
    assert '"fusion_node"' in LAUNCH_FILE.read_text()


# ------------------------------------------------------------------ recording stand-ins
class _Recorded:
    """Stands in for every launch / launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context) -> str:
        return context.launch_configurations[self.args[0]]


def _install_stubs(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {
        "launch": ("LaunchDescription",),
        "launch.actions": ("DeclareLaunchArgument", "LogInfo", "OpaqueFunction"),
        "launch.substitutions": (),
        "launch_ros": (),
        "launch_ros.actions": ("Node",),
    }
    for module_name, classes in names.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls, type(cls, (_Recorded,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    sys.modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration


def _load_module():
    spec = importlib.util.spec_from_file_location("fusion_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_launch(monkeypatch: pytest.MonkeyPatch, **given: str):
    """Load the launch file against stand-ins; return (module, arguments, actions) where the
    actions are what its OpaqueFunction returns for the defaults updated with ``given``."""
    _install_stubs(monkeypatch)
    module = _load_module()
    entities = module.generate_launch_description().args[0]
    arguments = {
        e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"
    }
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    values = {name: kwargs["default_value"] for name, kwargs in arguments.items()}
    values.update(given)
    context = types.SimpleNamespace(launch_configurations=values)
    actions = opaque[0].kwargs["function"](context, **opaque[0].kwargs.get("kwargs", {}))
    return module, arguments, actions


def _nodes(actions, executable: str):
    return [a for a in actions if type(a).__name__ == "Node"
            and a.kwargs.get("executable") == executable]


def test_launch_arguments_defaults_and_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    _module, arguments, _actions = _stub_launch(monkeypatch)
    assert set(arguments) == set(LAUNCH_ARGUMENTS)
    for name, default in LAUNCH_ARGUMENTS.items():
        if default is not None:
            assert arguments[name]["default_value"] == default, name
    # Empty means "the parameter file decides"; the backend list is the one list.
    assert arguments["backend"]["choices"] == ["", *BACKEND_KINDS]
    assert arguments["qos"]["choices"] == ["", "auto", "reliable", "sensor_data"]
    assert arguments["log_level"]["choices"] == ["debug", "info", "warn", "error", "fatal"]
    assert arguments["backend"]["description"].startswith(SPECS["backend"].description)
    assert arguments["params_file"]["default_value"].endswith("fusion.yaml")


def test_defaults_leave_backend_bundle_and_qos_to_the_params_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _module, _arguments, actions = _stub_launch(monkeypatch)
    (node,) = _nodes(actions, "fusion_node")
    params_file, overrides = node.kwargs["parameters"]
    assert params_file.endswith("fusion.yaml")
    assert overrides == {"use_sim_time": False}
    assert node.kwargs["ros_arguments"] == ["--log-level", "info"]
    assert node.kwargs["namespace"] == ""
    assert _nodes(actions, "rviz2") == []


def test_given_arguments_reach_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _module, _arguments, actions = _stub_launch(
        monkeypatch, backend="onnxruntime", bundle="/tmp/synthetic_bundle", qos="reliable",
        use_sim_time="true", log_level="debug", namespace="/robot1",
    )
    (node,) = _nodes(actions, "fusion_node")
    _params_file, overrides = node.kwargs["parameters"]
    assert overrides == {"use_sim_time": True, "backend": "onnxruntime",
                         "bundle_path": "/tmp/synthetic_bundle", "qos": "reliable"}
    assert node.kwargs["ros_arguments"] == ["--log-level", "debug"]
    assert node.kwargs["namespace"] == "/robot1"


def test_topics_are_set_by_remapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _module, _arguments, actions = _stub_launch(
        monkeypatch, ir_topic="/thermal/image_raw", visible_topic="/color/image_raw"
    )
    (node,) = _nodes(actions, "fusion_node")
    # One remap per camera: the node derives <topic>/compressed and camera_info from the
    # resolved image topic, as image_transport does (node/inputs.py).
    assert node.kwargs["remappings"] == [
        ("ir/image", "/thermal/image_raw"),
        ("visible/image", "/color/image_raw"),
    ]
    _params_file, overrides = node.kwargs["parameters"]
    assert not {"ir_topic", "visible_topic"} & set(overrides)


def test_rviz_missing_warns_and_starts_only_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _arguments, _ = _stub_launch(monkeypatch)
    assert module.rviz_available() is False  # no rviz2 in this environment's ament index
    _module, _arguments, actions = _stub_launch(monkeypatch, rviz="true")
    assert _nodes(actions, "rviz2") == []
    assert len(_nodes(actions, "fusion_node")) == 1
    warnings = [a.kwargs["msg"] for a in actions if type(a).__name__ == "LogInfo"]
    assert len(warnings) == 1 and "rviz2 is not installed" in warnings[0]


def test_rviz_config_follows_namespace_topics_and_frame(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _install_stubs(monkeypatch)
    module = _load_module()
    monkeypatch.setattr(module, "rviz_available", lambda: True)
    monkeypatch.setattr(module.tempfile, "tempdir", str(tmp_path))
    entities = module.generate_launch_description().args[0]
    values = {e.args[0]: e.kwargs["default_value"] for e in entities
              if type(e).__name__ == "DeclareLaunchArgument"}
    values.update(rviz="true", namespace="/robot1", ir_topic="thermal/image_raw",
                  visible_topic="/color/image_raw", fixed_frame="thermal_optical_frame")
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    actions = opaque.kwargs["function"](types.SimpleNamespace(launch_configurations=values),
                                        **opaque.kwargs["kwargs"])
    (rviz,) = _nodes(actions, "rviz2")
    flag, path = rviz.kwargs["arguments"]
    assert flag == "-d" and Path(path).parent == tmp_path
    data = yaml.safe_load(Path(path).read_text())
    manager = data["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "thermal_optical_frame"
    topics = {d["Name"]: d["Topic"]["Value"] for d in manager["Displays"]}
    assert topics == {
        "IR": "/robot1/thermal/image_raw",
        "Visible": "/color/image_raw",
        "Fused": "/robot1/fusion_node/fused",
        "Debug (boxes + segmentation)": "/robot1/fusion_node/debug_image",
        "Segmentation colour": "/robot1/fusion_node/segmentation/color",
    }
    assert rviz.kwargs["parameters"] == [{"use_sim_time": False}]


def test_rviz_template_is_the_root_namespace_layout() -> None:
    """Opened directly (rviz2 -d config/fusion.rviz) it shows the defaults; frame not map."""
    data = yaml.safe_load(RVIZ_FILE.read_text())
    manager = data["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "camera_link"
    displays = manager["Displays"]
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays)
    assert {d["Topic"]["Value"] for d in displays} == {
        "/ir/image",
        "/visible/image",
        "/fusion_node/fused",
        "/fusion_node/debug_image",
        "/fusion_node/segmentation/color",
    }


def test_node_subscribes_to_the_inputs_the_launch_remaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch file remaps the node's own relative input names, and the node has no topic
    parameters (topics are set one way only)."""
    from ros2_bilevel_fusion.node import inputs

    module, _arguments, _actions = _stub_launch(monkeypatch)
    assert (module.IR_INPUT, module.VISIBLE_INPUT) == inputs.INPUT_TOPICS == (
        "ir/image", "visible/image")
    assert not {"ir_topic", "visible_topic"} & set(SPECS)


# ------------------------------------------------------------------ the real launch packages
def _launch_modules():
    """launch + launch_ros, or skip. `import launch` alone is not enough: the repo's own
    launch/ folder imports as an empty namespace package when the repo root is on sys.path."""
    try:
        import launch_ros  # noqa: F401

        import launch
    except ImportError as exc:
        pytest.skip(f"launch/launch_ros not importable ({exc}); they are not on PyPI")
    if not hasattr(launch, "LaunchDescription"):
        pytest.skip("`launch` here is the repo's launch/ folder, not the ROS launch package")
    return launch


def _real_context(launch, description, **given: str):
    context = launch.LaunchContext()
    for declared in description.get_launch_arguments():
        default = launch.utilities.perform_substitutions(context, declared.default_value)
        context.launch_configurations[declared.name] = default
    context.launch_configurations.update(given)
    return context


def test_launch_description_builds_with_defaults() -> None:
    launch = _launch_modules()
    description = _load_module().generate_launch_description()
    assert isinstance(description, launch.LaunchDescription)
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == set(LAUNCH_ARGUMENTS)
    context = launch.LaunchContext()
    for name, default in LAUNCH_ARGUMENTS.items():
        value = launch.utilities.perform_substitutions(context, arguments[name].default_value)
        if default is None:
            assert value.endswith("fusion.yaml") and Path(value).is_file()
        else:
            assert value == default


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("backend", "onnxruntime"),
        ("bundle", "/tmp/synthetic_bundle"),
        ("qos", "reliable"),
        ("params_file", str(PARAMS_FILE)),
        ("ir_topic", "/thermal/image_raw"),
        ("visible_topic", "/camera/image_raw"),
        ("namespace", "/robot1"),
        ("use_sim_time", "true"),
        ("log_level", "debug"),
        ("rviz", "true"),
    ],
)
def test_launch_description_expands_each_argument(argument: str, value: str) -> None:
    launch = _launch_modules()
    from launch.actions import OpaqueFunction
    from launch_ros.actions import Node

    description = _load_module().generate_launch_description()
    context = _real_context(launch, description, **{argument: value})
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    actions = opaque.execute(context)
    nodes = [e for e in actions if isinstance(e, Node)]
    fusion = [n for n in nodes if n.node_executable == "fusion_node"]
    assert len(fusion) == 1
    # rviz2 is not installed with the launch packages: rviz:=true warns instead.
    assert not [n for n in nodes if n.node_executable == "rviz2"]
    # Expands every substitution of the node action (namespace, parameters, remaps) as
    # `ros2 launch` does just before starting the process.
    fusion[0]._perform_substitutions(context)
    remaps = dict(fusion[0].expanded_remapping_rules or [])
    namespace = fusion[0].expanded_node_namespace
    param_args = fusion[0]._Node__expanded_parameter_arguments or []  # no public getter
    files = [arg for arg, is_file in param_args if is_file]
    assert any(Path(f).name == "fusion.yaml" for f in files)
    overrides = {}
    for path in files:
        if Path(path).name == "fusion.yaml":
            continue
        for entry in yaml.safe_load(Path(path).read_text()).values():
            overrides.update(entry.get("ros__parameters", {}))
    if argument == "ir_topic":
        assert remaps["ir/image"] == value
    if argument == "visible_topic":
        assert remaps["visible/image"] == value
    if argument == "namespace":
        assert namespace == value
    key = {"backend": "backend", "bundle": "bundle_path", "qos": "qos"}.get(argument)
    if key is not None:
        assert overrides[key] == value
    else:
        assert not {"backend", "bundle_path", "qos"} & set(overrides)
    assert overrides["use_sim_time"] is (argument == "use_sim_time")
    expected_level = value if argument == "log_level" else "info"
    # cmd[0] is the executable, looked up in the ament index at start; the node's own
    # ros_arguments follow "--ros-args" (later parts are the launch's own ROS arguments).
    cmd = fusion[0].cmd
    start = next(i for i, part in enumerate(cmd) if part and getattr(part[0], "text", None)
                 == "--ros-args")
    cmd = [launch.utilities.perform_substitutions(context, part) for part in cmd[start:start + 3]]
    assert "--log-level" in cmd and cmd[cmd.index("--log-level") + 1] == expected_level


_RUN_LAUNCH = textwrap.dedent("""
    import sys
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(sys.argv[1]),
        launch_arguments=[("rviz", "true"), ("bundle", sys.argv[2]),
                          ("backend", "onnxruntime")],
    )]))
    sys.exit(service.run())
""")


def test_rviz_without_rviz2_runs_the_node_and_leaves_no_orphan(
    tmp_path: Path, fixture_bundle: Path
) -> None:
    """The real launch service, a prefix where fusion_node is installed and rviz2 is not:
    the launch keeps running with the node (no rc 1 half-way), and SIGINT ends both."""
    _launch_modules()
    prefix = tmp_path / "prefix"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages"
    marker.mkdir(parents=True)
    (marker / "ros2_bilevel_fusion").write_text("")
    (prefix / "share" / "ros2_bilevel_fusion").mkdir()
    lib = prefix / "lib" / "ros2_bilevel_fusion"
    lib.mkdir(parents=True)
    node_script = lib / "fusion_node"
    node_script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m ros2_bilevel_fusion.node.fusion_node \"$@\"\n"
    )
    node_script.chmod(0o755)
    script = tmp_path / "run_launch.py"
    script.write_text(_RUN_LAUNCH)
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PYTHONPATH": os.pathsep.join(
        p for p in sys.path if p)}
    launch_proc = subprocess.Popen(
        [sys.executable, str(script), str(LAUNCH_FILE), str(fixture_bundle)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while time.monotonic() < deadline and launch_proc.poll() is None:
            children = _fusion_node_pids(launch_proc.pid)
            if children:
                break
            time.sleep(0.5)
        assert launch_proc.poll() is None, launch_proc.communicate()[0]
        assert children, "fusion_node never started"
        time.sleep(2.0)
        assert launch_proc.poll() is None, launch_proc.communicate()[0]
        launch_proc.send_signal(signal.SIGINT)
        output, _ = launch_proc.communicate(timeout=60)
    finally:
        if launch_proc.poll() is None:
            os.killpg(launch_proc.pid, signal.SIGKILL)
    assert "rviz2 is not installed" in output
    assert launch_proc.returncode == 0, output
    for _ in range(20):
        if not [pid for pid in children if _alive(pid)]:
            break
        time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "fusion_node outlived the launch"


def _fusion_node_pids(parent: int) -> list[int]:
    """fusion_node processes started by ``parent`` (the launch service)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"ros2_bilevel_fusion.node.fusion_node" in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_params_file_matches_the_node_parameter_table() -> None:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    params = data["/**/fusion_node"]["ros__parameters"]
    assert set(params) == {spec.name for spec in PARAMETERS}
    for spec in PARAMETERS:
        expected = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        assert params[spec.name] == expected, spec.name
        assert type(params[spec.name]) is type(expected), f"{spec.name}: YAML type differs"
    # Each value is documented by its description, so the file's backend list is BACKEND_KINDS.
    lines = PARAMS_FILE.read_text().splitlines()
    for spec in PARAMETERS:
        line = next(i for i, text in enumerate(lines) if text.strip().startswith(f"{spec.name}:"))
        assert lines[line - 1].strip().startswith(f"# {spec.description}"), spec.name


def test_percentile_parameters_default_to_the_bundle() -> None:
    """The file leaves the thermal stretch to model.yaml; each parameter overrides one end."""
    defaults = FusionParameters.from_values({s.name: s.default for s in PARAMETERS})
    assert defaults.agc_low_percentile == defaults.agc_high_percentile == FROM_BUNDLE
    bundle_pair = PreprocessSpec(thermal_low_percentile=0.5, thermal_high_percentile=99.5)
    assert gain_percentiles(defaults, bundle_pair) == (0.5, 99.5)
    assert gain_percentiles(defaults, PreprocessSpec()) == (1.0, 99.0)  # bundles without it
    low_only = defaults.replace({"agc_low_percentile": 2.0})
    assert gain_percentiles(low_only, bundle_pair) == (2.0, 99.5)
    # A low end is checked against the high end the loaded bundle gives.
    between = defaults.replace({"agc_low_percentile": 99.2})
    assert validate(between, bundle_pair) is None
    reason = validate(between, PreprocessSpec())
    assert reason is not None and "agc_high_percentile (99.0)" in reason
    # Validated against one bundle, applied with another: that bundle's pair, never a non-range.
    assert gain_percentiles(between, PreprocessSpec()) == (1.0, 99.0)


def test_params_file_applies_to_a_namespaced_node(tmp_path: Path, fixture_bundle: Path) -> None:
    """rcl parses the file and its /** wildcard reaches fusion_node in any namespace."""
    rclpy = pytest.importorskip("rclpy")
    from ros2_bilevel_fusion.node.fusion_node import FusionNode

    edited = tmp_path / "fusion.yaml"
    edited.write_text(
        PARAMS_FILE.read_text()
        .replace("score_threshold: -1.0", "score_threshold: 0.42")
        .replace('backend: "auto"', 'backend: "onnxruntime"')
    )
    context = rclpy.Context()
    rclpy.init(
        context=context,
        args=["--ros-args", "--params-file", str(edited), "-p", f"bundle_path:={fixture_bundle}"],
    )
    try:
        node = FusionNode(context=context, namespace="/synthetic_robot")
        try:
            assert node.get_parameter("score_threshold").value == pytest.approx(0.42)
            assert node.get_parameter("backend").value == "onnxruntime"
            assert list(node.get_parameter("homography").value) == [
                1.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                1.0,
            ]
            assert node.params.bundle_path == str(fixture_bundle)
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


