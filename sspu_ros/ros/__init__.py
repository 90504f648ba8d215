"""The ROS 2 side, the only place that imports rclpy: the node and its diagnostics,
bag play/record on a live graph, and the demo that runs the node on a sample recording."""
