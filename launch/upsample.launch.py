"""Start sspu_ros's upsample_node.

    ros2 launch sspu_ros upsample.launch.py input_topic:=/points_raw output_topic:=/points_dense

Parameters come from ``params_file`` (default: the package's config/upsample.yaml). The
``model``, ``backend`` and ``ratio`` arguments override the file's values when given
(empty = keep). ``dds_large_data:=true`` (default) sets
``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` for Fast DDS (ignored by other RMWs), without
which large clouds between processes are mostly lost to a best-effort subscriber; an
``FASTDDS_BUILTIN_TRANSPORTS`` already set in the environment wins.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# launch argument -> node parameter it overrides (when not empty), with its type
PARAMETER_ARGUMENTS = {"model": ("model", str), "backend": ("backend", str),
                       "ratio": ("ratio", int)}
# launch argument -> the node's topic it remaps
REMAP_ARGUMENTS = {"input_topic": "~/input/pointcloud", "output_topic": "~/output/pointcloud"}
# launch arguments for the node itself (not parameters of the schema) or the environment
NODE_ARGUMENTS = ("params_file", "use_sim_time", "log_level", "dds_large_data")
FASTDDS_TRANSPORTS_ENV = "FASTDDS_BUILTIN_TRANSPORTS"


def _node(context, *args, **kwargs):
    overrides = {}
    for arg, (param, kind) in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(arg).perform(context)
        if value != "":
            try:
                overrides[param] = kind(value)
            except ValueError:
                raise ValueError(f"launch argument {arg}:={value!r} is not a valid "
                                 f"{kind.__name__} (parameter '{param}'; empty: keep the "
                                 "params file's value)") from None
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    actions = []
    large_data = LaunchConfiguration("dds_large_data").perform(context).lower() == "true"
    if large_data and FASTDDS_TRANSPORTS_ENV not in os.environ:
        actions.append(SetEnvironmentVariable(FASTDDS_TRANSPORTS_ENV, "LARGE_DATA"))
    return actions + [
        Node(
            package="sspu_ros",
            executable="upsample_node",
            name="upsample_node",
            output="screen",
            parameters=[LaunchConfiguration("params_file"), overrides,
                        {"use_sim_time": use_sim_time}],
            remappings=[(topic, LaunchConfiguration(arg))
                        for arg, topic in REMAP_ARGUMENTS.items()],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        )
    ]


def generate_launch_description():
    default_params = PathJoinSubstitution(
        [FindPackageShare("sspu_ros"), "config", "upsample.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameter YAML for upsample_node"),
        DeclareLaunchArgument("model", default_value="",
                              description="override parameter 'model' (empty: keep the file's)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="override parameter 'backend' (empty: keep the "
                                          "file's)"),
        DeclareLaunchArgument("ratio", default_value="",
                              description="override parameter 'ratio' (empty: keep the file's)"),
        DeclareLaunchArgument("input_topic", default_value="/points_raw",
                              description="input sensor_msgs/PointCloud2 topic"),
        DeclareLaunchArgument("output_topic", default_value="/points_dense",
                              description="densified output PointCloud2 topic"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (true when playing a bag)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="node log level (debug, info, warn, error)"),
        DeclareLaunchArgument("dds_large_data", default_value="true",
                              description="Fast DDS: set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
                                          "(large clouds between processes) unless already set"),
        OpaqueFunction(function=_node),
    ])
