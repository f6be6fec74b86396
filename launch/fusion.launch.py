"""Launch fusion_node (and optionally RViz 2) with the package's parameter file.

    ros2 launch ros2_bilevel_fusion fusion.launch.py ir_topic:=/thermal/image_raw \
        visible_topic:=/camera/image_raw namespace:=/robot1 rviz:=true fixed_frame:=camera_link

Arguments (``ros2 launch ... --show-args`` lists them with descriptions):

* ``ir_topic``, ``visible_topic``: the camera topics. Topics are set one way only, by remapping:
  the node subscribes to its relative ``ir/image`` and ``visible/image`` (so they follow
  ``namespace``), and these arguments remap them. As for any image_transport subscriber, the
  ``compressed`` transport (node parameters ``ir_transport``/``visible_transport``) and
  camera_info follow the remapped name: ``ir_topic:=/thermal/image_raw`` also moves
  ``/thermal/image_raw/compressed`` and ``/thermal/camera_info``.
* ``backend``, ``bundle``, ``qos``: passed to the node's ``backend``, ``bundle_path`` and ``qos``
  parameters only when given (non-empty); left empty, the parameter file (``params_file``)
  decides. ``backend`` choices are ``backends.BACKEND_KINDS``; ``qos`` is auto|reliable|sensor_data.
* ``namespace``, ``use_sim_time`` (true when replaying a bag with /clock), ``log_level``.
* ``rviz``: start RViz 2 with ``config/fusion.rviz`` rewritten for this launch: its image topics
  follow ``namespace`` and the topic arguments, and its Fixed Frame is ``fixed_frame`` (the
  cameras' ``header.frame_id``; default ``camera_link``). Where rviz2 is not installed (pip-only
  ROS), the launch warns and runs the node alone instead of failing half-started.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from ros2_bilevel_fusion.backends import BACKEND_KINDS
from ros2_bilevel_fusion.core.resources import share_dir
from ros2_bilevel_fusion.node.parameters import IR_IMAGE_TOPIC, SPECS, VISIBLE_IMAGE_TOPIC

PACKAGE = "ros2_bilevel_fusion"
NODE_NAME = "fusion_node"
# The node's own (relative) inputs; the topic arguments remap them.
IR_INPUT = IR_IMAGE_TOPIC
VISIBLE_INPUT = VISIBLE_IMAGE_TOPIC
QOS_CHOICES = ("auto", "reliable", "sensor_data")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
DEFAULT_FIXED_FRAME = "camera_link"
# RViz display name -> what it shows; inputs are remapped, outputs are the node's ~/ topics.
RVIZ_INPUTS = {"IR": "ir", "Visible": "visible"}
RVIZ_OUTPUTS = {
    "Fused": "fused",
    "Debug (boxes + segmentation)": "debug_image",
    "Segmentation colour": "segmentation/color",
}
TRUE_WORDS = ("true", "1", "yes", "on")


def _description(name: str, fallback: str) -> str:
    """The node parameter's description when the table still has it."""
    spec = SPECS.get(name)
    return spec.description if spec is not None else fallback


def launch_arguments(share: Path) -> list[DeclareLaunchArgument]:
    return [
        DeclareLaunchArgument(
            "backend",
            default_value="",
            choices=["", *BACKEND_KINDS],
            description=_description("backend", "Inference backend")
            + "; empty: the parameter file's value",
        ),
        DeclareLaunchArgument(
            "bundle",
            default_value="",
            description=_description("bundle_path", "Model bundle folder")
            + "; empty: the parameter file's value",
        ),
        DeclareLaunchArgument(
            "qos",
            default_value="",
            choices=["", *QOS_CHOICES],
            description=_description("qos", "Input QoS") + "; empty: the parameter file's value",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=str(share / "config" / "fusion.yaml"),
            description="fusion_node parameter file",
        ),
        DeclareLaunchArgument(
            "ir_topic",
            default_value=IR_INPUT,
            description=f"IR image topic (the node's {IR_INPUT} is remapped to it; its "
            "/compressed and camera_info follow)",
        ),
        DeclareLaunchArgument(
            "visible_topic",
            default_value=VISIBLE_INPUT,
            description=f"Visible image topic (the node's {VISIBLE_INPUT} is remapped to it; "
            "its /compressed and camera_info follow)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (bag replay)"
        ),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=list(LOG_LEVELS),
            description="fusion_node log level",
        ),
        DeclareLaunchArgument(
            "rviz", default_value="false",
            description="Start RViz 2 (skipped with a warning where rviz2 is not installed)",
        ),
        DeclareLaunchArgument(
            "fixed_frame",
            default_value=DEFAULT_FIXED_FRAME,
            description="RViz Fixed Frame: the cameras' header.frame_id",
        ),
    ]


def remappings(ir_topic: str, visible_topic: str) -> list[tuple[str, str]]:
    return [(IR_INPUT, ir_topic), (VISIBLE_INPUT, visible_topic)]


def parameter_overrides(values: dict[str, str]) -> dict[str, Any]:
    """The node parameters the launch sets: use_sim_time always, the rest only when given."""
    overrides: dict[str, Any] = {"use_sim_time": values["use_sim_time"].lower() in TRUE_WORDS}
    for argument, parameter in (("backend", "backend"), ("bundle", "bundle_path"),
                                ("qos", "qos")):
        if values[argument].strip():
            overrides[parameter] = values[argument].strip()
    return overrides


def resolve_topic(namespace: str, topic: str) -> str:
    """Absolute name of ``topic`` for a node in ``namespace`` (no ~ here)."""
    if topic.startswith("/"):
        return topic
    return "/" + "/".join(part for part in (namespace.strip("/"), topic.strip("/")) if part)


def rviz_config(template: Path, values: dict[str, str]) -> dict[str, Any]:
    """config/fusion.rviz with its topics and Fixed Frame set for this launch."""
    data = yaml.safe_load(template.read_text())
    namespace = values["namespace"]
    node_path = resolve_topic(namespace, NODE_NAME)
    topics = {
        **{name: resolve_topic(namespace, values[f"{stream}_topic"])
           for name, stream in RVIZ_INPUTS.items()},
        **{name: f"{node_path}/{suffix}" for name, suffix in RVIZ_OUTPUTS.items()},
    }
    manager = data["Visualization Manager"]
    for display in manager["Displays"]:
        if display.get("Name") in topics:
            display["Topic"]["Value"] = topics[display["Name"]]
    manager["Global Options"]["Fixed Frame"] = values["fixed_frame"]
    return data


def rviz_available() -> bool:
    """rviz2 is where ``ros2 launch`` would look: <prefix>/lib/rviz2/rviz2 via the ament index."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        prefix = Path(get_package_prefix("rviz2"))
    except (PackageNotFoundError, OSError, ValueError, KeyError):
        return False
    return os.access(prefix / "lib" / "rviz2" / "rviz2", os.X_OK)


def _actions(context: Any, share: Path) -> list[Any]:
    names = ("backend", "bundle", "qos", "params_file", "ir_topic", "visible_topic", "namespace",
             "use_sim_time", "log_level", "rviz", "fixed_frame")
    values = {name: LaunchConfiguration(name).perform(context) for name in names}
    use_sim_time = values["use_sim_time"].lower() in TRUE_WORDS
    actions: list[Any] = [
        Node(
            package=PACKAGE,
            executable=NODE_NAME,
            name=NODE_NAME,
            namespace=values["namespace"],
            output="screen",
            emulate_tty=True,
            parameters=[values["params_file"], parameter_overrides(values)],
            remappings=remappings(values["ir_topic"], values["visible_topic"]),
            ros_arguments=["--log-level", values["log_level"]],
        )
    ]
    if values["rviz"].lower() not in TRUE_WORDS:
        return actions
    if not rviz_available():
        actions.append(LogInfo(msg="WARNING: rviz:=true but rviz2 is not installed (not in the "
                                   "ament index); running fusion_node without RViz"))
        return actions
    config = rviz_config(share / "config" / "fusion.rviz", values)
    with tempfile.NamedTemporaryFile("w", prefix="fusion_", suffix=".rviz",
                                     delete=False) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    actions.append(
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=values["namespace"],
            arguments=["-d", handle.name],
            parameters=[{"use_sim_time": use_sim_time}],
            output="screen",
        )
    )
    return actions


def generate_launch_description() -> LaunchDescription:
    share = share_dir()
    return LaunchDescription([
        *launch_arguments(share),
        OpaqueFunction(function=_actions, kwargs={"share": share}),
    ])
