"""``sspu bench quality``: upsamplers side by side on a PU-GAN-layout folder
(``input/NAME.xyz`` 2048 points, ``gt/NAME.xyz`` 8192 points), scored with the guide's
conventions (CD, HD ×1e-3; see :mod:`sspu_ros.metrics`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .cloud_io import CloudFileError, read_cloud, write_cloud
from .metrics import MeshDistance, chamfer_hausdorff
from .upsampler import load_upsampler

RATIO = 4


def repeat_upsample(xyz: np.ndarray, ratio: int = RATIO) -> np.ndarray:
    """The input repeated ``ratio`` times (the trivial baseline), (r·N, 3)."""
    return np.tile(xyz, (ratio, 1))


def run_quality(data: str | Path, models: list[str], *, limit: int | None = None,
                out_dir: str | Path | None = None) -> dict:
    """Score 'input x4', 'midpoint' and every model of ``models`` on every shape."""
    data = Path(data)
    inputs = sorted((data / "input").glob("*.xyz"))
    if not inputs:
        raise CloudFileError(f"{data}: no input/*.xyz shapes (expected the PU-GAN layout)")
    inputs = inputs[:limit] if limit else inputs
    methods = {"input x4": repeat_upsample, "midpoint": load_upsampler("midpoint", RATIO).upsample}
    for m in models:
        methods[m] = load_upsampler(m, RATIO).upsample
    rows: dict[str, dict] = {m: {"cd": [], "hd": [], "p2f": [], "seconds": []}
                             for m in methods}
    n_meshes = 0
    for path in inputs:
        gt_path = data / "gt" / path.name
        if not gt_path.is_file():
            raise CloudFileError(f"{gt_path}: ground truth missing for {path.name}")
        xyz, gt = read_cloud(path).xyz, read_cloud(gt_path).xyz
        mesh_path = data / "meshes" / f"{path.stem}.off"
        mesh = None
        if mesh_path.is_file():
            from .cloud_io import read_mesh

            mesh = MeshDistance(*read_mesh(mesh_path))
            n_meshes += 1
        for name, fn in methods.items():
            t0 = time.perf_counter()
            pred = fn(xyz)
            rows[name]["seconds"].append(time.perf_counter() - t0)
            cd, hd = chamfer_hausdorff(pred, gt)
            rows[name]["cd"].append(cd)
            rows[name]["hd"].append(hd)
            if mesh is not None:
                rows[name]["p2f"].append(mesh(pred))
            if out_dir is not None:
                safe = name.replace("/", "_").replace(" ", "_")
                write_cloud(Path(out_dir) / safe / path.name, pred)
    def p2f(r: dict, stat) -> float | None:
        return 1e3 * float(stat(np.concatenate(r["p2f"]))) if r["p2f"] else None

    return {"data": str(data), "shapes": [p.stem for p in inputs], "meshes": n_meshes,
            "methods": {m: {"cd_e3": 1e3 * float(np.mean(r["cd"])),
                            "hd_e3": 1e3 * float(np.mean(r["hd"])),
                            "p2f_mean_e3": p2f(r, np.mean), "p2f_std_e3": p2f(r, np.std),
                            "seconds_per_shape": float(np.median(r["seconds"])),
                            "per_shape_cd_e3": [1e3 * v for v in r["cd"]]}
                        for m, r in rows.items()}}


def format_quality(result: dict) -> str:
    lines = [f"sspu bench quality: {len(result['shapes'])} shapes from {result['data']} "
             "(x4; CD, HD x1e-3, each cloud normalized to the unit sphere; P2F x1e-3 "
             f"over all points of the {result['meshes']} shapes with a mesh)",
             f"{'method':<40} {'CD':>8} {'HD':>8} {'P2F':>8} {'P2Fstd':>8} {'s/shape':>8}"]

    def f(v):
        return f"{v:8.3f}" if v is not None else f"{'-':>8}"

    for m, r in result["methods"].items():
        lines.append(f"{m[-40:]:<40} {f(r['cd_e3'])} {f(r['hd_e3'])} {f(r['p2f_mean_e3'])} "
                     f"{f(r['p2f_std_e3'])} {r['seconds_per_shape']:8.3f}")
    return "\n".join(lines)
