"""Launch fusion_node (and optionally RViz) with the package's parameter file.

    ros2 launch ros2_bilevel_fusion fusion.launch.py ir_topic:=/thermal/image_raw \
        visible_topic:=/camera/image_raw backend:=onnxruntime rviz:=true

Arguments: backend, bundle, params_file, ir_topic, visible_topic, namespace, use_sim_time, rviz.
The camera topics are connected by remapping the node's relative inputs (the ``ir_topic`` and
``visible_topic`` parameter defaults); ``backend`` and ``bundle`` override the parameter file.
Their defaults and descriptions come from the node's parameter table (``node/parameters.py``),
whose backend choices are ``backends.BACKEND_KINDS``.
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from ros2_bilevel_fusion.core.resources import share_dir
from ros2_bilevel_fusion.node.parameters import SPECS

PACKAGE = "ros2_bilevel_fusion"


def generate_launch_description() -> LaunchDescription:
    share = share_dir()
    # The node's own (relative) input names; the topic arguments remap them.
    ir_input = SPECS["ir_topic"].default
    visible_input = SPECS["visible_topic"].default
    arguments = [
        DeclareLaunchArgument(
            "backend",
            default_value=SPECS["backend"].default,
            description=SPECS["backend"].description,
        ),
        DeclareLaunchArgument(
            "bundle",
            default_value=SPECS["bundle_path"].default,
            description=SPECS["bundle_path"].description,
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=str(share / "config" / "fusion.yaml"),
            description="fusion_node parameter file",
        ),
        DeclareLaunchArgument(
            "ir_topic",
            default_value=ir_input,
            description=f"IR image topic (the node's {ir_input} is remapped to it)",
        ),
        DeclareLaunchArgument(
            "visible_topic",
            default_value=visible_input,
            description=f"Visible image topic (the node's {visible_input} is remapped to it)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (bag replay)"
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz 2"),
    ]
    fusion_node = Node(
        package=PACKAGE,
        executable="fusion_node",
        name="fusion_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "bundle_path": ParameterValue(LaunchConfiguration("bundle"), value_type=str),
                "use_sim_time": ParameterValue(
                    LaunchConfiguration("use_sim_time"), value_type=bool
                ),
            },
        ],
        remappings=[
            (ir_input, LaunchConfiguration("ir_topic")),
            (visible_input, LaunchConfiguration("visible_topic")),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", str(share / "config" / "fusion.rviz")],
        parameters=[
            {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}
        ],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription([*arguments, fusion_node, rviz])
