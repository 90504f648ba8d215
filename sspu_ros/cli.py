"""``sspu``: the command-line interface of sspu_ros (ROS-free).

Each subcommand is a thin layer over the core modules; every error a user can cause
(bad file, bad parameter, unknown model) ends in one ``sspu: error: ...`` line and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import CONFIG_NAMES


class UsageError(ValueError):
    """A command-line input the user has to fix."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .cloud_io import CloudFileError
    from .config import ConfigError
    from .pointcloud2 import PointCloudFormatError
    from .upsampler import ModelError

    return (UsageError, CloudFileError, ConfigError, PointCloudFormatError, ModelError)


# --------------------------------------------------------------------------- helpers


def _load_config(args: argparse.Namespace):
    from .config import load_config

    overrides = {}
    if getattr(args, "model", None) is not None:
        overrides["model"] = args.model
    if getattr(args, "ratio", None) is not None:
        overrides["ratio"] = args.ratio
    if getattr(args, "backend", None) is not None:
        overrides["backend"] = args.backend
    return load_config(getattr(args, "config", None), overrides)


def _finite_points(xyz: np.ndarray, path: str, min_points: int) -> np.ndarray:
    finite = np.isfinite(xyz).all(axis=1)
    n_bad = int((~finite).sum())
    if n_bad:
        print(f"{path}: dropped {n_bad} point(s) with NaN/Inf coordinates", file=sys.stderr)
        xyz = xyz[finite]
    if xyz.shape[0] == 0:
        raise UsageError(f"{path}: the cloud has no (finite) points")
    if xyz.shape[0] < min_points:
        raise UsageError(
            f"{path}: {xyz.shape[0]} point(s) is too few to upsample (need >= {min_points})"
        )
    return xyz


def _upsample_file(src: str, dst: str, cfg, adapt: int = 0,
                   implicit_model: bool = False) -> dict:
    from .cloud_io import read_cloud, write_cloud
    from .upsampler import load_upsampler

    if adapt < 0:
        raise UsageError(f"--adapt must be >= 0 steps, got {adapt}")
    if adapt:
        from .adapt import adapt_upsample, checkpoint_of

        checkpoint_of(cfg["model"])  # a .pt, or a ModelError before any work
    upsampler = load_upsampler(cfg["model"], cfg["ratio"], config=cfg)
    cloud = read_cloud(src)
    xyz = _finite_points(cloud.xyz, src, cfg["ratio"])
    model_cfg = getattr(getattr(upsampler, "model", None), "cfg", None)
    if (implicit_model and not adapt and model_cfg is not None
            and xyz.shape[0] < model_cfg.min_points()):
        print(f"sspu: {src}: {xyz.shape[0]} points is fewer than {upsampler.name} takes "
              f"({model_cfg.min_points()}); using the midpoint upsampler", file=sys.stderr)
        upsampler = load_upsampler("midpoint", cfg["ratio"], config=cfg)
    t0 = time.perf_counter()
    adapted = {}
    if adapt:
        dense, adapted = adapt_upsample(cfg["model"], xyz, adapt, ratio=cfg["ratio"],
                                        device=cfg.get("torch.device", "auto"), progress=True)
    else:
        dense = upsampler.upsample(xyz)
    seconds = time.perf_counter() - t0
    generated = np.zeros(dense.shape[0], dtype=np.uint8)
    generated[xyz.shape[0]:] = 1
    write_cloud(dst, dense, {"generated": generated})
    return {"input": src, "output": dst, "model": upsampler.name, "ratio": upsampler.ratio,
            "backend": "torch" if adapt else upsampler.backend,
            "input_points": int(xyz.shape[0]), "output_points": int(dense.shape[0]),
            "seconds": round(seconds, 4), "adapt": adapted}


# --------------------------------------------------------------------------- subcommands


# `sspu upsample` (whole object clouds) defaults to the shipped object-surface model, which
# beats the classical MLS + FPS resampling on the PU-GAN dev split (issue #11); the node's
# default (the config's 'model') stays the CPU-real-time midpoint upsampler.
UPSAMPLE_DEFAULT_MODEL = "sspu_x4"
UPSAMPLE_DEFAULT_RATIO = 4  # its ratio: another --ratio falls back to the config's 'model'


def cmd_upsample(args: argparse.Namespace) -> int:
    implicit = False
    if args.model is None and args.config is None and args.ratio in (None,
                                                                     UPSAMPLE_DEFAULT_RATIO):
        from .upsampler import available_models

        if UPSAMPLE_DEFAULT_MODEL in available_models():
            args.model = UPSAMPLE_DEFAULT_MODEL
            implicit = True
            if args.backend is None:  # PyTorch takes clouds smaller than the ONNX patch size
                args.backend = "torch"
    cfg = _load_config(args)
    r = _upsample_file(args.input, args.output, cfg, adapt=args.adapt,
                       implicit_model=implicit)
    a = r["adapt"]
    adapted = (f", adapted {a['steps']} steps on {a['patches']} patches of the input in "
               f"{a['seconds']:.1f} s, loss {a['loss_first']:.4g} -> {a['loss_last']:.4g}"
               if a else "")
    print(f"{r['input']}: {r['input_points']} -> {r['output_points']} points "
          f"(model {r['model']}, x{r['ratio']}, backend {r['backend']}{adapted}) in "
          f"{r['seconds'] * 1000:.1f} ms -> {r['output']}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .cloud_io import write_cloud
    from .sample_data import torus_knot_surface

    if args.points < 1:
        raise UsageError(f"--points must be >= 1, got {args.points}")
    xyz = torus_knot_surface(args.points, seed=args.seed)
    write_cloud(args.output, xyz)
    print(f"wrote {xyz.shape[0]} sample points (torus-knot surface, seed {args.seed}) "
          f"to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: sample recording -> node -> recorded output, PNG + latency summary."""
    from .demo import cmd_demo as run

    return run(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from .cloud_io import read_cloud, write_cloud

    cloud = read_cloud(args.input)
    write_cloud(args.output, cloud.xyz, cloud.attributes, binary=not args.ascii)
    print(f"{args.input} -> {args.output}: {cloud.xyz.shape[0]} points, attributes: "
          f"{', '.join(cloud.attributes) or 'none'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .cloud_io import read_cloud

    cloud = read_cloud(args.input)
    xyz = cloud.xyz
    finite = np.isfinite(xyz).all(axis=1)
    info = {"file": args.input, "points": int(xyz.shape[0]),
            "non_finite_points": int((~finite).sum()),
            "attributes": {k: f"{v.dtype}{list(v.shape[1:]) or ''}"
                           for k, v in cloud.attributes.items()}}
    if finite.any():
        f = xyz[finite]
        info["min"] = [round(float(v), 4) for v in f.min(axis=0)]
        info["max"] = [round(float(v), 4) for v in f.max(axis=0)]
    print(json.dumps(info, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import find_config_dir, load_config, parameter_specs

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


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "codec":
        from .bench_codec import format_codec_benchmark, run_codec_benchmark

        result = run_codec_benchmark(args.scan, repeats=args.repeats or 50)
        print(json.dumps(result, indent=2) if args.json else format_codec_benchmark(result))
        return 0
    if args.what == "train":
        from .bench_train import format_train_benchmark, run_train_benchmark

        result = run_train_benchmark(batch=args.batch, steps=args.steps, device=args.device,
                                     overrides=_parse_sets(args.set))
        print(json.dumps(result, indent=2) if args.json else format_train_benchmark(result))
        return 0
    if args.what == "generator":
        from .bench_generator import format_generator_benchmark, run_generator_benchmark

        result = run_generator_benchmark(repeats=args.repeats or 5)
        print(json.dumps(result, indent=2) if args.json else format_generator_benchmark(result))
        return 0
    if args.what == "speed":
        from .bench_speed import format_speed_benchmark, run_speed_benchmark

        overrides = _parse_sets(args.set)
        if args.model:
            overrides["model"] = args.model[-1]
        if args.scans < 1 or args.rss_scans < 0:
            raise UsageError("--scans must be >= 1 and --rss-scans >= 0")
        result = run_speed_benchmark(args.data, config=args.config, overrides=overrides,
                                     backends=args.backend, n_scans=args.scans,
                                     rss_scans=args.rss_scans, progress=not args.json)
        print(json.dumps(result, indent=2) if args.json else format_speed_benchmark(result))
        return 0
    if args.what == "model":
        from .models.generator import GeneratorConfig, describe_generator

        for name, cfg in (("paper", GeneratorConfig()), ("light", GeneratorConfig.light())):
            print(f"preset {name}: " + describe_generator(cfg, batches=(24, args.batch)))
        return 0
    if args.what == "quality":
        return _bench_quality(args)
    raise UsageError(f"unknown benchmark '{args.what}'")


QUALITY_SUITES = {"pugan": "../shared/data/pugan-dev", "kitti-beams": "../shared/data/kitti",
                  "lidar-sim": "../shared/data"}


def _bench_quality(args: argparse.Namespace) -> int:
    """``sspu bench quality --suite pugan|kitti-beams|lidar-sim``: one table per run."""
    data = args.data or QUALITY_SUITES[args.suite]
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.adapt is not None and args.adapt < 0:
        raise UsageError(f"--adapt must be >= 0 steps, got {args.adapt}")
    for option in ("frames", "ground"):
        if getattr(args, option, None) is not None and args.suite != "kitti-beams":
            raise UsageError(f"--{option} applies to --suite kitti-beams only")
    if args.suite == "pugan":
        from .evaluation import format_quality, run_quality

        result = run_quality(data, models=args.model or [], limit=args.limit,
                             out_dir=args.out, adapt=args.adapt or 0, plot=args.plot,
                             progress=not args.json)
        print(json.dumps(result, indent=2) if args.json else format_quality(result))
        return 0
    if args.adapt:
        raise UsageError("--adapt is implemented for --suite pugan only")
    extra = {}
    if getattr(args, "ground", None) is not None:  # suites checked above
        extra["ground"] = args.ground
    if getattr(args, "frames", None):
        from .bags import parse_frames

        try:
            extra["frames"] = parse_frames(args.frames)
        except ValueError as e:
            raise UsageError(f"--frames expects A:B (e.g. 5: or 0:5): {e}") from None
    try:
        from . import lidar_benchmark
    except ImportError as e:
        raise UsageError(f"--suite {args.suite} needs sspu_ros.lidar_benchmark, which is "
                         f"not available in this installation ({e})") from None
    kind = args.suite.replace("-", "_")
    run = getattr(lidar_benchmark, f"run_{kind}", None)
    fmt = getattr(lidar_benchmark, f"format_{kind}", None)
    if run is None or fmt is None:
        raise UsageError(f"--suite {args.suite}: sspu_ros.lidar_benchmark has no run_{kind}/"
                         f"format_{kind} yet")
    result = run(data, args.model or [], out_dir=args.out, limit=args.limit, plot=args.plot,
                 **extra)
    print(json.dumps(result, indent=2) if args.json else fmt(result))
    return 0


def _parse_sets(items: list[str] | None) -> dict:
    """``--set a.b=VALUE`` pairs; VALUE is read as YAML (numbers, true/false, lists)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


ABLATIONS = {"no-sc": {"loss.sc": 0.0}, "no-ic": {"loss.ic": 0.0},
             "no-neu": {"model.expansion": "duplicate"}}


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training.trainer import Trainer

    overrides = _parse_sets(args.set)
    for ab in args.ablation or []:
        overrides.update(ABLATIONS[ab])
    if args.steps is not None:
        overrides["optim.steps"] = args.steps
    if args.batch_size is not None:
        overrides["optim.batch_size"] = args.batch_size
    if args.device is not None:
        overrides["run.device"] = args.device
    if args.seed is not None:
        overrides["run.seed"] = args.seed
    cfg = load_config(args.config, name="train")
    if args.data:
        overrides["data.paths"] = list(cfg["data.paths"]) + list(args.data)
    cfg = load_config(args.config, overrides, name="train")
    trainer = Trainer(cfg, args.out, resume=args.resume, init=args.init,
                      progress=not args.no_progress)
    try:
        if trainer.dist.main:
            print(f"sspu train: {len(trainer.bank)} patches, {trainer.device}, "
                  f"world size {trainer.dist.world}, step {trainer.step} -> {cfg['optim.steps']}"
                  f", output {args.out}")
        last = trainer.run()
    finally:
        trainer.close()
    if trainer.dist.main:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if not k.startswith("t_"))
        what = f": {terms}" if terms else " (no step run: initial weights)"
        print(f"sspu train: done at step {trainer.step}{what}; checkpoint "
              f"{Path(args.out) / 'checkpoint.pt'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    if not Path(args.model).is_file():
        raise UsageError(f"{args.model}: no such checkpoint")
    from .export import real_patches
    from .training.trainer import load_checkpoint

    try:
        patch_size = int(load_checkpoint(args.model).get("config", {}).get("data.patch_size",
                                                                            256))
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{args.model}: not a loadable checkpoint: {e}") from None
    real = real_patches(patch_size=patch_size)
    r = export_checkpoint(args.model, args.onnx, opset=args.opset, fp16=args.fp16,
                          real_patches=real)
    on_real = ("" if r["max_abs_diff_real"] is None else
               f", {len(real)} PU-GAN dev patches {r['max_abs_diff_real']:.2e}")
    print(f"exported {args.model} -> {r['onnx']} ({r['precision']}, x{r['ratio']}, "
          f"{r['patch_size']}-point patches, dynamic batch); onnxruntime vs PyTorch fp32 max "
          f"|diff|: random patches {r['max_abs_diff']:.2e}{on_real} (bound {r['tolerance']:g})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    problems = run_checks(print)
    return 1 if problems and args.strict else 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sspu",
        description="sspu_ros: self-supervised LiDAR point-cloud densification (ROS-free CLI).",
    )
    parser.add_argument("--version", action="version", version=f"sspu_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def with_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="upsampler (default: the config's 'model')")
        p.add_argument("--ratio", type=int, help="upsampling ratio (default: config 'ratio')")
        p.add_argument("--config", help="ROS 2 parameter YAML overriding the defaults")
        p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                       help="what runs a trained model (default: config 'backend')")

    p = sub.add_parser("upsample", help="upsample a point-cloud file (.xyz .ply .pcd .bin .npy)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="output file; format from extension")
    with_model(p)
    p.set_defaults(model=None)
    for action in p._actions:
        if action.dest == "model":
            action.help = (f"upsampler (default: {UPSAMPLE_DEFAULT_MODEL}, the shipped object-"
                           "surface model, run by PyTorch unless --backend, when installed, with "
                           "no --config and ratio 4; else the config's 'model')")
    p.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                   help="first fine-tune a copy of the .pt model on the input's own patches "
                   "for STEPS self-supervised steps (test-time adaptation)")
    p.set_defaults(func=cmd_upsample)

    p = sub.add_parser("sample", help="write the project's own procedural sample cloud")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="main job: sample recording -> node -> PNG + latency")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    with_model(p)
    from .demo import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert between point-cloud file formats")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ascii", action="store_true", help="ascii PLY/PCD instead of binary")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="summary of a point-cloud file")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("config", help="show, check or describe the node/CLI parameters")
    p.add_argument("action", choices=["show", "check", "params", "path"])
    p.add_argument("file", nargs="?", help="parameter YAML (show: merged onto defaults)")
    p.add_argument("--name", choices=CONFIG_NAMES, default="upsample",
                   help="which configuration: the node/CLI's (upsample) or training's")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", choices=["codec", "train", "quality", "model", "generator", "speed"])
    p.add_argument("--scan", help="codec: KITTI .bin scan (default: ../shared/data, else "
                   "synthetic)")
    p.add_argument("--repeats", type=int, help="codec / generator: repetitions "
                   "(default 50 / 5)")
    p.add_argument("--batch", type=int, default=28,
                   help="train: patches per step; model: batch timed besides 24")
    p.add_argument("--steps", type=int, default=5, help="train: timed steps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="train: override a training parameter (repeatable)")
    p.add_argument("--suite", choices=sorted(QUALITY_SUITES), default="pugan",
                   help="quality: which benchmark (default pugan)")
    p.add_argument("--data", help="quality: the suite's data (default: "
                   + ", ".join(f"{k}: {v}" for k, v in QUALITY_SUITES.items()) + ")")
    p.add_argument("--model", action="append",
                   help="quality: model(s) to score beside the baselines (repeatable)")
    p.add_argument("--limit", type=int, help="quality: first N shapes / frames only")
    p.add_argument("--out", help="quality: write predictions (and figures) here "
                   "(default with --plot: out/quality)")
    p.add_argument("--plot", action="store_true",
                   help="quality: PNG figures of a few shapes and of the metrics")
    p.add_argument("--adapt", type=int, metavar="STEPS",
                   help="quality (pugan): also score each .pt model adapted to every input "
                   "for STEPS self-supervised steps (a separate row with its time)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--frames", metavar="A:B",
                   help="quality (kitti-beams): frames A..B-1 only (e.g. 5: = the later scans "
                   "of a KITTI raw drive folder, which has no labels: front region only)")
    p.add_argument("--ground", choices=["fixed", "plane"],
                   help="quality (kitti-beams): above ground = z > -1.53 m (fixed, default) "
                   "or > 0.2 m over a plane fitted to the 16-beam input (plane)")
    p.add_argument("--scans", type=int, default=50, help="speed: timed scans per source")
    p.add_argument("--rss-scans", type=int, default=1000,
                   help="speed: consecutive scans of the memory test (0 skips it)")
    p.add_argument("--backend", action="append",
                   help="speed: backend(s) to time (default: torch and onnxruntime)")
    p.add_argument("--config", help="speed: upsample parameter YAML (its model is timed)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="self-supervised training of the generator")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="training source: mesh, cloud file, KITTI .bin, bag or folder "
                   "(repeatable; adds to data.paths)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, logs, TensorBoard)")
    p.add_argument("--config", help="training YAML (see config/train.yaml)")
    p.add_argument("--steps", type=int, help="override optim.steps")
    p.add_argument("--batch-size", type=int, help="override optim.batch_size")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override run.device")
    p.add_argument("--seed", type=int, help="override run.seed")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override any training parameter, e.g. --set loss.ic=0 (repeatable)")
    p.add_argument("--ablation", action="append", choices=sorted(ABLATIONS),
                   help="paper Table 3 ablations: no-sc, no-ic, no-neu (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt exactly")
    p.add_argument("--init", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a trained checkpoint to ONNX (checked)")
    p.add_argument("--model", required=True, help="checkpoint .pt from sspu train")
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--fp16", action="store_true", help="float16 weights and activations "
                   "(float32 input/output); the ONNX for a TensorRT 11 FP16 engine")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("doctor", help="check the installation (torch, ROS 2, backends, data)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    p.set_defaults(func=cmd_doctor)

    # Subcommands that live beside their core module: each module in CLI_EXTENSIONS has
    # add_subcommands(sub) adding its parsers (with set_defaults(func=...)); their errors
    # for bad user input raise UsageError or the core modules' error types.
    import importlib

    for module in CLI_EXTENSIONS:
        importlib.import_module(module).add_subcommands(sub)
    return parser


CLI_EXTENSIONS: list[str] = [
    "sspu_ros.cli_engine",
    "sspu_ros.cli_bags",
    "sspu_ros.cli_finetune",
    "sspu_ros.cli_densify",
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"sspu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sspu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
