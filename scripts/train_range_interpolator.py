#!/usr/bin/env python3
"""Train the learned range-image interpolator (issue #10) on KITTI scans.

Default (self-supervised from 16-beam scans only): the first five scans of the raw drive
(``raw_2011_09_26_drive_0001`` scans 0-4); raw scans 5-9 and the object frames stay out
for evaluation. ``--mode full64`` trains the supervised reference (64-beam targets).

    OMP_NUM_THREADS=1 python scripts/train_range_interpolator.py --out out/range_self16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sspu_ros.training.range_interpolation import MODES, TrainConfig, train

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti" / \
    "raw_2011_09_26_drive_0001" / "velodyne_points" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", nargs="*", help="KITTI .bin scans or .npy (H, W) range "
                   "images (default: raw drive 0001 scans 0-4)")
    p.add_argument("--mode", choices=list(MODES), default="self16",
                   help="self16: KITTI 64-beam scans thinned to 16 beams, self-supervised; "
                   "self: the images as they are (a 16-beam sensor's), self-supervised; "
                   "full64: supervised 64-beam targets (a labelled reference)")
    p.add_argument("--extra-scans", nargs="*", default=[],
                   help="a second set of scans / .npy images trained jointly (e.g. simulated "
                   "64-beam images)")
    p.add_argument("--extra-mode", choices=list(MODES), default="full64",
                   help="mode of --extra-scans")
    p.add_argument("--init", help="start from this range-interpolator checkpoint")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--half-width", type=int, default=2)
    p.add_argument("--mix", choices=["inverse", "linear"], default="inverse")
    p.add_argument("--smooth-gate", type=float, default=0.05,
                   help="relative jump below which the weights are fixed linear (0: off)")
    p.add_argument("--no-normalize-spacing", action="store_true",
                   help="do not divide the range features by the training gap")
    p.add_argument("--trust-scale", action="store_true",
                   help="trust tolerance max(0.3 m, 3 %%) times the training gap")
    p.add_argument("--cap", type=float, default=2.0, help="L1 cap per pixel, metres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="out/range_interp")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scans = a.scans or [str(s) for s in sorted(RAW.glob("*.bin"))[:5]]
    if not scans:
        p.error(f"no scans given and none found under {RAW}")
    cfg = TrainConfig(scans=scans, mode=a.mode, init=a.init, extra_scans=a.extra_scans,
                      extra_mode=a.extra_mode, steps=a.steps, batch=a.batch,
                      crop=a.crop,
                      lr=a.lr, seed=a.seed, out=a.out, cap=a.cap,
                      trust_scale=a.trust_scale,
                      model={"hidden": a.hidden, "layers": a.layers,
                             "half_width": a.half_width, "mix": a.mix,
                             "smooth_gate": a.smooth_gate,
                             "normalize_spacing": not a.no_normalize_spacing})
    print(train(cfg, log=lambda s: print(s, flush=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
