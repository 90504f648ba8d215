#!/usr/bin/env python3
"""KITTI ``.bin`` scans of a folder (e.g. the object dev frames, which have no timestamps
for ``sspu kitti2bag``) as one bag: x, y, z, intensity float32, one message per scan in
name order, stamps 0.1 s apart.

    python scripts/kitti_frames_bag.py ../shared/data/kitti/object/velodyne out/object_bag
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sspu_ros.io.bags import KITTI_DTYPE, POINTCLOUD2, BagWriter, pointcloud2_message
from sspu_ros.io.kitti import read_velodyne
from sspu_ros.io.pointcloud2 import encode_structured


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder of KITTI .bin scans")
    p.add_argument("out", help="new bag (rosbag2 folder; .bag: ROS 1)")
    p.add_argument("--topic", default="/kitti/velo")
    p.add_argument("--frame-id", default="velo_link")
    a = p.parse_args()
    scans = sorted(Path(a.folder).glob("*.bin"))
    if not scans:
        p.error(f"{a.folder}: no .bin scans")
    with BagWriter(a.out) as w:
        conn = w.add_connection(a.topic, POINTCLOUD2)
        for i, path in enumerate(scans):
            scan = read_velodyne(path)
            pts = np.zeros(len(scan), dtype=KITTI_DTYPE)
            for j, name in enumerate(("x", "y", "z", "intensity")):
                pts[name] = scan[:, j]
            stamp = (1_000 + i) * 100_000_000
            w.write_msg(conn, stamp, pointcloud2_message(encode_structured(pts),
                                                         stamp_ns=stamp,
                                                         frame_id=a.frame_id, store=w.store))
            print(f"{i}: {path.name}, {len(scan)} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
