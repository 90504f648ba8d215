"""``sspu densify``: the scan densifier (:mod:`sspu_ros.densify.densifier`) on one scan file."""

from __future__ import annotations

import argparse
import time

import numpy as np


def cmd_densify(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..densify.beams import ScanHints
    from ..densify.densifier import densify_points
    from ..errors import UsageError
    from ..io.cloud_files import read_cloud, write_cloud
    from ..runtime.loading import load_upsampler

    overrides = {k: v for k, v in (("model", args.model), ("ratio", args.ratio),
                                   ("mode", args.mode)) if v is not None}
    if args.backend is not None:
        overrides["backend"] = args.backend
    cfg = load_config(args.config, overrides)
    cloud = read_cloud(args.scan)
    finite = np.isfinite(cloud.xyz).all(axis=1)
    cloud = cloud.select(finite) if not finite.all() else cloud
    if len(cloud) == 0:
        raise UsageError(f"{args.scan}: the scan has no (finite) points")
    t0 = time.perf_counter()
    upsampler = load_upsampler(cfg["model"], cfg["ratio"], config=cfg)
    t1 = time.perf_counter()
    r = densify_points(cloud.xyz, upsampler, cfg,
                       hints=ScanHints.from_attributes(cloud.attributes))
    t2 = time.perf_counter()
    xyz = np.concatenate([cloud.xyz, r.generated])
    generated = np.zeros(xyz.shape[0], dtype=np.uint8)
    generated[len(cloud):] = 1
    attrs = {"generated": generated}
    intensity = cloud.intensity
    if intensity is not None:  # generated points: inverse-distance mean of their sources
        d = np.linalg.norm(r.generated[:, None, :] - cloud.xyz[r.sources], axis=2)
        w = 1.0 / np.maximum(d, 1e-6)
        gen_i = (w * intensity[r.sources]).sum(1) / w.sum(1)
        attrs["intensity"] = np.concatenate([intensity, gen_i]).astype(np.float32)
    if args.output.lower().endswith(".bin"):
        attrs = {"intensity": attrs.get("intensity", np.zeros(xyz.shape[0], np.float32))}
    write_cloud(args.output, xyz, attrs)
    tm = r.timings_ms
    print(f"{args.scan}: {len(cloud)} points, mode {cfg['mode']}, model "
          f"{upsampler.name} x{upsampler.ratio}")
    if r.fallback:
        fb = getattr(upsampler, "fallback", None)
        print(f"  no beam structure ({r.fallback}); densified with point patches "
              f"({fb.name if fb is not None else 'none'}) instead")
    if r.path == "beams":
        print(f"  beams from {r.structure}; cropped out {r.n_cropped_out}, capped "
              f"{r.n_capped}, ground {r.n_ground}; {r.n_groups} object clusters"
              if cfg["mode"] == "objects" else
              f"  beams from {r.structure}; cropped out {r.n_cropped_out}, capped {r.n_capped}")
        print(f"  densified {r.n_selected} points -> {len(r.generated)} generated on "
              f"{upsampler.ratio - 1} virtual beams per gap ({r.n_outliers} vetoed as "
              f"bridges) -> {args.output} ({xyz.shape[0]} points)")
    else:
        print(f"  cropped out {r.n_cropped_out}, capped {r.n_capped}, ground {r.n_ground}; "
              f"{r.n_clusters} clusters, {r.n_candidates} eligible, {r.n_groups} densified "
              f"({r.n_groups_capped} left out by patches.max_per_scan) in {r.n_patches} "
              "patches")
        print(f"  densified {r.n_selected} points -> {len(r.generated)} generated "
              f"({r.n_outliers} outliers dropped) -> {args.output} ({xyz.shape[0]} points)")
    print(f"  time: load {1e3 * (t1 - t0):.0f} ms; densify {1e3 * (t2 - t1):.1f} ms "
          f"(preprocess {tm.get('preprocess', 0):.1f}, inference {tm.get('inference', 0):.1f}, "
          f"postprocess {tm.get('postprocess', 0):.1f})")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("densify", help="densify the objects / ROI / all non-ground points of "
                       "one LiDAR scan (.bin .pcd .ply .npy ...)")
    p.add_argument("scan", help="scan file; KITTI .bin is float32 x, y, z, intensity")
    p.add_argument("-o", "--output", required=True,
                   help="output file (format from extension; .bin: float32 x, y, z, intensity;"
                   " others also get a 'generated' flag)")
    p.add_argument("--mode", choices=["objects", "roi", "full"], help="override 'mode'")
    p.add_argument("--model", help="upsampler (default: the config's 'model')")
    p.add_argument("--ratio", type=int, help="upsampling ratio (default: config 'ratio')")
    p.add_argument("--backend", help="override 'backend' (auto, torch, onnxruntime, tensorrt)")
    p.add_argument("--config", help="ROS 2 parameter YAML overriding the defaults")
    p.set_defaults(func=cmd_densify)
