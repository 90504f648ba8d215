"""``sspu config``: show, check or describe the node/CLI and training parameters."""

from __future__ import annotations

import argparse

from ..config import CONFIG_NAMES
from ..errors import UsageError


def cmd_config(args: argparse.Namespace) -> int:
    from ..config import find_config_dir, load_config, parameter_specs

    if args.action == "show":
        print(load_config(args.file, name=args.name).to_yaml(), end="")
    elif args.action == "check":
        if not args.file:
            raise UsageError("sspu config check needs a parameter FILE")
        cfg = load_config(args.file, name=args.name)
        print(f"{args.file}: valid {args.name} configuration ({len(cfg)} parameters)")
    elif args.action == "params":
        for spec in parameter_specs(args.name).values():
            ro = " [read-only at runtime]" if spec.read_only else ""
            print(f"{spec.name}: {spec.allowed()}{ro}\n    {spec.description}")
    else:  # path
        print(find_config_dir())
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("config", help="show, check or describe the node/CLI parameters")
    p.add_argument("action", choices=["show", "check", "params", "path"])
    p.add_argument("file", nargs="?", help="parameter YAML (show: merged onto defaults)")
    p.add_argument("--name", choices=CONFIG_NAMES, default="upsample",
                   help="which configuration: the node/CLI's (upsample) or training's")
    p.set_defaults(func=cmd_config)
