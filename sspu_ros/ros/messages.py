"""The rclpy message classes the ROS-free layers take as arguments (they never import ROS
themselves): PointCloud2 and its parts."""

from __future__ import annotations


def pointcloud2_types():
    """(PointCloud2, PointField, Header) rclpy message classes, or a one-line reason (str)
    when the ROS 2 Python messages are not importable."""
    try:
        from sensor_msgs.msg import PointCloud2, PointField
        from std_msgs.msg import Header
    except ImportError as exc:
        return f"rclpy messages not importable ({exc})"
    return PointCloud2, PointField, Header
