"""LiDAR densification benchmarks (GUIDE §3 "LiDAR benchmark").

``kitti-beams`` (real data): recover the 64 rings of each KITTI scan, keep every 4th beam
(16 beams), densify ×4 with each method and score against the full 64-beam scan:

- regions: points inside the labelled object boxes, and the front region
  0 < x < 40 m, |y| < 20 m; both only above the ground: by default (``ground="fixed"``)
  z > -1.53 m in the velodyne frame (0.2 m over flat ground at the sensor's 1.73 m
  mounting height), the GUIDE's convention; ``ground="plane"`` instead keeps what is
  more than 0.2 m over a plane fitted to the 16-beam input (the same plane for every
  method);
- accuracy: mean distance of the predicted points in the region to their nearest point
  of the full scan (metres; the 16-beam input alone scores exactly 0);
- completeness: mean distance of the full scan's points in the region to their nearest
  predicted point (metres);
- range-image MAE: every point set is projected into the 64 × W range image (nearest ring
  cone, azimuth bin, nearest range per pixel) and compared with the true image on the
  pixels of the dropped rows whose true point lies in the front region and that the method
  fills; ``cover`` is the share of those true pixels it fills.

Pooled over all points of all frames (per-frame means are in the result too). Methods:
the 16-beam input, kNN midpoints, range-image linear interpolation between kept beams, and
every model given: a patch model runs by ``Upsampler.upsample`` on the 16-beam points of
the evaluation crop (the front region and the object boxes grown by 2 m; the rest of the
scan is passed through, as for the midpoints), and as the node runs it in its default
``objects`` mode on the whole 16-beam scan (row ``NAME (objects)``, :data:`PATCH_MODES`,
the node's crops of the objects); a beam model
(``kind == "beams"``, e.g. ``sspu_lidar_x4``, given as a shipped name or path) runs as the
node runs it, :func:`~sspu_ros.densify.densifier.densify_points` in ``full`` mode on the
whole 16-beam scan with its ring index as the beam hint (row ``NAME (full)``); a
``range:PATH[@T][+veto]`` interpolator runs on the 16-beam range image with the ring
cones fitted to the 64-beam scan (``LearnedBeamInterpolator.interpolate``).

The guide's reference (front region, accuracy / completeness: 16-beam input 0.000 /
0.163, midpoints 0.025 / 0.158, range-image interpolation 0.031 / 0.136, MAE 0.20 m) is
reproduced by the default ``ground="fixed"`` as means of the per-frame means (the table's
``frames`` columns): 0.000 / 0.168, 0.024 / 0.164, 0.032 / 0.137, MAE 0.201 on the five dev
frames (pooled over all points: 0.000 / 0.145, 0.023 / 0.141, 0.031 / 0.114).
``ground="plane"`` also removes sloped road surface that a fixed height keeps, so its
completeness distances are smaller (0.113 / 0.109 / 0.084) with the same ranking.

``lidar-sim`` (simulated, exact surfaces): see :func:`run_lidar_sim`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CloudFileError, ModelError
from ..geometry.beams import (
    assign_rows,
    fit_ring_cones,
    interpolate_beams,
    range_image,
    recover_rings,
)
from ..geometry.knn_numpy import nearest_neighbors
from ..io.cloud_files import write_cloud
from ..runtime.midpoint import midpoint_upsample

RATIO = 4
KEEP_EVERY = 4
N_BEAMS = 64
FRONT = (0.0, 40.0, 20.0)  # 0 < x < 40, |y| < 20
GROUND_CLEARANCE = 0.2
SENSOR_HEIGHT = 1.73  # KITTI's HDL-64E above the road
CROP_MARGIN = 2.0
IMAGE_WIDTH = 2048

INPUT = "16-beam input"
MIDPOINTS = "kNN midpoints"
RANGE_INTERP = "range-image interp"
#: ``--model range:PATH[@THRESHOLD][+veto]``: a learned range-image interpolator
#: checkpoint (:mod:`sspu_ros.training.range_interpolation`; PATH may also be a shipped
#: beam model's name, e.g. ``range:sspu_lidar_x4@0.3``); ``+veto`` drops virtual points
#: bridging a depth discontinuity (on neither surface).
LEARNED_PREFIX = "range:"
VETO_SUFFIX = "+veto"
#: The densifier's modes for beam models in each suite (one row per mode): kitti-beams
#: scores everything above the ground in the front region (as range-image interpolation
#: densifies it: ``full``); lidar-sim scores the objects: ``objects`` is the node's default
#: selection (its own ground removal and clusters: the end-to-end figure), ``full`` every
#: gap, scored on the points that belong to an object (the selection range-image
#: interpolation gets from the simulator's object ids: the network's own figure).
BEAM_MODES = {"kitti-beams": ("full",), "lidar-sim": ("objects", "full")}
#: Patch models get, beside their row on the crop / the object clouds (``NAME``: the
#: shape protocol, ``Upsampler.upsample``), a row of the node's own path in its default
#: ``objects`` mode (``NAME (objects)``: ground removal, clusters, patches,
#: ``upsample_patches``, merge and outlier filter; the scan's beams are not used).
PATCH_MODES = ("objects",)

__all__ = [
    "fit_ground_plane",
    "format_kitti_beams",
    "format_lidar_sim",
    "kitti_frames",
    "run_kitti_beams",
    "run_lidar_sim",
]


# ----------------------------------------------------------------------------- helpers


def fit_ground_plane(xyz: np.ndarray, *, sensor_height: float = 1.73, band: float = 0.4,
                     iterations: int = 4, inlier: float = 0.15) -> np.ndarray:
    """Ground plane ``z = a·x + b·y + c`` of a scan -> (3,) float64 (a, b, c).

    Starts from the points within ``band`` of ``z = -sensor_height`` inside 40 m, then
    refits by least squares on the points within ``inlier`` metres of the last plane.
    Deterministic (no sampling).

    Raises:
        ValueError: when fewer than 50 points are near the expected ground height.
    """
    pts = np.asarray(xyz, dtype=np.float64)[:, :3]
    near = np.hypot(pts[:, 0], pts[:, 1]) < 40.0
    sel = near & (np.abs(pts[:, 2] + sensor_height) < band)
    plane = np.array([0.0, 0.0, -sensor_height])
    for _ in range(iterations):
        if sel.sum() < 50:
            raise ValueError(f"only {int(sel.sum())} points near the ground at "
                             f"z = {-sensor_height} m: cannot fit a ground plane")
        a = np.column_stack([pts[sel, 0], pts[sel, 1], np.ones(int(sel.sum()))])
        plane = np.linalg.lstsq(a, pts[sel, 2], rcond=None)[0]
        sel = near & (np.abs(height_above(pts, plane)) < inlier)
    return plane


def height_above(xyz: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N,) vertical height over the plane z = a·x + b·y + c."""
    pts = np.asarray(xyz, dtype=np.float64)
    return pts[:, 2] - (plane[0] * pts[:, 0] + plane[1] * pts[:, 1] + plane[2])


def in_front(xyz: np.ndarray, front: tuple[float, float, float] = FRONT,
             margin: float = 0.0) -> np.ndarray:
    """(N, 3) -> (N,) bool: x0 - m < x < x1 + m and |y| < w + m."""
    x0, x1, half = front
    return ((xyz[:, 0] > x0 - margin) & (xyz[:, 0] < x1 + margin)
            & (np.abs(xyz[:, 1]) < half + margin))


def kitti_frames(data: str | Path) -> list[tuple[Path, Path, Path]]:
    """(velodyne .bin, label_2 .txt, calib .txt) of every labelled frame of
    ``data/object`` (or of ``data`` itself when it is an ``object`` folder); for a KITTI raw
    drive folder (``velodyne_points/data/*.bin``) every scan with label and calib None."""
    root = Path(data)
    raw = root / "velodyne_points" / "data"
    if raw.is_dir():  # a KITTI raw drive: no labels (the object region stays empty)
        scans = sorted(raw.glob("*.bin"))
        if not scans:
            raise CloudFileError(f"{raw}: no .bin scans")
        return [(scan, None, None) for scan in scans]
    base = root / "object" if (root / "object" / "velodyne").is_dir() else root
    scans = sorted((base / "velodyne").glob("*.bin"))
    if not scans:
        raise CloudFileError(f"{root}: no object/velodyne/*.bin scans (expected the KITTI "
                             "3D-object layout: object/{velodyne,label_2,calib})")
    frames = []
    for scan in scans:
        label, calib = base / "label_2" / f"{scan.stem}.txt", base / "calib" / f"{scan.stem}.txt"
        if label.is_file() and calib.is_file():
            frames.append((scan, label, calib))
    if not frames:
        raise CloudFileError(f"{base}: no scan has both label_2/ and calib/ files")
    return frames


def _nn(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(S,) distance of each src point to its nearest dst point (inf when dst is empty)."""
    if len(src) == 0:
        return np.zeros(0)
    if len(dst) == 0:
        return np.full(len(src), np.inf)
    return nearest_neighbors(dst, src, workers=-1)[0]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _is_beam(model: str) -> bool:
    """A beam model (range-image interpolator) given as a shipped name or path; False for
    patch models, built-ins and names that do not resolve (the loader says why)."""
    from ..runtime.loading import is_beam_model
    from ..runtime.model_files import find_model_files

    if model == "midpoint":
        return False
    try:
        return is_beam_model(find_model_files(model))
    except ModelError:
        return False


def _split_models(models: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``--model`` entries -> (``range:`` specs, beam models by name/path, patch models)."""
    ranged = [m for m in models if m.startswith(LEARNED_PREFIX)]
    rest = [m for m in models if not m.startswith(LEARNED_PREFIX)]
    beams = [m for m in rest if _is_beam(m)]
    return ranged, beams, [m for m in rest if m not in beams]


def _load_models(models: list[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Patch models (and built-ins) by name -> their ``upsample``."""
    from ..runtime.loading import load_upsampler

    return {m: load_upsampler(m, RATIO).upsample for m in models}


def _load_node_models(models: list[str], modes: tuple[str, ...], ranged: list[str] = (),
                      patch_models: list[str] = ()) -> dict[str, tuple]:
    """Models as the node loads them (default config, backend auto; beam models with the
    ``lidar.*`` defaults: the model's own threshold, the patch fallback for scans without
    beams) -> row ``NAME (MODE)`` -> (upsampler, parameters with ``mode``): beam models by
    name/path and ``range:`` specs (:func:`_load_range_models`) one row per mode of
    ``modes``, patch models one per mode of :data:`PATCH_MODES`."""
    from ..config import load_config
    from ..runtime.loading import load_upsampler

    def node(m: str):
        return load_upsampler(m, RATIO, config=load_config(None, {"model": m}))

    nets = {m: (node(m), {}, modes) for m in models}  # the node's lidar.veto_bridges
    # range: specs say their veto (+veto); the densifier's lidar.veto_bridges decides
    nets.update({name: (net, {"lidar.veto_bridges": bool(net.veto_bridges)}, modes)
                 for name, net in _load_range_models(list(ranged)).items()})
    nets.update({m: (node(m), {}, PATCH_MODES) for m in patch_models})
    return {f"{name} ({mode})": (net, load_config(None, {"mode": mode, **extra}))
            for name, (net, extra, row_modes) in nets.items() for mode in row_modes}


def _densify_with_rings(xyz: np.ndarray, rings: np.ndarray, interp, params):
    """:func:`~sspu_ros.densify.densifier.densify_points` of a 16-beam scan whose beams
    are known: (N, 3) points, (N,) ring index of each (the hint a ``ring`` field gives)."""
    from ..densify.beams import ScanHints
    from ..densify.densifier import densify_points

    return densify_points(np.ascontiguousarray(xyz, dtype=np.float32), interp, params,
                          hints=ScanHints(beam=np.asarray(rings, dtype=np.float64)))


def _load_range_models(models: list[str]) -> dict:
    """``range:PATH[@THRESHOLD][+veto]`` entries -> learned interpolators
    (:class:`~sspu_ros.runtime.range_interpolation.LearnedBeamInterpolator`) by name.
    PATH is a checkpoint, or a shipped beam model's name (its ``.pt``)."""
    if not models:
        return {}
    from ..runtime.model_files import find_model_files
    from ..runtime.range_interpolation import LearnedBeamInterpolator

    out = {}
    for m in models:
        spec = m[len(LEARNED_PREFIX):]
        veto = spec.endswith(VETO_SUFFIX)
        path, _, thr = spec.removesuffix(VETO_SUFFIX).partition("@")
        try:
            threshold = float(thr) if thr else None
        except ValueError:
            raise ModelError(f"{m}: the threshold after '@' must be a number") from None
        if not Path(path).exists():  # a shipped name: its checkpoint
            shipped = find_model_files(path).pt
            if shipped is None:
                raise ModelError(f"{m}: '{path}' has no .pt checkpoint")
            path = str(shipped)
        try:
            interp = LearnedBeamInterpolator.from_checkpoint(path, threshold=threshold,
                                                             veto_bridges=veto)
        except (OSError, ValueError) as e:
            raise ModelError(f"{m}: {e}") from None
        file = Path(path)  # a run folder's checkpoint.pt is named by its folder
        stem = file.parent.name if file.name == "checkpoint.pt" and file.parent.name \
            else file.stem
        name = (f"{LEARNED_PREFIX}{stem}" + (f"@{threshold:g}" if threshold is not None
                                              else "") + (VETO_SUFFIX if veto else ""))
        while name in out:
            name += "'"
        out[name] = interp
    return out


class _Pool:
    """Sums for pooled means of several named statistics."""

    def __init__(self) -> None:
        self.sum: dict[str, float] = {}
        self.sq: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, key: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        self.sum[key] = self.sum.get(key, 0.0) + float(v.sum())
        self.sq[key] = self.sq.get(key, 0.0) + float((v * v).sum())
        self.n[key] = self.n.get(key, 0) + int(v.size)

    def mean(self, key: str) -> float | None:
        n = self.n.get(key, 0)
        return self.sum[key] / n if n else None

    def std(self, key: str) -> float | None:
        n = self.n.get(key, 0)
        if not n:
            return None
        m = self.sum[key] / n
        return float(np.sqrt(max(self.sq[key] / n - m * m, 0.0)))


# ------------------------------------------------------------------------ kitti-beams


def run_kitti_beams(data: str | Path, models: list[str], *, out_dir: str | Path | None = None,
                    limit: int | None = None, plot: bool = False,
                    width: int = IMAGE_WIDTH, ground: str = "fixed",
                    frames: slice | None = None) -> dict:
    """The kitti-beams suite on every labelled frame of ``data`` (see the module doc).

    Args:
        data: the KITTI folder (with ``object/{velodyne,label_2,calib}``).
        models: upsampler names or paths for ``load_upsampler(model, 4)`` (beam models
            run through the densifier in ``full`` mode), and learned range-image
            interpolators ``range:PATH[@THRESHOLD][+veto]`` (run on the 16-beam range image
            like the range-image interpolation baseline).
        out_dir: write each method's densified front crop per frame (``.ply``) there.
        limit: first ``limit`` frames only.
        plot: write ``kitti_beams.png`` (range images of the first frame) into ``out_dir``
            (default ``out/quality``).
        width: range-image columns W.
        frames: a slice of the frames (e.g. ``slice(5, None)``: the later frames of a raw
            drive), applied before ``limit``.
        ground: ``"fixed"`` (default, the GUIDE's numbers): above ground = z > 0.2 m -
            1.73 m = -1.53 m (flat ground at the sensor's mounting height; sloped road
            surface counts as above ground); ``"plane"``: more than 0.2 m over the plane
            fitted to the 16-beam input.

    Returns:
        a dict with ``frames``, ``methods`` (name -> metrics pooled over all points of all
        frames, and ``per_frame`` lists of the front-region accuracy and completeness),
        and settings.
    """
    if ground not in ("plane", "fixed"):
        raise ValueError(f"ground must be 'plane' or 'fixed', got {ground!r}")
    from tqdm import tqdm

    from ..io.kitti import boxes_to_lidar, points_in_boxes, read_calib, read_labels, read_velodyne

    # the models first: a bad --model fails before the data is read
    ranged, beam_models, patch_models = _split_models(models)
    learned = _load_range_models(ranged)
    node_rows = _load_node_models(beam_models, BEAM_MODES["kitti-beams"],
                                  patch_models=patch_models)
    fns = _load_models(patch_models)
    frames = kitti_frames(data)[frames if frames is not None else slice(None)][: limit or None]
    names = [INPUT, MIDPOINTS, RANGE_INTERP, *learned, *node_rows, *fns]
    pool = _Pool()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    per_frame: dict[str, list] = {n: [] for n in names}
    plots = []
    n_objects = 0
    spreads = []
    for scan_path, label_path, calib_path in tqdm(frames, desc="kitti-beams", unit="frame",
                                                  leave=False):
        scan = read_velodyne(scan_path)[:, :3].astype(np.float64)
        rings = recover_rings(scan)
        if rings.max() + 1 != N_BEAMS:
            raise CloudFileError(f"{scan_path}: recovered {rings.max() + 1} rings, expected "
                                 f"{N_BEAMS} (not a full HDL-64E scan stored laser by laser?)")
        cones = fit_ring_cones(scan, rings, N_BEAMS)
        spreads.append(float(cones.spread_deg.max()))
        kept_rows = np.arange(0, N_BEAMS, KEEP_EVERY)
        keep = rings % KEEP_EVERY == 0
        sparse, sparse_rings = scan[keep], rings[keep] // KEEP_EVERY
        boxes = (boxes_to_lidar(read_labels(label_path), read_calib(calib_path))
                 if label_path is not None else np.zeros((0, 7)))
        n_objects += len(boxes)
        plane = (fit_ground_plane(sparse) if ground == "plane"
                 else np.array([0.0, 0.0, -SENSOR_HEIGHT]))

        def regions(pts: np.ndarray, plane=plane, boxes=boxes) -> dict[str, np.ndarray]:
            above = height_above(pts, plane) > GROUND_CLEARANCE
            obj = points_in_boxes(pts, boxes) >= 0 if len(boxes) else np.zeros(len(pts), bool)
            return {"front": above & in_front(pts), "objects": above & obj}

        crop_mask = in_front(sparse, margin=CROP_MARGIN)
        if len(boxes):
            crop_mask |= points_in_boxes(sparse, boxes, margin=CROP_MARGIN) >= 0
        crop, outside = sparse[crop_mask], sparse[~crop_mask]

        truth_regions = regions(scan)
        truth_img = range_image(scan, rings, N_BEAMS, width)
        dropped = np.ones(N_BEAMS, bool)
        dropped[kept_rows] = False
        target_px = truth_img.valid & dropped[:, None]
        idx = np.where(truth_img.index >= 0, truth_img.index, 0)
        target_px &= truth_regions["front"][idx]

        sparse_img = range_image(sparse, sparse_rings, len(kept_rows), width)

        def interp(_crop, sparse=sparse, sparse_img=sparse_img, kept_rows=kept_rows,
                   cones=cones):
            new, _ = interpolate_beams(sparse_img, kept_rows, cones.subset(kept_rows),
                                       n_rows=N_BEAMS)
            return np.concatenate([sparse, new])

        def learned_interp(_crop, net, sparse=sparse, sparse_img=sparse_img,
                           kept_rows=kept_rows, cones=cones):
            new, _ = net.interpolate(sparse_img, kept_rows, cones.subset(kept_rows),
                                     n_rows=N_BEAMS)
            return np.concatenate([sparse, new])

        def node_beams(_crop, net, params, sparse=sparse, sparse_rings=sparse_rings):
            res = _densify_with_rings(sparse, sparse_rings, net, params)
            return np.concatenate([sparse, res.generated.astype(np.float64)])

        methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            INPUT: lambda _crop, sparse=sparse: sparse,
            MIDPOINTS: lambda c: midpoint_upsample(c, RATIO),
            RANGE_INTERP: interp,
            **{n: (lambda c, net=net: learned_interp(c, net)) for n, net in learned.items()},
            **{n: (lambda c, net=net, params=params: node_beams(c, net, params))
               for n, (net, params) in node_rows.items()},
            **fns,
        }
        frame_imgs = {"truth": truth_img.range}
        for name, fn in methods.items():
            t0 = time.perf_counter()
            pred = np.asarray(fn(crop), dtype=np.float64)[:, :3]
            seconds[name].append(time.perf_counter() - t0)
            if name == MIDPOINTS or name in fns:  # densified crop + the rest of the scan
                pred = np.concatenate([outside, pred])
            pred_regions = regions(pred)
            for region in ("front", "objects"):
                acc = _nn(pred[pred_regions[region]], scan)
                comp = _nn(scan[truth_regions[region]], pred)
                pool.add(f"{name}/{region}/acc", acc)
                pool.add(f"{name}/{region}/comp", comp)
                if region == "front":
                    per_frame[name].append((float(acc.mean()) if acc.size else None,
                                            float(comp.mean()) if comp.size else None))
            img = range_image(pred, assign_rows(pred, cones), N_BEAMS, width)
            both = target_px & img.valid
            pool.add(f"{name}/mae", np.abs(img.range[both] - truth_img.range[both]))
            pool.add(f"{name}/cover", both[target_px].astype(np.float64))
            frame_imgs[name] = img.range
            if out_dir is not None:
                keep_front = in_front(pred)
                write_cloud(Path(out_dir) / "kitti-beams" / _safe(name) /
                            f"{scan_path.stem}.ply", pred[keep_front].astype(np.float32))
        plots.append((scan_path.stem, frame_imgs))

    result = {
        "suite": "kitti-beams", "data": str(data), "frames": [f[0].stem for f in frames],
        "objects": n_objects, "width": width, "keep_every": KEEP_EVERY, "ground": ground,
        "ring_spread_deg_max": max(spreads),
        "methods": {
            n: {"front_acc": pool.mean(f"{n}/front/acc"),
                "front_comp": pool.mean(f"{n}/front/comp"),
                "objects_acc": pool.mean(f"{n}/objects/acc"),
                "objects_comp": pool.mean(f"{n}/objects/comp"),
                "range_mae": pool.mean(f"{n}/mae"),
                "range_cover": pool.mean(f"{n}/cover"),
                "seconds_per_frame": float(np.median(seconds[n])),
                "per_frame": {"front_acc": [a for a, _ in per_frame[n]],
                              "front_comp": [c for _, c in per_frame[n]]}}
            for n in names},
    }
    if plot:
        result["plot"] = str(_plot_kitti(result, plots, out_dir))
    return result


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, spec)


def _mean_of(values: list | None) -> float | None:
    """Mean of the non-None values, None when there are none."""
    kept = [v for v in values or [] if v is not None]
    return float(np.mean(kept)) if kept else None


def format_kitti_beams(result: dict) -> str:
    """The kitti-beams table (metres)."""
    w = max(28, *(len(n) for n in result["methods"]))
    ground_text = ("the ground plane fitted to the input" if result.get("ground") == "plane"
                   else f"z = -{SENSOR_HEIGHT} m")
    lines = [
        f"sspu bench quality --suite kitti-beams: {len(result['frames'])} frames "
        f"({', '.join(result['frames'])}) from {result['data']}, {result['objects']} labelled "
        f"objects; every {result['keep_every']}th of 64 beams kept, x{RATIO}; metres.",
        "  acc = predicted -> full scan, comp = full scan -> predicted (mean NN distance over "
        f"all points of all frames > 0.2 m above {ground_text}: front = 0<x<40, |y|<20; "
        "obj = in label boxes);",
        f"  MAE on the dropped rows of the 64x{result['width']} range image in the front "
        "region, cover = share of those pixels filled; ring cones fit to "
        f"{result['ring_spread_deg_max']:.4f} deg (worst ring); 'frames' = front acc / "
        "comp as the mean of the per-frame means (GUIDE §3's reference numbers).",
        f"{'method':<{w}} {'front acc':>9} {'comp':>7} {'obj acc':>8} {'comp':>7} "
        f"{'MAE':>7} {'cover':>6} {'s/frame':>8} {'frames acc':>10} {'comp':>7}",
    ]
    for name, m in result["methods"].items():
        per_frame = m.get("per_frame", {})
        lines.append(
            f"{name:<{w}} {_fmt(m['front_acc']):>9} {_fmt(m['front_comp']):>7} "
            f"{_fmt(m['objects_acc']):>8} {_fmt(m['objects_comp']):>7} "
            f"{_fmt(m['range_mae']):>7} {_fmt(m['range_cover'], '.0%'):>6} "
            f"{_fmt(m['seconds_per_frame'], '.2f'):>8} "
            f"{_fmt(_mean_of(per_frame.get('front_acc'))):>10} "
            f"{_fmt(_mean_of(per_frame.get('front_comp'))):>7}")
    if "plot" in result:
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from ..errors import UsageError

        raise UsageError("--plot needs matplotlib: .venv/bin/pip install -e '.[eval]' "
                         "(or pip install matplotlib)") from exc
    return plt


def _plot_kitti(result: dict, plots: list, out_dir: str | Path | None) -> Path:
    """Front-facing part of the range images of the first frame, one row per method."""
    plt = _pyplot()
    out = Path(out_dir or "out/quality") / "kitti_beams.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    stem, imgs = plots[0]
    w = result["width"]
    cols = slice(int(w * 3 / 8), int(w * 5 / 8))  # azimuth -45..+45 deg: the front
    fig, axes = plt.subplots(len(imgs), 1, figsize=(10, 1.3 * len(imgs)), squeeze=False)
    for ax, (name, img) in zip(axes[:, 0], imgs.items(), strict=True):
        ax.imshow(np.fliplr(img[:, cols]), aspect="auto", cmap="viridis", vmin=0, vmax=40,
                  interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"frame {stem}: range images, front ±45° (range 0–40 m)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -------------------------------------------------------------------------- lidar-sim


def run_lidar_sim(data: str | Path, models: list[str], *, out_dir: str | Path | None = None,
                  limit: int | None = None, plot: bool = False, scans: int = 5,
                  seed: int = 0) -> dict:
    """The lidar-sim suite: simulated scans of vehicle scenes with exact surfaces.

    For each of ``scans`` seeded scenes built from ``data/meshes/vehicles_scene`` (or the
    folder of ``.ply`` meshes ``data`` itself), a 16-beam scan (every 4th of the 64
    HDL-64E beams, same noise model) is densified ×4 on the object points (object id > 0;
    the ground is not densified) and scored: P2F = distance of every predicted object
    point to its object's exact mesh surface (mean, std; metres), completeness = mean
    distance from the 64-beam scan's object points to the predicted ones. Methods: the
    16-beam input, kNN midpoints, range-image interpolation between kept beams (kept
    where both neighbour pixels hit the same object), and every model given.

    Patch models densify each object's points on their own (:func:`_densify_objects`), and
    run as the node runs them in its ``objects`` mode on the whole 16-beam scan (row
    ``NAME (objects)``, its own ground removal and clusters; each generated point belongs
    to the object of its source point).
    Beam models (a shipped name or path of a ``kind == "beams"`` model, or
    ``range:PATH[@T][+veto]``) run as the node runs them: the whole 16-beam scan through
    :func:`~sspu_ros.densify.densifier.densify_points` with the simulated ring index as
    the beam hint, one row per mode of ``BEAM_MODES["lidar-sim"]``: ``NAME (objects)``
    (the node's default: its own ground removal and clusters pick what to densify) and
    ``NAME (full)`` (every gap). Each generated point belongs to the object of the nearer
    of the two real pixels it was made between (else of the other one); points made
    between two ground pixels are not object points and are left out of the scores
    (counted as ``ground_points``), like the ground itself. So the ``full`` row is scored
    on the gaps next to an object pixel: the selection range-image interpolation gets
    from the simulator's object ids.

    Args:
        data: the data folder (``meshes/vehicles_scene`` under it) or the mesh folder.
        models: upsampler names or paths for ``load_upsampler(model, 4)``, beam models,
            ``range:PATH[@THRESHOLD][+veto]``.
        limit: at most this many scenes (overrides ``scans`` when smaller).
        plot: write ``lidar_sim.png`` (bird's-eye views) into ``out_dir`` (default
            ``out/quality``).
        scans, seed: number of scenes and the seed of the first.
    """
    from tqdm import tqdm

    from ..simulation.lidar_sim import load_vehicle_meshes, simulate_scan, vehicle_scene

    meshes = load_vehicle_meshes(data)  # kept alive: keys of distance_cache are their ids
    distance_cache: dict = {}
    n_scenes = min(scans, limit) if limit else scans
    ranged, beam_models, patch_models = _split_models(models)
    node_rows = _load_node_models(beam_models, BEAM_MODES["lidar-sim"], ranged,
                                  patch_models=patch_models)
    fns = _load_models(patch_models)
    names = [INPUT, MIDPOINTS, RANGE_INTERP, *node_rows, *fns]
    kept_input = dict.fromkeys(names, 0)
    node_info = {n: {"mode": params["mode"], "kind": getattr(net, "kind", "patches"),
                     "generated": 0, "ground_points": 0,
                     "beam_path": 0, "fallback": 0, "objects": 0,
                     "objects_with_new_points": 0}
                 for n, (net, params) in node_rows.items()}
    pool = _Pool()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    n_points = {"dense": 0, "sparse": 0}
    first_views = None
    for i in tqdm(range(n_scenes), desc="lidar-sim", unit="scene", leave=False):
        scene = vehicle_scene(seed + i, meshes=meshes)
        scene.distance_cache = distance_cache  # same mesh arrays in every scene
        dense = simulate_scan(scene, beams=64, seed=seed + i)
        sparse = dense.select(dense.ring % KEEP_EVERY == 0)
        d_obj = dense.xyz[dense.object_id > 0].astype(np.float64)
        s_mask = sparse.object_id > 0
        n_points["dense"] += len(d_obj)
        n_points["sparse"] += int(s_mask.sum())
        point_methods = {INPUT: lambda c: c, MIDPOINTS: lambda c: midpoint_upsample(c, RATIO),
                         **fns}
        views = {}
        for name in names:
            t0 = time.perf_counter()
            if name == RANGE_INTERP:
                pred, owner = _sim_range_interp(sparse, np.arange(0, N_BEAMS, KEEP_EVERY))
            elif name in node_rows:
                pred, owner = _sim_beams(sparse, *node_rows[name], node_info[name])
            else:
                pred, owner, refused = _densify_objects(sparse, point_methods[name])
                kept_input[name] += refused
            seconds[name].append(time.perf_counter() - t0)
            for oid in np.unique(owner):
                pool.add(f"{name}/p2f", scene.distance_to_object(int(oid), pred[owner == oid]))
            pool.add(f"{name}/comp", _nn(d_obj, pred))
            views[name] = pred
            if out_dir is not None:
                write_cloud(Path(out_dir) / "lidar-sim" / _safe(name) / f"scene_{seed + i}.ply",
                            pred.astype(np.float32))
        if first_views is None:
            first_views = (seed + i, d_obj, views)
    result = {
        "suite": "lidar-sim", "data": str(data), "scenes": n_scenes, "seed": seed,
        "object_points": n_points,
        "methods": {n: {"p2f_mean": pool.mean(f"{n}/p2f"), "p2f_std": pool.std(f"{n}/p2f"),
                        "completeness": pool.mean(f"{n}/comp"),
                        "points": pool.n.get(f"{n}/p2f", 0),
                        "objects_not_densified": kept_input[n],
                        "seconds_per_scene": float(np.median(seconds[n])),
                        **({"beams": node_info[n]} if n in node_info else {})}
                    for n in names},
    }
    if plot and first_views is not None:
        result["plot"] = str(_plot_sim(first_views, out_dir))
    return result


def _densify_objects(sparse, fn: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Each object's points densified on their own (as a detector's crops would be).

    Returns (P, 3) points, (P,) object ids, and how many objects the model refused
    (their input points are kept, as for objects with fewer than 2·ratio points)."""
    preds, owners, refused = [np.zeros((0, 3))], [np.zeros(0, np.int64)], 0
    for oid in np.unique(sparse.object_id[sparse.object_id > 0]):
        pts = sparse.xyz[sparse.object_id == oid].astype(np.float64)
        out = pts
        if len(pts) >= 2 * RATIO:
            try:
                out = np.asarray(fn(pts), dtype=np.float64)[:, :3]
            except ModelError:
                refused += 1
        preds.append(out)
        owners.append(np.full(len(out), oid))
    return np.concatenate(preds), np.concatenate(owners), refused


def _sim_beams(sparse, interp, params, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """A beam (or patch) model on a simulated 16-beam scan, as the node runs it (see
    :func:`run_lidar_sim`): (P, 3) object points (the input's, then the generated ones
    that belong to an object), (P,) their object ids; ``info`` gathers counts."""
    rows = sparse.ring // KEEP_EVERY  # the 16 kept beams, as a driver's ring field
    res = _densify_with_rings(sparse.xyz, rows, interp, params)
    info["beam_path" if res.path == "beams" else "fallback"] += 1
    gen = res.generated.astype(np.float64)
    if res.path == "beams":
        above, below, nearer = (sparse.object_id[res.sources[:, j]] for j in range(3))
        other = np.where(res.sources[:, 2] == res.sources[:, 0], below, above)
        owner = np.where(nearer > 0, nearer, other)
    else:  # patch fallback: its source point's object
        owner = sparse.object_id[res.sources[:, 0]] if len(gen) else np.zeros(0, np.int64)
    on_object = owner > 0
    obj = sparse.object_id > 0
    ids = np.unique(sparse.object_id[obj])
    info["generated"] += int(len(gen))
    info["ground_points"] += int((~on_object).sum())
    info["objects"] += int(ids.size)
    info["objects_with_new_points"] += int(np.isin(ids, owner[on_object]).sum())
    return (np.concatenate([sparse.xyz[obj].astype(np.float64), gen[on_object]]),
            np.concatenate([sparse.object_id[obj], owner[on_object]]))


def _sim_range_interp(sparse, kept_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Range-image interpolation between the kept beams of a simulated scan, kept where
    both neighbour pixels hit the same object: (P, 3) object points, (P,) object ids."""
    from ..geometry.beams import RingCones

    rows = np.searchsorted(kept_rows, sparse.ring)  # (N,) row in the sparse image
    img = range_image(sparse.xyz, rows, len(kept_rows), sparse.columns, columns=sparse.column)
    elev = sparse.elevations_deg[kept_rows]
    cones = RingCones(elev, np.zeros(len(elev)), np.zeros(len(elev)), np.ones(len(elev)))
    new, _, src = interpolate_beams(img, kept_rows, cones, n_rows=len(sparse.elevations_deg),
                                    return_sources=True)
    oid = sparse.object_id[src]
    same = (oid[:, 0] == oid[:, 1]) & (oid[:, 0] > 0)
    obj = sparse.object_id > 0
    return (np.concatenate([sparse.xyz[obj].astype(np.float64), new[same]]),
            np.concatenate([sparse.object_id[obj], oid[same, 0]]))


def format_lidar_sim(result: dict) -> str:
    """The lidar-sim table (metres)."""
    pts = result["object_points"]
    w = max(28, *(len(n) for n in result["methods"]))
    lines = [
        f"sspu bench quality --suite lidar-sim: {result['scenes']} simulated HDL-64E scans "
        f"(seeds {result['seed']}..{result['seed'] + result['scenes'] - 1}) of vehicle "
        f"scenes from {result['data']}; object points: {pts['sparse']} in 16 beams, "
        f"{pts['dense']} in 64; x{RATIO} per object; metres.",
        "  P2F = distance of predicted object points to the exact mesh, comp = 64-beam "
        "object points -> predicted (mean NN distance).",
        f"{'method':<{w}} {'P2F':>8} {'P2Fstd':>8} {'comp':>8} {'points':>8} {'s/scene':>8}",
    ]
    for name, m in result["methods"].items():
        lines.append(f"{name:<{w}} {_fmt(m['p2f_mean'], '.4f'):>8} "
                     f"{_fmt(m['p2f_std'], '.4f'):>8} {_fmt(m['completeness'], '.4f'):>8} "
                     f"{m['points']:>8} {_fmt(m['seconds_per_scene'], '.2f'):>8}")
        if m.get("objects_not_densified"):
            lines.append(f"  ({name}: refused {m['objects_not_densified']} small objects; "
                         "their input points were kept)")
        if "beams" in m:
            b = m["beams"]
            where = (f"beam path in {b['beam_path']} scans, fallback in {b['fallback']}"
                     if b.get("kind", "beams") == "beams" else "the node's patch path")
            lines.append(f"  ({name}: {b['mode']} mode, {b['generated']} points generated, "
                         f"{b['ground_points']} of them not on an object (not scored); "
                         f"new points on {b['objects_with_new_points']} of {b['objects']} "
                         f"objects; {where})")
    if "plot" in result:
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)


def _plot_sim(views, out_dir: str | Path | None) -> Path:
    plt = _pyplot()
    seed, dense, preds = views
    out = Path(out_dir or "out/quality") / "lidar_sim.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = {"64-beam scan": dense, **preds}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items(), strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=0.2, c=pts[:, 2], cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle(f"simulated scene {seed}: object points, bird's-eye view")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
