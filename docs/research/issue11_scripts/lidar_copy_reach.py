"""How far the generated points move from their source point, in the node's objects path on
the five KITTI dev frames (16 of 64 beams kept), and how far they are from the 64-beam scan.

    PYTHONPATH=. OMP_NUM_THREADS=1 python docs/research/issue11_scripts/lidar_copy_reach.py \
        midpoint /tmp/i11/old_sspu_x4.pt sspu_x4

(the previous sspu_x4: `git show 16eff72:models/sspu_x4.pt > /tmp/i11/old_sspu_x4.pt`).
Prints, per model: generated points, their distance to their source point over the source's
nearest-neighbour distance (median, mean), and their mean distance to the full scan."""
import sys

import numpy as np

from sspu_ros.config import load_config
from sspu_ros.densify.densifier import densify_points
from sspu_ros.evaluation.lidar_suites import KEEP_EVERY, kitti_frames
from sspu_ros.geometry.beams import recover_rings
from sspu_ros.geometry.knn_numpy import nearest_neighbors
from sspu_ros.io.kitti import read_velodyne
from sspu_ros.runtime.loading import load_upsampler

params = load_config(None, {"mode": "objects"})
for model in sys.argv[1:] or ["midpoint", "sspu_x4"]:
    up = load_upsampler(model, 4, config=load_config(None, {"model": model}))
    moves, accs = [], []
    for scan_path, _, _ in kitti_frames("../shared/data/kitti"):
        scan = read_velodyne(scan_path)[:, :3].astype(np.float64)
        sparse = scan[recover_rings(scan) % KEEP_EVERY == 0]
        res = densify_points(sparse.astype(np.float32), up, params)
        src = res.sources[:, 0]
        spacing = nearest_neighbors(sparse, sparse, k=2)[0][:, 1]
        gen = res.generated.astype(np.float64)
        moves.append(np.linalg.norm(gen - sparse[src], axis=1) / np.maximum(spacing[src], 1e-9))
        accs.append(nearest_neighbors(scan, gen)[0])
    move, acc = np.concatenate(moves), np.concatenate(accs)
    print(f"{model:28s} generated {len(move)}  move / nn distance: median {np.median(move):.2f} "
          f"mean {move.mean():.2f}  generated -> full scan: {acc.mean():.4f} m")
