"""``sspu``: the command-line interface of sspu_ros (ROS-free but for ``demo``/``play``/
``record``, which run a ROS 2 graph).

One module per command group (:data:`COMMAND_MODULES`), each with ``add_subcommands(sub)``
adding its parsers (``set_defaults(func=...)``) over the layers below. Every error a user
can cause (bad file, bad parameter, unknown model) is one of :data:`sspu_ros.errors.USER_ERRORS`
and ends in one ``sspu: error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import USER_ERRORS

#: The command groups, in the order ``sspu --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "files",     # upsample, sample, convert, info
    "densify",   # densify (one scan)
    "demo",      # demo (the main job)
    "config",    # config
    "bench",     # bench codec|train|quality|model|generator|speed
    "train",     # train, export
    "finetune",  # finetune (on a bag)
    "bags",      # kitti2bag, densify-bag, play, record
    "engine",    # build-engine
    "doctor",    # doctor
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sspu",
        description="sspu_ros: self-supervised LiDAR point-cloud densification (ROS-free CLI).",
    )
    parser.add_argument("--version", action="version", version=f"sspu_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"sspu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sspu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
