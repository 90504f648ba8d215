"""``sspu finetune``: fine-tune a model on a recorded bag (no ground truth).

Thin wrapper over :func:`sspu_ros.training.finetune.finetune` (point-patch generators, e.g.
``sspu_x4``) and :func:`sspu_ros.training.range_finetune.finetune_range` (range-image
interpolators, e.g. ``sspu_lidar_x4``); the model file decides which. Registered through
``COMMAND_MODULES`` in :mod:`sspu_ros.cli.main`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _resolve_init(init: str) -> str:
    """A path as given, or a shipped model name (``sspu_lidar_x4``) -> its ``.pt``."""
    from ..errors import ModelError
    from ..runtime.model_files import find_model_files

    path = Path(init)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return init
    files = find_model_files(init)
    if files.pt is None:
        raise ModelError(f"model '{init}' has no .pt checkpoint (fine-tuning needs the "
                         "PyTorch weights, not only the ONNX export)")
    return str(files.pt)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import UsageError
    from ..io.bags import parse_frames
    from ..training.finetune import finetune
    from ..training.range_finetune import is_range_interpolator
    from .common import _parse_sets

    if args.minutes is None and args.steps is None:
        args.minutes = 10.0
    if args.minutes is not None and args.minutes <= 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if not 0.0 <= args.min_distinct <= 1.0:
        raise UsageError(f"--min-distinct must be in [0, 1], got {args.min_distinct}")
    if args.every < 1 or args.beam_stride < 1:
        raise UsageError("--every and --beam-stride must be >= 1")
    try:
        frames = parse_frames(args.frames)
    except ValueError as e:
        raise UsageError(f"--frames: {e}") from None
    init = _resolve_init(args.init)
    if Path(init).is_file() and is_range_interpolator(init):
        return _finetune_range(args, init, frames)
    if args.sensor != "auto" or args.columns is not None:
        raise UsageError("--sensor and --columns apply to range-interpolator models "
                         f"(sspu_lidar_x4); {args.init} is a point-patch generator")
    overrides = _parse_sets(args.set)
    if args.batch_size is not None:
        overrides["optim.batch_size"] = args.batch_size
    if args.lr is not None:
        overrides["optim.lr"] = args.lr
    if args.device is not None:
        overrides["run.device"] = args.device
    params = load_config(args.config)
    m = finetune(args.bag, args.topic, init, args.out, minutes=args.minutes,
                 steps=args.steps, frames=frames, every=args.every,
                 beam_stride=args.beam_stride, min_distinct=args.min_distinct, params=params,
                 train_overrides=overrides,
                 export=not args.no_export, command=_command(args),
                 progress=not args.no_progress, resume=args.resume)
    t, d = m["training"], m["data"]
    loss = t["loss_last"].get("total")
    print(f"sspu finetune: {d['patches']} node patches from {d['scans']} scan(s) "
          f"(frames {d['frames_used'][0]}..{d['frames_used'][1]}) of {d['topic']}; "
          f"{t['steps']} steps in {t['wall_seconds']:.1f} s on {m['machine']['device']}, "
          f"loss {t['loss_first']} -> {loss}")
    onnx = f", {m['onnx']['path']}" if "onnx" in m else ""
    print(f"sspu finetune: wrote {args.out}/checkpoint.pt{onnx}, {args.out}/model.yaml")
    return 0


def _finetune_range(args: argparse.Namespace, init: str, frames: slice) -> int:
    """``sspu finetune`` of a range-image interpolator (beam self-supervision)."""
    from ..errors import UsageError
    from ..training.range_finetune import finetune_range

    ignored = [opt for opt, given in (("--config", args.config is not None),
                                      ("--set", bool(args.set)),
                                      ("--min-distinct", args.min_distinct != 0.5))
               if given]
    if ignored:
        raise UsageError(f"{', '.join(ignored)}: point-patch generator options; "
                         f"{args.init} is a range interpolator")
    if args.device not in (None, "cpu", "auto"):
        raise UsageError("range-interpolator fine-tuning runs on the CPU (--device cpu)")
    if args.columns is not None and args.columns < 8:
        raise UsageError(f"--columns must be >= 8, got {args.columns}")
    kwargs = {}
    if args.batch_size is not None:
        kwargs["batch"] = args.batch_size
    if args.lr is not None:
        kwargs["lr"] = args.lr
    m = finetune_range(args.bag, args.topic, init, args.out, minutes=args.minutes,
                       steps=args.steps, frames=frames, every=args.every,
                       beam_stride=args.beam_stride, sensor=args.sensor,
                       columns=args.columns, export=not args.no_export,
                       command=_command(args), progress=not args.no_progress,
                       resume=args.resume, **kwargs)
    t, d = m["training"], m["data"]
    sources = ", ".join(f"{k} ({v})" for k, v in d["structure_sources"].items())
    print(f"sspu finetune: range interpolator {args.init}, {d['scans']} scan(s) (frames "
          f"{d['frames_used'][0]}..{d['frames_used'][1]}) of {d['topic']}: "
          f"{'/'.join(map(str, d['rows']))}-row range images x {d['columns'][0]} columns "
          f"(beam stride {d['beam_stride']}, beams from {sources})")
    if d["skipped"]:
        first = d["skipped_scans"][0]
        print(f"sspu finetune: skipped {d['skipped']} scan(s) without a usable beam "
              f"structure (scan {first['frame']}: {first['reason']})")
    loss = [(t[k] or {}).get("total") for k in ("loss_first", "loss_last")]
    loss_a, loss_b = ("-" if v is None else f"{v:.4f}" for v in loss)
    print(f"sspu finetune: {t['steps']} steps in {t['wall_seconds']:.1f} s on "
          f"{m['machine']['device']}, loss {loss_a} -> {loss_b} (self-supervised)")
    check = t["self_check"]
    print(f"sspu finetune: on the training images (all tasks, whole images): range MAE "
          f"{check['before']['mae']:.4f} -> {check['after']['mae']:.4f} m, L1 "
          f"{check['before']['l1']:.4f} -> {check['after']['l1']:.4f}")
    onnx = f", {args.out}/{m['onnx']['path']}" if "onnx" in m else ""
    print(f"sspu finetune: wrote {args.out}/checkpoint.pt, {args.out}/model.pt{onnx}, "
          f"{args.out}/model.yaml")
    return 0


def _command(args: argparse.Namespace) -> list[str]:
    """The equivalent ``sspu finetune`` command line of the parsed arguments."""
    cmd = ["sspu", "finetune"]
    for name in ("bag", "topic", "init", "out", "minutes", "steps", "frames", "config",
                 "batch_size", "lr", "device"):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    for name, default in (("every", 1), ("beam_stride", 1), ("min_distinct", 0.5),
                          ("sensor", "auto"), ("columns", None)):
        if getattr(args, name) != default:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for item in args.set or []:
        cmd += ["--set", item]
    if args.no_export:
        cmd.append("--no-export")
    if args.resume:
        cmd.append("--resume")
    return cmd


def add_subcommands(sub) -> None:
    from ..geometry.scan_structure import SENSORS

    p = sub.add_parser("finetune", help="fine-tune a model on a recorded bag (self-supervised)")
    p.add_argument("--bag", required=True, help="rosbag2 folder / .db3 / .mcap or ROS 1 .bag")
    p.add_argument("--topic", default=None,
                   help="PointCloud2 topic (default: the bag's first PointCloud2 topic)")
    p.add_argument("--init", "--model", dest="init", required=True,
                   help="model to start from: a shipped name (sspu_x4, sspu_lidar_x4) or a "
                   ".pt: a point-patch generator (fine-tuned on the node's patches) or a "
                   "range interpolator (fine-tuned by beam self-supervision on the scans' "
                   "range images)")
    p.add_argument("--out", required=True, help="new output folder")
    p.add_argument("--minutes", type=float, default=None,
                   help="training wall-time budget (default 10 when --steps is not given)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--frames", default=None,
                   help="scans A:B of the topic (0-based, B excluded), e.g. 0:5")
    p.add_argument("--every", type=int, default=1, help="use every n-th selected scan")
    p.add_argument("--beam-stride", type=int, default=1,
                   help="keep every k-th laser ring (4: 64 -> 16 beams); generators: of "
                   "KITTI-ordered scans; range interpolators: of the recovered beam rows")
    p.add_argument("--sensor", default="auto", choices=["auto", *SENSORS],
                   help="range interpolators: sensor preset for scans without a ring field, "
                   "organized rows or laser-by-laser storage order (default auto)")
    p.add_argument("--columns", type=int, default=None,
                   help="range interpolators: range-image width (default 2048, or the "
                   "preset's / the organized cloud's)")
    p.add_argument("--min-distinct", type=float, default=0.5,
                   help="skip node patches with fewer distinct points than this fraction "
                        "(padded small clusters); 0 keeps all")
    p.add_argument("--config", default=None,
                   help="node parameter YAML: the crop/selection that makes the patches")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training parameter over the checkpoint's configuration")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda or auto")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (same arguments) from its "
                   "checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)
