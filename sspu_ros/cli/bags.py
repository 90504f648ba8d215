"""``sspu kitti2bag``, ``sspu densify-bag``, ``sspu play``, ``sspu record``: bag tools.

Thin wrappers over :mod:`sspu_ros.io.bags`; listed in ``COMMAND_MODULES`` of
:mod:`sspu_ros.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _usage(msg: str):
    from ..errors import UsageError

    return UsageError(msg)


def _frames(text: str | None) -> slice:
    from ..io.bags import parse_frames

    try:
        return parse_frames(text)
    except ValueError as e:
        raise _usage(f"--frames: {e}") from None


def cmd_kitti2bag(args: argparse.Namespace) -> int:
    from ..io.bags import kitti2bag

    r = kitti2bag(args.raw_dir, args.out_bag, storage=args.storage, topic=args.topic,
                  frame_id=args.frame_id, frames=_frames(args.frames),
                  progress=not args.no_progress)
    span = (r["last_stamp_ns"] - r["first_stamp_ns"]) / 1e9
    print(f"sspu kitti2bag: {r['messages']} scans ({r['points']} points, {span:.2f} s) -> "
          f"{r['bag']} ({r['storage']}, topic {r['topic']}, frame {args.frame_id})")
    return 0


def cmd_densify_bag(args: argparse.Namespace) -> int:
    from ..densify.bag import densify_bag
    from .common import _load_config

    cfg = _load_config(args)
    r = densify_bag(args.input, args.output, args.topic, cfg, out_topic=args.out_topic,
                    storage=args.storage, progress=not args.no_progress,
                    warn=lambda line: print(f"sspu densify-bag: {line}", file=sys.stderr))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"sspu densify-bag: {r['messages']} messages copied, {r['densified']} scans of "
          f"{r['topic']} densified ({r['input_points']} -> +{r['generated_points']} points, "
          f"model {r['model']}, median {r['ms_per_scan_median']} ms/scan) -> {r['output']} "
          f"topic {r['out_topic']} ({r['storage']}, {r['seconds']} s)")
    return 0


def _remaps(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise _usage(f"--remap expects FROM:=TO, got {item!r}")
        out[src] = dst
    return out


def cmd_play(args: argparse.Namespace) -> int:
    from ..ros.bag_player import play, shutdown_rclpy

    if args.rate <= 0:
        raise _usage(f"--rate must be > 0, got {args.rate}")
    try:
        stats = play(args.bag, topics=args.topics, rate=args.rate, loop=args.loop,
                     remap=_remaps(args.remap), restamp=args.restamp,
                     wait_for_subscribers=args.wait, reliable=args.qos == "reliable",
                     progress=not args.no_progress)
    finally:
        shutdown_rclpy()
    sent = ", ".join(f"{t}: {n}" for t, n in stats.published.items())
    print(f"sspu play: published {sent} in {stats.seconds:.2f} s ({stats.loops} pass(es))")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from ..ros.bag_player import record, shutdown_rclpy

    if args.duration is None and args.count is None:
        raise _usage("give --duration S or --count N (or both)")
    if args.count is not None and args.count < 1:
        raise _usage(f"--count must be >= 1, got {args.count}")
    types = {}
    for item in args.type or []:
        topic, sep, msgtype = item.partition("=")
        if not sep or msgtype.count("/") != 2:
            raise _usage(f"--type expects TOPIC=pkg/msg/Type, got {item!r}")
        types[topic] = msgtype
    try:
        counts = record(args.out_bag, args.topics, duration=args.duration, count=args.count,
                        storage=args.storage, reliable=args.qos == "reliable",
                        discovery_timeout=args.discovery_timeout, msgtypes=types)
    finally:
        shutdown_rclpy()
    got = ", ".join(f"{t}: {n}" for t, n in counts.items())
    print(f"sspu record: wrote {got} -> {args.out_bag}")
    return 0


def add_subcommands(sub) -> None:
    from ..io.bags import STORAGES

    p = sub.add_parser("kitti2bag", help="KITTI raw drive Velodyne scans -> PointCloud2 bag")
    p.add_argument("raw_dir", help="KITTI raw drive folder (velodyne_points/data/*.bin)")
    p.add_argument("out_bag", help="new bag (rosbag2 folder; a .bag path writes ROS 1)")
    p.add_argument("--storage", choices=STORAGES, default=None,
                   help="mcap (default), sqlite3, ros1 (default for .bag)")
    p.add_argument("--topic", default="/kitti/velo")
    p.add_argument("--frame-id", default="velo_link")
    p.add_argument("--frames", default=None, help="scan selection A:B (0-based, B excluded)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_kitti2bag)

    p = sub.add_parser("densify-bag", help="add a densified PointCloud2 topic to a copy of a bag")
    p.add_argument("input", help="rosbag2 folder / .db3 / .mcap, or ROS 1 .bag")
    p.add_argument("output", help="new bag: ROS 1 for a .bag path, else rosbag2 (written "
                   "under a temporary name, renamed when complete)")
    p.add_argument("--topic", default=None, help="PointCloud2 topic to densify (default: the "
                   "bag's only PointCloud2 topic)")
    p.add_argument("--out-topic", default=None,
                   help="topic of the densified clouds (default TOPIC/densified; = TOPIC "
                        "replaces it)")
    p.add_argument("--config", default=None, help="parameter YAML (sspu config show)")
    p.add_argument("--model", default=None, help="override the config's model")
    p.add_argument("--ratio", type=int, default=None, help="override the config's ratio")
    p.add_argument("--storage", choices=STORAGES, default=None,
                   help="output storage (default: ros1 for a .bag output, else the input's "
                   "rosbag2 storage; mcap for a ROS 1 input)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_densify_bag)

    p = sub.add_parser("play", help="publish a bag's PointCloud2 topics at the recorded rate")
    p.add_argument("bag")
    p.add_argument("--topics", nargs="+", default=None,
                   help="topics to play (default: every PointCloud2 topic)")
    p.add_argument("--rate", type=float, default=1.0, help="time scale (2 = twice as fast)")
    p.add_argument("--loop", action="store_true")
    p.add_argument("--remap", action="append", metavar="FROM:=TO")
    p.add_argument("--restamp", action="store_true",
                   help="set header.stamp to the publish time")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for subscribers before playing")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("record", help="record topics of the live graph into a bag")
    p.add_argument("out_bag")
    p.add_argument("--topics", nargs="+", required=True)
    p.add_argument("--duration", type=float, default=None, metavar="S")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="stop when every topic has N messages")
    p.add_argument("--type", action="append", metavar="TOPIC=pkg/msg/Type",
                   help="message type of a topic (default: looked up in the graph)")
    p.add_argument("--discovery-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    p.set_defaults(func=cmd_record)
