"""``sspu demo``: the main job (sample recording -> node -> PNG + latency summary);
the work is :func:`sspu_ros.ros.demo.run_demo`."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import add_model_arguments


def cmd_demo(args: argparse.Namespace) -> int:
    from ..ros.demo import run_demo

    if args.frames < 1 or args.beams < 1 or args.rate <= 0:
        raise UsageError("--frames and --beams must be >= 1 and --rate > 0")
    run_demo(args.out, frames=args.frames, beams=args.beams, rate=args.rate,
             no_ros=args.no_ros, config=args.config, model=args.model, ratio=args.ratio,
             backend=getattr(args, "backend", None), seed=args.seed)
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="main job: sample recording -> node -> PNG + latency")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    add_model_arguments(p)
    p.add_argument("--no-ros", action="store_true",
                   help="run the core densifier in this process instead of the node")
    p.add_argument("--frames", type=int, default=20, help="scans in the sample recording")
    p.add_argument("--beams", type=int, default=16, help="beams of the simulated LiDAR")
    p.add_argument("--rate", type=float, default=1.0, help="playback time scale")
    p.add_argument("--seed", type=int, default=0, help="procedural scene seed")
    p.set_defaults(func=cmd_demo)
