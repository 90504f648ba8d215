#!/usr/bin/env python3
"""Ghost-point check for the kitti-beams suite: the share of each method's front-crop
points (above z = -1.53 m) farther than 0.3 m / 1.0 m from every point of the full
64-beam scan — e.g. points bridging a car and the wall behind it.

    python -m sspu_ros bench quality --suite kitti-beams --model ... --out OUT
    python scripts/kitti_outliers.py OUT ../shared/data/kitti/object/velodyne
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from sspu_ros.io.cloud_files import read_cloud
from sspu_ros.io.kitti import read_velodyne

GROUND_Z = -1.53


def main() -> int:
    root = Path(sys.argv[1]) / "kitti-beams"
    scans = {p.stem: p for p in Path(sys.argv[2]).glob("*.bin")}
    for method in sorted(d.name for d in root.iterdir() if d.is_dir()):
        counts = np.zeros(3, dtype=np.int64)
        for ply in sorted((root / method).glob("*.ply")):
            if ply.stem not in scans:
                continue
            full = read_velodyne(scans[ply.stem])[:, :3]
            cloud = read_cloud(ply)
            pts = np.asarray(getattr(cloud, "xyz", cloud))[:, :3]
            pts = pts[pts[:, 2] > GROUND_Z]
            dist, _ = cKDTree(full).query(pts)
            counts += [len(dist), int((dist > 0.3).sum()), int((dist > 1.0).sum())]
        n = max(int(counts[0]), 1)
        print(f"{method:32s} points {counts[0]:7d}   > 0.3 m: {counts[1]:5d} "
              f"({counts[1] / n:.2%})   > 1.0 m: {counts[2]:4d} ({counts[2] / n:.2%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
