"""What the node does to a scan (ROS-free): ground removal and clustering, patch
selection by mode, one batched upsampler call, merge; and the same over a whole bag."""
