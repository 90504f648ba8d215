"""Synthetic data the project makes itself: the ray-casting LiDAR simulator and its
scenes, and the procedural sample surface of the README's main command."""
