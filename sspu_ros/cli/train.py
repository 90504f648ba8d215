"""``sspu train`` (self-supervised training) and ``sspu export`` (checkpoint -> ONNX)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .common import _parse_sets

ABLATIONS = {"no-sc": {"loss.sc": 0.0}, "no-ic": {"loss.ic": 0.0},
             "no-neu": {"model.expansion": "duplicate"}}


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..training.trainer import Trainer

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
    from ..runtime.export import export_checkpoint

    if not Path(args.model).is_file():
        raise UsageError(f"{args.model}: no such checkpoint")
    from ..model.checkpoint import load_checkpoint
    from ..runtime.export import real_patches

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


def add_subcommands(sub) -> None:
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
