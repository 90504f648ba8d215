"""Files and messages in and out, ROS-free: the PointCloud2 codec and message builder,
point-cloud and mesh files, KITTI scans/labels/calibration, rosbag2 and ROS 1 bags."""
