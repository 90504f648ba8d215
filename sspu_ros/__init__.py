"""sspu_ros: self-supervised LiDAR point-cloud densification for ROS 2.

The package is a ROS-free core (codec, I/O, geometry, models, CLI) plus a thin rclpy
node (:mod:`sspu_ros.ros.node`). Nothing in the core imports ``rclpy``.
"""

__version__ = "0.1.0"
