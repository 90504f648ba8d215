#!/usr/bin/env python3
"""Time the learned range-image interpolator's network on one full KITTI scan (16 kept
beams × 2048 columns -> 45 virtual rows), 1 thread, PyTorch and ONNX Runtime, and check
their parity.

    OMP_NUM_THREADS=1 python scripts/time_range_interpolator.py \
        models/sspu_lidar_x4 [SCAN.bin]

(``BASE.pt`` and ``BASE.onnx`` from scripts/strip_range_checkpoint.py.)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort
import torch

from sspu_ros.model.range_interpolator import count_parameters
from sspu_ros.runtime.range_interpolation import LearnedBeamInterpolator
from sspu_ros.training.range_interpolation import load_scan_image

SCAN = "../shared/data/kitti/object/velodyne/000000.bin"


def _median_time(fn, repeats: int = 9) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times))


def main() -> int:
    base = sys.argv[1]
    scan = sys.argv[2] if len(sys.argv) > 2 else SCAN
    torch.set_num_threads(1)
    net = LearnedBeamInterpolator.from_checkpoint(base + ".pt")
    img = load_scan_image(scan)[::4]
    print(f"{count_parameters(net.model)} parameters; scan {scan}")
    med, best = _median_time(lambda: net.predict(img, 4))
    print(f"torch, 1 thread: median {med:.3f} s, min {best:.3f} s")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(base + ".onnx", opts, providers=["CPUExecutionProvider"])
    valid = np.isfinite(img)
    feed = {"range": np.where(valid, img, 0).astype(np.float32)[None],
            "valid": valid.astype(np.float32)[None],
            "t": np.array([0.25, 0.5, 0.75], np.float32)}
    med, best = _median_time(lambda: sess.run(None, feed))
    print(f"onnxruntime, 1 thread: median {med:.3f} s, min {best:.3f} s")
    out = sess.run(None, feed)
    pred, _ = net.predict(img, 4)
    print(f"parity: max |range difference| {float(np.abs(out[0][0] - pred).max()):.2e} m")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
