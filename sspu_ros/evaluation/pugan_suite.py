"""``sspu bench quality --suite pugan``: upsamplers side by side on a PU-GAN-layout folder
(``input/NAME.xyz`` 2048 points, ``gt/NAME.xyz`` 8192 points, ``meshes/NAME.off`` where
available), scored with the guide's conventions (GUIDE.md §3; see
:mod:`sspu_ros.evaluation.metrics`):
CD and HD ×1e-3 with each cloud normalized to the unit sphere, P2F (mean and std over all
points of all shapes with a mesh) ×1e-3, plus the median seconds per shape.

Rows: the classical baselines of :data:`BASELINES` (skipped, with the reason, when their
dependency is missing), then every ``--model``, then, with ``adapt`` > 0, one
"<model> +adapt N" row per PyTorch checkpoint: a copy fine-tuned on each input's own
patches (:mod:`sspu_ros.training.adapt`) before upsampling, its time including the adaptation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CloudFileError
from ..geometry.mesh_distance import MeshDistance
from ..io.cloud_files import read_cloud, write_cloud
from ..runtime.loading import load_upsampler
from .baselines import mls_upsample, open3d_available, poisson_upsample
from .metrics import chamfer_hausdorff

RATIO = 4
UpsampleFn = Callable[[np.ndarray], np.ndarray]  # (N, 3) -> (r·N, 3)


def repeat_upsample(xyz: np.ndarray, ratio: int = RATIO) -> np.ndarray:
    """The input repeated ``ratio`` times (the trivial baseline), (r·N, 3)."""
    return np.tile(xyz, (ratio, 1))


def _midpoint(xyz: np.ndarray) -> np.ndarray:
    return load_upsampler("midpoint", RATIO).upsample(xyz)


# name -> (function (N, 3) -> (rN, 3), None or a function returning why it cannot run)
BASELINES: dict[str, tuple[UpsampleFn, Callable[[], str | None] | None]] = {
    "input x4": (repeat_upsample, None),
    "midpoint": (_midpoint, None),
    "mls quadric + fps": (lambda xyz: mls_upsample(xyz, RATIO), None),
    "poisson (open3d)": (lambda xyz: poisson_upsample(xyz, RATIO), open3d_available),
}


def baseline_methods(names: list[str] | None = None) -> tuple[dict[str, UpsampleFn],
                                                                dict[str, str]]:
    """The baselines to run (all by default) and the skipped ones with their reason."""
    names = list(BASELINES) if names is None else names
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    run, skipped = {}, {}
    for name in names:
        fn, check = BASELINES[name]
        reason = check() if check is not None else None
        if reason:
            skipped[name] = reason
        else:
            run[name] = fn
    return run, skipped


def _model_methods(models: list[str], adapt: int) -> tuple[dict[str, UpsampleFn],
                                                           dict[str, str]]:
    from ..errors import ModelError

    run: dict[str, UpsampleFn] = {}
    skipped: dict[str, str] = {}
    adapted: dict[str, UpsampleFn] = {}
    for m in models:
        run[m] = load_upsampler(m, RATIO).upsample
        if adapt > 0:
            from ..training.adapt import checkpoint_of

            try:
                adapted[f"{m} +adapt {adapt}"] = _adapted_fn(checkpoint_of(m), adapt)
            except ModelError as e:
                skipped[f"{m} +adapt {adapt}"] = str(e)
    run.update(adapted)
    return run, skipped


def _adapted_fn(path: Path, steps: int) -> UpsampleFn:
    def fn(xyz: np.ndarray) -> np.ndarray:
        from ..training.adapt import adapt_upsample

        return adapt_upsample(path, xyz, steps, ratio=RATIO)[0]

    return fn


def plot_shape_indices(n_shapes: int, n_plot: int) -> list[int]:
    """Indices of the shapes drawn by ``--plot``: ``n_plot`` spread evenly over the list."""
    if n_shapes == 0 or n_plot <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n_shapes - 1, min(n_plot, n_shapes))})


def _safe(name: str) -> str:
    """A folder name for a method: runs of other characters than [A-Za-z0-9.-] -> "_"."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "method"


def run_quality(data: str | Path, models: list[str], *, limit: int | None = None,
                out_dir: str | Path | None = None, adapt: int = 0, plot: bool = False,
                plot_shapes: int = 3, baselines: list[str] | None = None,
                progress: bool = True) -> dict:
    """Score the baselines, every model of ``models`` and their adapted copies.

    Args:
        data: PU-GAN-layout folder (``input/``, ``gt/``, optional ``meshes/``).
        models: model names or paths (see :func:`sspu_ros.runtime.loading.load_upsampler`).
        limit: the first N shapes only.
        out_dir: predictions go to ``out_dir/<method>/<shape>.xyz`` (and figures, with
            ``plot``; default ``out/quality`` then).
        adapt: test-time adaptation steps for the ``.pt`` models (0: no adapted rows).
        plot: PNG figures (:mod:`sspu_ros.evaluation.plots`) of ``plot_shapes`` shapes and
            the metrics.
        baselines: names from :data:`BASELINES` (default: all).

    Returns:
        dict with ``shapes``, ``meshes``, ``methods`` (per method: ``cd_e3``, ``hd_e3``,
        ``p2f_mean_e3``, ``p2f_std_e3``, ``seconds_per_shape`` and per-shape CD/HD),
        ``skipped`` (method -> reason) and ``figures`` (paths).
    """
    data = Path(data)
    if not data.is_dir():
        raise CloudFileError(f"{data}: no such folder (expected the PU-GAN layout: input/, "
                             "gt/, meshes/; e.g. ../shared/data/pugan-dev)")
    inputs = sorted((data / "input").glob("*.xyz"))
    if not inputs:
        raise CloudFileError(f"{data}: no input/*.xyz shapes (expected the PU-GAN layout)")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    inputs = inputs[:limit] if limit else inputs
    if adapt < 0:
        raise ValueError(f"--adapt must be >= 0 steps, got {adapt}")
    methods, skipped = baseline_methods(baselines)
    more, more_skipped = _model_methods(models, adapt)
    methods.update(more)
    skipped.update(more_skipped)
    if plot and out_dir is None:
        out_dir = Path("out") / "quality"
    plot_idx = set(plot_shape_indices(len(inputs), plot_shapes)) if plot else set()
    drawn: list[tuple[str, dict[str, np.ndarray]]] = []
    rows: dict[str, dict] = {m: {"cd": [], "hd": [], "p2f": [], "seconds": []}
                             for m in methods}
    n_meshes = 0
    from tqdm import tqdm

    bar = tqdm(total=len(inputs) * len(methods), desc="bench quality", unit="run",
               disable=not progress, leave=False, dynamic_ncols=True)
    for i, path in enumerate(inputs):
        gt_path = data / "gt" / path.name
        if not gt_path.is_file():
            raise CloudFileError(f"{gt_path}: ground truth missing for {path.name}")
        xyz, gt = read_cloud(path).xyz, read_cloud(gt_path).xyz
        mesh_path = data / "meshes" / f"{path.stem}.off"
        mesh = None
        if mesh_path.is_file():
            from ..io.cloud_files import read_mesh

            mesh = MeshDistance(*read_mesh(mesh_path))
            n_meshes += 1
        preds: dict[str, np.ndarray] = {}
        for name, fn in methods.items():
            bar.set_postfix_str(f"{path.stem}: {name}"[-40:])
            t0 = time.perf_counter()
            pred = fn(xyz)
            rows[name]["seconds"].append(time.perf_counter() - t0)
            cd, hd = chamfer_hausdorff(pred, gt)
            rows[name]["cd"].append(cd)
            rows[name]["hd"].append(hd)
            if mesh is not None:
                rows[name]["p2f"].append(mesh(pred))
            if out_dir is not None:
                write_cloud(Path(out_dir) / _safe(name) / path.name, pred)
            if i in plot_idx:
                preds[name] = pred
            bar.update(1)
        if i in plot_idx:
            drawn.append((path.stem, {"input": xyz, **preds, "ground truth": gt}))
    bar.close()

    def p2f(r: dict, stat) -> float | None:
        return 1e3 * float(stat(np.concatenate(r["p2f"]))) if r["p2f"] else None

    result = {"data": str(data), "shapes": [p.stem for p in inputs], "meshes": n_meshes,
              "ratio": RATIO, "adapt_steps": adapt,
              "methods": {m: {"cd_e3": 1e3 * float(np.mean(r["cd"])),
                              "hd_e3": 1e3 * float(np.mean(r["hd"])),
                              "p2f_mean_e3": p2f(r, np.mean), "p2f_std_e3": p2f(r, np.std),
                              "seconds_per_shape": float(np.median(r["seconds"])),
                              "per_shape_cd_e3": [1e3 * v for v in r["cd"]],
                              "per_shape_hd_e3": [1e3 * v for v in r["hd"]]}
                          for m, r in rows.items()},
              "skipped": skipped, "out_dir": str(out_dir) if out_dir is not None else None,
              "figures": []}
    if plot:
        result["figures"] = _plot(result, drawn, Path(out_dir))
    return result


def _plot(result: dict, drawn: list, out_dir: Path) -> list[str]:
    try:
        from .plots import plot_metrics, plot_shapes
    except ImportError as e:
        result["skipped"]["--plot"] = f"matplotlib not importable: {e} (pip install -e '.[eval]')"
        return []
    return [str(plot_shapes(drawn, out_dir / "shapes.png")),
            str(plot_metrics(result, out_dir / "metrics.png"))]


def format_quality(result: dict) -> str:
    lines = [f"sspu bench quality: {len(result['shapes'])} shapes from {result['data']} "
             "(x4; CD, HD x1e-3, each cloud normalized to the unit sphere; P2F x1e-3 "
             f"over all points of the {result['meshes']} shapes with a mesh; s/shape: median)",
             f"{'method':<40} {'CD':>8} {'HD':>8} {'P2F':>8} {'P2Fstd':>8} {'s/shape':>8}"]

    def f(v):
        return f"{v:8.3f}" if v is not None else f"{'-':>8}"

    for m, r in result["methods"].items():
        lines.append(f"{m[-40:]:<40} {f(r['cd_e3'])} {f(r['hd_e3'])} {f(r['p2f_mean_e3'])} "
                     f"{f(r['p2f_std_e3'])} {r['seconds_per_shape']:8.3f}")
    for m, why in result.get("skipped", {}).items():
        lines.append(f"skipped {m}: {why}")
    if result.get("out_dir"):
        lines.append(f"predictions: {result['out_dir']}/<method>/<shape>.xyz")
    for fig in result.get("figures", []):
        lines.append(f"figure: {fig}")
    return "\n".join(lines)
