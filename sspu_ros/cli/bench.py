"""``sspu bench``: the benchmarks that print figures (codec, train, generator, speed,
model, quality suites)."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from .common import _parse_sets


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "codec":
        from ..evaluation.bench_codec import format_codec_benchmark, run_codec_benchmark
        from ..ros.messages import pointcloud2_types

        result = run_codec_benchmark(args.scan, repeats=args.repeats or 50,
                                     message_types=pointcloud2_types())
        print(json.dumps(result, indent=2) if args.json else format_codec_benchmark(result))
        return 0
    if args.what == "train":
        from ..evaluation.bench_train import format_train_benchmark, run_train_benchmark

        result = run_train_benchmark(batch=args.batch, steps=args.steps, device=args.device,
                                     overrides=_parse_sets(args.set))
        print(json.dumps(result, indent=2) if args.json else format_train_benchmark(result))
        return 0
    if args.what == "generator":
        from ..evaluation.bench_generator import format_generator_benchmark, run_generator_benchmark

        result = run_generator_benchmark(repeats=args.repeats or 5)
        print(json.dumps(result, indent=2) if args.json else format_generator_benchmark(result))
        return 0
    if args.what == "speed":
        from ..evaluation.bench_speed import format_speed_benchmark, run_speed_benchmark

        overrides = _parse_sets(args.set)
        if args.model:
            overrides["model"] = args.model[-1]
        if args.scans < 1 or args.rss_scans < 0:
            raise UsageError("--scans must be >= 1 and --rss-scans >= 0")
        if args.beam_stride < 1:
            raise UsageError(f"--beam-stride must be >= 1, got {args.beam_stride}")
        result = run_speed_benchmark(args.data, config=args.config, overrides=overrides,
                                     backends=args.backend, n_scans=args.scans,
                                     rss_scans=args.rss_scans, beam_stride=args.beam_stride,
                                     progress=not args.json)
        print(json.dumps(result, indent=2) if args.json else format_speed_benchmark(result))
        return 0
    if args.what == "model":
        from ..model.generator import GeneratorConfig, describe_generator

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
    if getattr(args, "seed", None) is not None and args.suite != "lidar-sim":
        raise UsageError("--seed applies to --suite lidar-sim only")
    if args.suite == "pugan":
        from ..evaluation.pugan_suite import format_quality, run_quality

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
    if getattr(args, "seed", None) is not None:
        extra["seed"] = args.seed
    if getattr(args, "frames", None):
        from ..io.bags import parse_frames

        try:
            extra["frames"] = parse_frames(args.frames)
        except ValueError as e:
            raise UsageError(f"--frames expects A:B (e.g. 5: or 0:5): {e}") from None
    from ..evaluation import lidar_suites

    kind = args.suite.replace("-", "_")
    run, fmt = getattr(lidar_suites, f"run_{kind}"), getattr(lidar_suites, f"format_{kind}")
    result = run(data, args.model or [], out_dir=args.out, limit=args.limit, plot=args.plot,
                 **extra)
    print(json.dumps(result, indent=2) if args.json else fmt(result))
    return 0


def add_subcommands(sub) -> None:
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
                   help="quality: model(s) to score beside the baselines (repeatable): patch "
                   "models, beam models (sspu_lidar_x4: run through the densifier with the "
                   "scan's rings, kitti-beams and lidar-sim), and range:CHECKPOINT_OR_NAME"
                   "[@THRESHOLD][+veto], a learned range-image interpolator "
                   "(scripts/train_range_interpolator.py) at a given threshold")
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
    p.add_argument("--seed", type=int,
                   help="quality (lidar-sim): seed of the first simulated scene (default 0; "
                   "the default scenes 0-4 are the ones reported, pick settings on others)")
    p.add_argument("--scans", type=int, default=50, help="speed: timed scans per source")
    p.add_argument("--rss-scans", type=int, default=1000,
                   help="speed: consecutive scans of the memory test (0 skips it)")
    p.add_argument("--backend", action="append",
                   help="speed: backend(s) to time (default: torch and onnxruntime)")
    p.add_argument("--config", help="speed: upsample parameter YAML (its model is timed)")
    p.add_argument("--beam-stride", type=int, default=1, metavar="K",
                   help="speed: keep every K-th ring of each KITTI scan (4: the 16-beam "
                   "~30k-point input of the beam-model targets; default 1: all)")
    p.set_defaults(func=cmd_bench)
