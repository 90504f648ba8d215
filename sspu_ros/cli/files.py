"""``sspu upsample``, ``sample``, ``convert``, ``info``: point-cloud files."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ..errors import UsageError
from .common import _finite_points, _load_config, add_model_arguments


def _upsample_file(src: str, dst: str, cfg, adapt: int = 0,
                   implicit_model: bool = False) -> dict:
    from ..io.cloud_files import read_cloud, write_cloud
    from ..runtime.loading import load_upsampler

    if adapt < 0:
        raise UsageError(f"--adapt must be >= 0 steps, got {adapt}")
    if adapt:
        from ..training.adapt import adapt_upsample, checkpoint_of

        checkpoint_of(cfg["model"])  # a .pt, or a ModelError before any work
    upsampler = load_upsampler(cfg["model"], cfg["ratio"], config=cfg)
    if getattr(upsampler, "kind", "patches") == "beams":
        raise UsageError(f"model {cfg['model']} adds virtual beams to LiDAR scans (use "
                         "`sspu densify SCAN`); object clouds need a patch model: "
                         "--model sspu_x4 or midpoint")
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


# `sspu upsample` (whole object clouds) defaults to the shipped object-surface model, which
# beats the classical MLS + FPS resampling on the PU-GAN dev split (issue #11); another
# --ratio falls back to the midpoint upsampler. (The config's 'model', the node's default,
# is the LiDAR beam interpolator sspu_lidar_x4, which needs scans, not object clouds.)
UPSAMPLE_DEFAULT_MODEL = "sspu_x4"
UPSAMPLE_DEFAULT_RATIO = 4  # its ratio


def cmd_upsample(args: argparse.Namespace) -> int:
    implicit = False
    if args.model is None and args.config is None and args.ratio in (None,
                                                                     UPSAMPLE_DEFAULT_RATIO):
        from ..runtime.model_files import available_models

        if UPSAMPLE_DEFAULT_MODEL in available_models():
            args.model = UPSAMPLE_DEFAULT_MODEL
            implicit = True
            if args.backend is None:  # PyTorch takes clouds smaller than the ONNX patch size
                args.backend = "torch"
    if args.model is None and args.config is None:
        args.model = "midpoint"
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
    from ..io.cloud_files import write_cloud
    from ..simulation.sample_surface import torus_knot_surface

    if args.points < 1:
        raise UsageError(f"--points must be >= 1, got {args.points}")
    xyz = torus_knot_surface(args.points, seed=args.seed)
    write_cloud(args.output, xyz)
    print(f"wrote {xyz.shape[0]} sample points (torus-knot surface, seed {args.seed}) "
          f"to {args.output}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..io.cloud_files import read_cloud, write_cloud

    cloud = read_cloud(args.input)
    write_cloud(args.output, cloud.xyz, cloud.attributes, binary=not args.ascii)
    print(f"{args.input} -> {args.output}: {cloud.xyz.shape[0]} points, attributes: "
          f"{', '.join(cloud.attributes) or 'none'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..io.cloud_files import read_cloud

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


def cmd_scan_info(args: argparse.Namespace) -> int:
    """The beam structure of a LiDAR scan file: where it comes from and what it is."""
    from ..geometry.scan_structure import ScanStructureError, beam_field, scan_structure
    from ..io.cloud_files import read_cloud

    cloud = read_cloud(args.scan)
    name = beam_field(cloud.attributes)
    beam = None if name is None else np.asarray(cloud.attributes[name]).reshape(-1)
    try:
        st = scan_structure(cloud.xyz, beam=beam, beam_name=name or "ring",
                            sensor=args.sensor, columns=args.columns)
    except ScanStructureError as e:
        raise UsageError(f"{args.scan}: {e} (beam-structured processing cannot use this "
                         "scan; point-patch densification still can)") from None
    info = {"file": args.scan, "points": int(len(cloud)), **st.summary()}
    if args.json:
        info["elevation_deg"] = [round(float(v), 4) for v in st.elevation_deg]
        print(json.dumps(info, indent=2))
        return 0
    img = st.range_image(cloud.xyz)
    print(f"{args.scan}: {info['points']} points, {st.n_rows} beams from {st.source} "
          f"(elevations {info['elevation_top_deg']:+.2f} .. {info['elevation_bottom_deg']:+.2f}"
          f" deg, max spread {info['spread_max_deg']:.3f} deg, {st.missing_beams} beam(s) "
          f"without returns), range image {st.n_rows} x {st.columns}, "
          f"{100 * img.valid.mean():.1f} % of pixels hold a return")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("upsample", help="upsample a point-cloud file (.xyz .ply .pcd .bin .npy)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="output file; format from extension")
    add_model_arguments(p, model_help=(
        f"upsampler (default: {UPSAMPLE_DEFAULT_MODEL}, the shipped object-surface model, run "
        "by PyTorch unless --backend, when installed, with no --config and ratio 4; else the "
        "config's 'model')"))
    p.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                   help="first fine-tune a copy of the .pt model on the input's own patches "
                   "for STEPS self-supervised steps (test-time adaptation)")
    p.set_defaults(func=cmd_upsample)

    p = sub.add_parser("sample", help="write the project's own procedural sample cloud")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("convert", help="convert between point-cloud file formats")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ascii", action="store_true", help="ascii PLY/PCD instead of binary")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="summary of a point-cloud file")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    from ..geometry.scan_structure import SENSORS

    p = sub.add_parser("scan-info", help="beam structure of a LiDAR scan file (rings, "
                       "elevations, range image)")
    p.add_argument("scan", help="scan file (.bin .pcd .ply .npy ...; a ring/channel field is "
                   "used when present)")
    p.add_argument("--sensor", default="auto", choices=["auto", *SENSORS],
                   help="sensor preset: its beam elevations are the last resort (default auto)")
    p.add_argument("--columns", type=int, default=None,
                   help="range image width (default: the preset's, else 2048)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan_info)
