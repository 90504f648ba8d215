"""Median wall time of upsampling one 2048-point dev shape x4 (torch and onnxruntime)."""
import os, sys, time, numpy as np, torch
from sspu_ros.io.cloud_files import read_cloud
from sspu_ros.runtime.loading import load_upsampler
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
x = read_cloud("../shared/data/pugan-dev/input/cow.xyz").xyz
for backend in ("torch", "onnxruntime"):
    up = load_upsampler(sys.argv[1], 4, backend)
    up.upsample(x)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); up.upsample(x); ts.append(time.perf_counter() - t)
    print(f"{backend}: median {np.median(ts):.3f} s, min {min(ts):.3f} s ({threads} threads); load {os.getloadavg()[0]:.1f}")
