"""Start sspu_ros's upsample_node.

    ros2 launch sspu_ros upsample.launch.py input_topic:=/points_raw output_topic:=/points_dense

Parameters come from ``params_file`` (default: the package's config/upsample.yaml). The
``model`` and ``ratio`` arguments override the file's values when given (empty = keep).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> node parameter it overrides (when not empty), with its type
PARAMETER_ARGUMENTS = {"model": ("model", str), "ratio": ("ratio", int)}


def _node(context, *args, **kwargs):
    overrides = {}
    for arg, (param, kind) in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(arg).perform(context)
        if value != "":
            overrides[param] = kind(value)
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    return [
        Node(
            package="sspu_ros",
            executable="upsample_node",
            name="upsample_node",
            output="screen",
            parameters=[LaunchConfiguration("params_file"), overrides,
                        {"use_sim_time": use_sim_time}],
            remappings=[
                ("~/input/pointcloud", LaunchConfiguration("input_topic")),
                ("~/output/pointcloud", LaunchConfiguration("output_topic")),
            ],
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
        OpaqueFunction(function=_node),
    ])
