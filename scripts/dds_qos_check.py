#!/usr/bin/env python3
"""How many KITTI-sized PointCloud2 scans reach a subscriber in ANOTHER process?

Measures, over real DDS (rclpy + the installed RMW, Fast DDS for the ``ros-*`` wheels),
for each combination of

* Fast DDS builtin transports: the defaults or ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``
  (set for both processes, as ``upsample.launch.py`` does for the node),
* the subscriber's reliability (``best_effort`` or ``reliable``, KEEP_LAST depth 1 as the
  node's input),
* the subscriber's work per scan (0 ms: a pure listener; ``--busy-ms``: a CPU-bound
  callback like the node's densification, during which scans keep coming),

how many of ``--count`` scans published at ``--rate`` Hz arrived, and their delivery
latency (receive time minus the header stamp, taken just before publishing). The
publisher is reliable, depth 5 (a reliable publisher serves both kinds of subscriber; a
best-effort publisher, e.g. ``SensorDataQoS``, is not matched by a reliable subscriber at
all, which the last row shows).

    .venv/bin/python scripts/dds_qos_check.py            # the full table (about 2 min)
    .venv/bin/python scripts/dds_qos_check.py --count 20 --busy-ms 0

Each run uses its own ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KITTI_SCAN = REPO.parent / "shared" / "data" / "kitti" / "object" / "velodyne" / "000000.bin"


def _cloud_message():
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2 import encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    if KITTI_SCAN.is_file():
        xyzi = np.fromfile(KITTI_SCAN, dtype="<f4").reshape(-1, 4)
    else:  # same size as a KITTI scan (about 1.8 MB)
        xyzi = np.random.default_rng(0).normal(size=(115_000, 4)).astype("<f4")
    pts = np.zeros(len(xyzi), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("intensity", "<f4")])
    for k, name in enumerate(("x", "y", "z", "intensity")):
        pts[name] = xyzi[:, k]
    return to_pointcloud2(encode_structured(pts), Header(frame_id="velo_link"), PointCloud2,
                          PointField)


def _qos(reliability: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = {"best_effort": ReliabilityPolicy.BEST_EFFORT,
           "reliable": ReliabilityPolicy.RELIABLE}[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)


def run_publisher(args) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("qos_check_pub")
    pub = node.create_publisher(PointCloud2, "/qos_check/points", _qos(args.pub_reliability, 5))
    msg = _cloud_message()
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    t_end = time.monotonic() + 1.0  # let both ends finish matching
    while time.monotonic() < t_end:
        rclpy.spin_once(node, timeout_sec=0.05)
    t_next = time.monotonic()
    for seq in range(args.count):
        now = node.get_clock().now().nanoseconds
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        msg.header.frame_id = str(seq)
        pub.publish(msg)
        t_next += 1.0 / args.rate
        while (left := t_next - time.monotonic()) > 0:
            rclpy.spin_once(node, timeout_sec=left)
    t_end = time.monotonic() + 2.0  # reliable: let the last samples go out
    while time.monotonic() < t_end:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()


def run_subscriber(args) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("qos_check_sub")
    got: list[tuple[int, float]] = []

    def on_cloud(msg) -> None:
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        got.append((int(msg.header.frame_id), (now - stamp) * 1e-6))
        end = time.perf_counter() + args.busy_ms * 1e-3
        while time.perf_counter() < end:  # CPU-bound, holds the GIL like real work
            pass

    node.create_subscription(PointCloud2, "/qos_check/points", on_cloud,
                             _qos(args.sub_reliability, 1))
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    lat = [ms for _, ms in got]
    print(json.dumps({"received": len(got), "seqs": [s for s, _ in got],
                      "latency_ms_median": float(np.median(lat)) if lat else None}))
    node.destroy_node()
    rclpy.shutdown()


def measure(transports: str, sub_reliability: str, busy_ms: float, pub_reliability: str,
            count: int, rate: float) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(101, 232)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transports != "DEFAULT":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = transports
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--count", str(count), "--rate", str(rate)]
    duration = 12.0 + count / rate + count * busy_ms * 1e-3
    sub = subprocess.Popen(me + ["--role", "sub", "--sub-reliability", sub_reliability,
                                 "--busy-ms", str(busy_ms), "--duration", str(duration)] + common,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=REPO)
    pub = subprocess.run(me + ["--role", "pub", "--pub-reliability", pub_reliability] + common,
                         capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=duration + 30)
    out, err = sub.communicate(timeout=duration + 30)
    if sub.returncode or pub.returncode:
        raise RuntimeError(f"subscriber rc {sub.returncode}: {err[-2000:]}\n"
                           f"publisher rc {pub.returncode}: {pub.stderr[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["table", "pub", "sub"], default="table")
    p.add_argument("--count", type=int, default=40, help="scans to publish (default 40)")
    p.add_argument("--rate", type=float, default=10.0, help="publish rate, Hz (default 10)")
    p.add_argument("--busy-ms", type=float, default=250.0,
                   help="CPU-bound work per received scan in the busy rows (default 250)")
    p.add_argument("--sub-reliability", default="best_effort")
    p.add_argument("--pub-reliability", default="reliable")
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.role == "pub":
        run_publisher(args)
        return 0
    if args.role == "sub":
        run_subscriber(args)
        return 0
    rows = [(t, s, b, "reliable") for t in ("DEFAULT", "LARGE_DATA")
            for s in ("best_effort", "reliable") for b in (0.0, args.busy_ms)]
    rows.append(("LARGE_DATA", "reliable", 0.0, "best_effort"))
    print(f"{args.count} KITTI-sized scans at {args.rate:g} Hz to a subscriber in another "
          "process (depth 1)")
    print(f"{'transports':<11} {'publisher':<12} {'subscriber':<12} {'work/scan':>9} "
          f"{'received':>9} {'latency':>10}")
    for transports, sub_rel, busy, pub_rel in rows:
        r = measure(transports, sub_rel, busy, pub_rel, args.count, args.rate)
        lat = "n/a" if r["latency_ms_median"] is None else f"{r['latency_ms_median']:.1f} ms"
        print(f"{transports:<11} {pub_rel:<12} {sub_rel:<12} {busy:>6.0f} ms "
              f"{r['received']:>4}/{args.count:<4} {lat:>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
