"""Measuring: metrics (CD, HD, P2F), classical baselines, the quality suites (PU-GAN,
KITTI beams, LiDAR simulator), plots, and the speed/codec/generator/training benchmarks."""
