"""``sspu build-engine``: its parser, kept free of heavy imports (torch, TensorRT) so
``sspu --help`` and the other subcommands stay fast; the work is in
:func:`sspu_ros.tensorrt_engine.cmd_build_engine`."""

from __future__ import annotations


def _cmd_build_engine(args) -> int:
    from .tensorrt_engine import cmd_build_engine

    return cmd_build_engine(args)


def add_subcommands(sub) -> None:
    p = sub.add_parser("build-engine", help="build the TensorRT engine of a model ahead of "
                       "time (into the engine cache)")
    p.add_argument("--model", help="model name or .pt/.onnx path (default: config 'model')")
    p.add_argument("--fp16", action="store_true", help="FP16 engine (default: config "
                   "tensorrt.precision)")
    p.add_argument("--max-patches", type=int, help="largest batch of the optimization "
                   "profile (default: config tensorrt.max_patches)")
    p.add_argument("--cache-dir", help="engine cache folder (default: config "
                   "tensorrt.cache_dir, else $SSPU_ENGINE_CACHE or ~/.cache/sspu_ros/engines)")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--config", help="ROS 2 parameter YAML overriding the defaults")
    p.set_defaults(func=_cmd_build_engine, ratio=None)
