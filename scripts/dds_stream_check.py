#!/usr/bin/env python3
"""DDS alone, no node: does a stream of KITTI-sized scans keep reaching another process?

One process publishes a 64-beam KITTI scan (~1.9 MB; random points of that size when the
dev data is missing) at ``--rate`` Hz for ``--minutes`` (reliable, depth 5, like
``scripts/soak.py``); another process subscribes (reliable, depth 1, as the node's input)
and does nothing but count. Every 30 s the subscriber prints the scans received in that
window and their delivery latency (receive time minus the header stamp). Use it to tell
the node's losses from the transport's: ``soak.py`` over 10 min lost scans after ~3 min,
and this script, without the node, showed the same (BENCHMARKS.md, *Node soak*).

    PYTHONPATH=. .venv/bin/python scripts/dds_stream_check.py --minutes 4.5
    PYTHONPATH=. .venv/bin/python scripts/dds_stream_check.py --transports UDPv4

Both processes use ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and ``--domain-id``
(default: a random one in 101..232).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCAN = REPO.parent / "shared" / "data" / "kitti" / "object" / "velodyne" / "000000.bin"
TOPIC = "/dds_stream_check/points"


def _qos(depth: int):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def publish(args) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2 import encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    xyzi = (np.fromfile(SCAN, dtype="<f4").reshape(-1, 4) if SCAN.is_file()
            else np.random.default_rng(0).normal(size=(120_000, 4)).astype("<f4"))
    pts = np.zeros(len(xyzi), dtype=[(n, "<f4") for n in ("x", "y", "z", "intensity")])
    for k, name in enumerate(("x", "y", "z", "intensity")):
        pts[name] = xyzi[:, k]
    msg = to_pointcloud2(encode_structured(pts), Header(), PointCloud2, PointField)
    rclpy.init()
    node = rclpy.create_node("dds_stream_check_pub")
    pub = node.create_publisher(PointCloud2, TOPIC, _qos(5))
    while pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(1.0)
    t0 = time.monotonic()
    t_next, sent = t0, 0
    while time.monotonic() - t0 < args.minutes * 60:
        msg.header.frame_id = str(sent)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
        pub.publish(msg)
        sent += 1
        t_next += 1.0 / args.rate
        while (left := t_next - time.monotonic()) > 0:
            rclpy.spin_once(node, timeout_sec=left)
    print(f"publisher: sent {sent} scans of {len(pts)} points", flush=True)
    time.sleep(2.0)


def subscribe(args) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_stream_check_sub")
    seqs: list[int] = []
    lat: list[float] = []

    def on_scan(m) -> None:
        seqs.append(int(m.header.frame_id))
        lat.append((time.time_ns() - m.header.stamp.sec * 10**9 - m.header.stamp.nanosec) * 1e-6)

    node.create_subscription(PointCloud2, TOPIC, on_scan, _qos(1))
    t0 = time.monotonic()
    t_report, last = t0 + 30.0, 0
    while time.monotonic() - t0 < args.minutes * 60 + 10:
        rclpy.spin_once(node, timeout_sec=0.1)
        if time.monotonic() >= t_report:
            t_report += 30.0
            window = lat[last:]
            med = f"{np.median(window):.1f} ms" if window else "n/a"
            print(f"subscriber: {time.monotonic() - t0:5.0f} s: +{len(seqs) - last} received "
                  f"(expected ~{30 * args.rate:.0f}), total {len(seqs)}, newest seq "
                  f"{seqs[-1] if seqs else None}, latency median {med}, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            last = len(seqs)
    print(f"subscriber: received {len(seqs)} in total", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--role", choices=["main", "pub", "sub"], default="main")
    p.add_argument("--minutes", type=float, default=4.5)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--transports", default="LARGE_DATA",
                   help="FASTDDS_BUILTIN_TRANSPORTS (DEFAULT: Fast DDS's defaults)")
    p.add_argument("--domain-id", type=int, default=None)
    args = p.parse_args(argv)
    if args.role == "pub":
        publish(args)
        return 0
    if args.role == "sub":
        subscribe(args)
        return 0
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               ROS_DOMAIN_ID=str(args.domain_id if args.domain_id is not None
                                 else random.SystemRandom().randint(101, 232)))
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if args.transports != "DEFAULT":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = args.transports
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    me = [sys.executable, str(Path(__file__).resolve()), "--minutes", str(args.minutes),
          "--rate", str(args.rate)]
    print(f"dds_stream_check: {args.minutes:g} min at {args.rate:g} Hz, transports "
          f"{args.transports}, ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}", flush=True)
    sub = subprocess.Popen(me + ["--role", "sub"], env=env)
    pub = subprocess.Popen(me + ["--role", "pub"], env=env)
    return pub.wait() or sub.wait()


if __name__ == "__main__":
    sys.exit(main())
