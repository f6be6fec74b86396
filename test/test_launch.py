"""launch/fusion.launch.py, config/fusion.yaml and config/fusion.rviz.

launch and launch_ros are not on PyPI, so the tests that build the LaunchDescription skip here
with that reason; the file is still checked statically (it parses, declares every argument),
and the parameter file is checked against the node's parameter table and loaded by rcl for a
namespaced node.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
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
    "backend": "auto",
    "bundle": "",
    "params_file": None,  # share/config/fusion.yaml, machine dependent
    "ir_topic": "ir/image",
    "visible_topic": "visible/image",
    "namespace": "",
    "use_sim_time": "false",
    "rviz": "false",
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


class _Recorded:
    """Stands in for every launch / launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _generate_with_recording_stubs(monkeypatch: pytest.MonkeyPatch) -> _Recorded:
    """Run generate_launch_description against stub launch modules (the real ones are not on
    PyPI), so what the file passes to DeclareLaunchArgument and Node is checked everywhere."""
    import types

    names = {
        "launch": ("LaunchDescription",),
        "launch.actions": ("DeclareLaunchArgument",),
        "launch.conditions": ("IfCondition",),
        "launch.substitutions": ("LaunchConfiguration",),
        "launch_ros": (),
        "launch_ros.actions": ("Node",),
        "launch_ros.parameter_descriptions": ("ParameterValue",),
    }
    for module_name, classes in names.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls, type(cls, (_Recorded,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    return _generate()


def test_launch_arguments_follow_the_parameter_table(monkeypatch: pytest.MonkeyPatch) -> None:
    description = _generate_with_recording_stubs(monkeypatch)
    entities = description.args[0]
    arguments = {
        e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"
    }
    assert set(arguments) == set(LAUNCH_ARGUMENTS)
    for name, default in LAUNCH_ARGUMENTS.items():
        if default is not None:
            assert arguments[name]["default_value"] == default, name
    backend = arguments["backend"]
    assert backend["default_value"] == SPECS["backend"].default
    assert "|".join(BACKEND_KINDS) in backend["description"]
    assert backend["description"] == SPECS["backend"].description
    node = next(e for e in entities if e.kwargs.get("executable") == "fusion_node")
    remapped = [source for source, _target in node.kwargs["remappings"]]
    assert remapped == [SPECS["ir_topic"].default, SPECS["visible_topic"].default]


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


def _generate():
    spec = importlib.util.spec_from_file_location("fusion_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def test_launch_description_builds_with_defaults() -> None:
    launch = _launch_modules()
    description = _generate()
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
        ("params_file", str(PARAMS_FILE)),
        ("ir_topic", "/thermal/image_raw"),
        ("visible_topic", "/camera/image_raw"),
        ("namespace", "/robot1"),
        ("use_sim_time", "true"),
        ("rviz", "true"),
    ],
)
def test_launch_description_builds_with_each_argument(argument: str, value: str) -> None:
    launch = _launch_modules()
    from launch_ros.actions import Node

    description = _generate()
    context = launch.LaunchContext()
    for declared in description.get_launch_arguments():
        default = launch.utilities.perform_substitutions(context, declared.default_value)
        context.launch_configurations[declared.name] = default
    context.launch_configurations[argument] = value
    nodes = [e for e in description.entities if isinstance(e, Node)]
    fusion = [n for n in nodes if n.node_executable == "fusion_node"]
    rviz = [n for n in nodes if n.node_executable == "rviz2"]
    assert len(fusion) == 1 and len(rviz) == 1
    assert rviz[0].condition.evaluate(context) is (argument == "rviz")
    # Expands every substitution of the node action (namespace, parameters, remaps) as
    # `ros2 launch` does just before starting the process.
    fusion[0]._perform_substitutions(context)
    remaps = dict(fusion[0].expanded_remapping_rules or [])
    namespace = fusion[0].expanded_node_namespace
    param_args = fusion[0]._Node__expanded_parameter_arguments or []  # no public getter
    files = [arg for arg, is_file in param_args if is_file]
    assert any(Path(f).name == "fusion.yaml" for f in files)
    if argument == "ir_topic":
        assert remaps["ir/image"] == value
    if argument == "visible_topic":
        assert remaps["visible/image"] == value
    if argument == "namespace":
        assert namespace == value
    if argument in ("backend", "bundle", "use_sim_time"):
        # The override dict becomes a temporary parameter file; check the value in it.
        overrides = {}
        for path in files:
            for entry in yaml.safe_load(Path(path).read_text()).values():
                overrides.update(entry.get("ros__parameters", {}))
        key = {"backend": "backend", "bundle": "bundle_path", "use_sim_time": "use_sim_time"}
        expected = {"true": True}.get(value, value)
        assert overrides[key[argument]] == expected


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


def test_rviz_config_shows_inputs_and_outputs() -> None:
    data = yaml.safe_load(RVIZ_FILE.read_text())
    displays = data["Visualization Manager"]["Displays"]
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays)
    topics = {d["Topic"]["Value"] for d in displays}
    assert topics == {
        "/ir/image",
        "/visible/image",
        "/fusion_node/fused",
        "/fusion_node/debug_image",
        "/fusion_node/segmentation/color",
    }
