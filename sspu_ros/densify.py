"""Scan densification, ROS-free: which points of a scan are densified, and how.

The node, ``sspu densify`` and ``sspu bench speed`` all call :func:`densify_points`; the
node only adds message decoding/encoding around it.

Pipeline (vectorized; the only Python loops run over splitting rounds (<= 4), FPS
iterations and the handful of ROI boxes):

1. **crop**: horizontal range and height (``crop.*``), then at most ``max_points`` points,
   nearest first;
2. **ground removal** (``ground.*``, :func:`sspu_ros.scan_segmentation.ground_mask`);
3. **selection** by ``mode``:
   ``objects`` (default): Euclidean clusters (``cluster.tolerance``) of object size
   (``cluster.*``: vehicles, pedestrians, cyclists);
   ``roi``: the clusters of the non-ground points inside the ``roi.boxes``;
   ``full``: the clusters of all non-ground points in the crop;
   in every mode clusters with fewer than ``patches.min_cluster_points`` points are
   skipped;
4. **patches**: a cluster of at most ``upsampler.patch_size`` points is one patch, padded
   by repeating its points (the copies generated for the padding are dropped); larger
   clusters (all batched) get FPS seeds (``patches.coverage`` per patch_size points), each
   point joins its nearest seed's cell, and a cell of at most patch_size points becomes a
   patch (its points, then the nearest other points of the cluster as context); larger
   cells are split again in the next round. Clusters are taken nearest first; one whose
   patches no longer fit in ``patches.max_per_scan`` (a cap against overload) is skipped
   and counted, smaller ones after it still go in;
5. **one batched** ``upsampler.upsample_patches`` call for the scan, on unit-sphere
   patches;
6. **merge** with the owner rule of :mod:`sspu_ros.inference` (each input point takes its
   r copies from the one patch where it lies closest to the seed; the copy nearest the
   point itself is dropped since the point is already in the scan), de-normalize;
7. **outliers**: a generated point farther from the input surface around its source (the
   source and its ``outliers.k`` nearest densified neighbours) than
   ``outliers.max_distance`` times the source's local spacing (distance to that k-th
   neighbour) is dropped.

The result lists the generated points and, for each, the scan indices of its source
point and the source's two nearest neighbours among the densified points (for the codec's
intensity interpolation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from .geometry import denormalize, farthest_point_sample, normalize_unit_sphere
from .inference import _owners
from .scan_segmentation import cluster_boxes, cluster_points, ground_mask, plausible_objects
from .upsampler import Upsampler

MODES = ("objects", "roi", "full")
#: Source indices per generated point: the point it was made from and its 2 nearest
#: neighbours in the patch (the codec interpolates intensity over them).
N_SOURCES = 3


@dataclass
class DensifyResult:
    generated: np.ndarray      # (M, 3) float32 new points
    sources: np.ndarray        # (M, k) int64: input points each generated point came from
    n_selected: int            # input points that were densified
    n_cropped_out: int         # finite input points outside the crop region
    n_capped: int              # points in the region left out by max_points
    n_ground: int = 0          # cropped points classified as ground
    n_clusters: int = 0        # clusters of the candidate (non-ground / ROI) points
    n_candidates: int = 0      # clusters eligible for densification (mode, size filters)
    n_groups: int = 0          # clusters densified
    n_groups_capped: int = 0   # eligible clusters left out by patches.max_per_scan
    n_patches: int = 0         # patches in the one batched upsampler call
    n_outliers: int = 0        # generated points dropped as outliers
    selected: np.ndarray = field(  # (n_selected,) int64 scan indices of densified points
        default_factory=lambda: np.zeros(0, np.int64))
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess/inference/post


def crop_mask(xyz: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """(N, 3) -> (N,) bool: inside the ``crop.*`` region (horizontal range and height)."""
    r2 = xyz[:, 0].astype(np.float64) ** 2 + xyz[:, 1].astype(np.float64) ** 2
    z = xyz[:, 2]
    return ((r2 >= params["crop.min_range"] ** 2) & (r2 <= params["crop.max_range"] ** 2)
            & (z >= params["crop.min_z"]) & (z <= params["crop.max_z"]))


def roi_boxes(values) -> np.ndarray:
    """Flat ``roi.boxes`` (6 numbers per box: xmin, xmax, ymin, ymax, zmin, zmax) -> (K, 6)
    float64. Raises ValueError when the length is not a multiple of 6 or a min >= max."""
    flat = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if flat.size % 6:
        raise ValueError(f"roi.boxes needs 6 numbers per box (xmin, xmax, ymin, ymax, zmin, "
                         f"zmax), got {flat.size} numbers")
    boxes = flat.reshape(-1, 6)
    bad = np.flatnonzero((boxes[:, 0::2] >= boxes[:, 1::2]).any(axis=1))
    if bad.size:
        raise ValueError(f"roi.boxes box {int(bad[0])} = {boxes[bad[0]].tolist()}: each min "
                         "must be smaller than its max (xmin, xmax, ymin, ymax, zmin, zmax)")
    return boxes


def roi_mask(xyz: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 3) points, (K, 6) boxes -> (N,) bool: inside at least one box (faces inclusive)."""
    inside = np.zeros(xyz.shape[0], dtype=bool)
    for b in boxes:  # K is a handful of boxes
        inside |= ((xyz[:, 0] >= b[0]) & (xyz[:, 0] <= b[1]) & (xyz[:, 1] >= b[2])
                   & (xyz[:, 1] <= b[3]) & (xyz[:, 2] >= b[4]) & (xyz[:, 2] <= b[5]))
    return inside


@dataclass
class _Patches:
    idx: np.ndarray    # (B, P) int64 indices into the candidate points
    real: np.ndarray   # (B, P) bool: False for padding (repeats of a small cluster)
    group_patches: np.ndarray  # (G,) patches of each densified group, in batch order


def _first_true(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G, N) bool -> (G, M) column indices of each row's True entries (M = most True in a
    row), rows padded with their first True column; and the (G,) counts."""
    cnt = mask.sum(1)
    cols = np.argsort(~mask, axis=1, kind="stable")[:, :int(cnt.max())]
    pad = np.arange(cols.shape[1])[None] >= cnt[:, None]
    return np.where(pad, cols[:, :1], cols), cnt


def _split_large(xyz: np.ndarray, members: np.ndarray, n_members: np.ndarray, patch_size: int,
                 coverage: float, max_rounds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Patches of clusters larger than a patch, all clusters batched.

    Each round: FPS seeds among the cluster's points not yet placed
    (``ceil(coverage * n / patch_size)``), every such point goes to its nearest seed
    (Voronoi cells); a cell of at most ``patch_size`` points becomes a patch: its points
    (nearest the seed first), filled up with the cluster's other points nearest the seed
    (context). Points of larger cells wait for the next round. In the last round a large
    cell's patch takes its ``patch_size`` points nearest the seed (the rest stay out).

    Args:
        xyz: (n, 3) candidate points; members: (G, Nmax) their indices per cluster, padded
            with repeats; n_members: (G,) cluster sizes (all > patch_size).

    Returns:
        idx (T, patch_size) candidate indices and the (T,) cluster row of each patch.
    """
    g, nmax = members.shape
    pts = np.asarray(xyz[members], dtype=np.float32)  # (G, Nmax, 3)
    pts = pts - pts.mean(axis=1, keepdims=True)  # per-cluster origin: small float32 values
    valid = np.arange(nmax)[None] < n_members[:, None]  # (G, Nmax)
    open_ = valid.copy()  # not yet in a patch's cell
    far = np.float32(1e12)  # pushes points outside the cell behind the cell's own points
    out_idx, out_group = [], []
    for rnd in range(max_rounds):
        todo = np.flatnonzero(open_.any(1))
        if todo.size == 0:
            break
        last = rnd == max_rounds - 1
        cols, cnt = _first_true(open_[todo])  # (G', M) open points of each cluster
        n_seeds = np.clip(np.ceil(coverage * cnt / patch_size), 1, cnt).astype(np.int64)
        cand = np.take_along_axis(pts[todo], cols[..., None], 1)  # (G', M, 3)
        seeds = farthest_point_sample(torch.from_numpy(cand), int(n_seeds.max())).numpy()
        seed_ok = np.arange(seeds.shape[1])[None] < n_seeds[:, None]  # (G', S)
        seed_xyz = np.take_along_axis(cand, seeds[..., None], 1)  # (G', S, 3)
        # nearest seed: |c - s|^2 = |c|^2 - 2 c.s + |s|^2; |c|^2 does not change the argmin
        d2 = np.einsum("gsd,gsd->gs", seed_xyz, seed_xyz)[:, None] \
            - 2 * np.matmul(cand, seed_xyz.transpose(0, 2, 1))  # (G', M, S)
        d2[~np.broadcast_to(seed_ok[:, None], d2.shape)] = np.inf
        cell = d2.argmin(-1)  # (G', M) nearest seed of each open point
        real = np.arange(cols.shape[1])[None] < cnt[:, None]
        size = np.zeros(seed_ok.shape, np.int64)
        np.add.at(size, (np.nonzero(real)[0], cell[real]), 1)
        final = seed_ok & ((size <= patch_size) | last) & (size > 0)
        rg, rs = np.nonzero(final)  # (T,) row in todo, seed slot
        grp = todo[rg]
        in_cell = np.zeros((rg.size, nmax), dtype=bool)  # (T, Nmax)
        tt, mm = np.nonzero((cell[rg] == rs[:, None]) & real[rg])
        in_cell[tt, cols[rg[tt], mm]] = True
        sx = seed_xyz[rg, rs]  # (T, 3)
        score = (pts * pts).sum(-1)[grp] + (sx * sx).sum(-1)[:, None] \
            - 2 * np.matmul(pts[grp], sx[:, :, None])[..., 0]  # (T, Nmax) squared distance
        score += np.where(in_cell, np.float32(0), far)
        score[~valid[grp]] = np.inf
        near = torch.from_numpy(score).topk(patch_size, dim=1, largest=False).indices.numpy()
        placed = np.zeros_like(in_cell)
        np.put_along_axis(placed, near, True, 1)
        placed &= in_cell
        pt, pj = np.nonzero(placed)
        open_[grp[pt], pj] = False
        out_idx.append(members[grp[:, None], near])
        out_group.append(grp)
    return np.concatenate(out_idx), np.concatenate(out_group)


def _build_patches(xyz: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                   groups: np.ndarray, patch_size: int, coverage: float,
                   max_patches: int) -> _Patches:
    """Patches of the clusters ``groups`` (in priority order) of the candidate points.

    A cluster of at most ``patch_size`` points is one patch (its points, then repeats of
    them); larger ones are split by :func:`_split_large`. Clusters are taken in priority
    order; one whose patches do not fit in what is left of ``max_patches`` is skipped.

    Args:
        xyz: (n, 3) candidate points; labels (n,) their cluster; counts (K,) cluster sizes.
        groups: (G,) clusters to densify, highest priority first.
    """
    p = patch_size
    cols = np.arange(p)
    order = np.argsort(labels, kind="stable")  # candidate indices grouped by cluster
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = counts[groups]
    small = n <= p
    rows, row_group = [], []
    if small.any():  # one patch each: the points, then repeats of them
        gs = np.flatnonzero(small)
        rows.append(order[start[groups[gs]][:, None] + cols[None, :] % n[gs][:, None]])
        row_group.append(gs)
    if (~small).any():
        gl = np.flatnonzero(~small)
        nmax = int(n[gl].max())
        col = np.minimum(np.arange(nmax)[None], n[gl][:, None] - 1)
        members = order[start[groups[gl]][:, None] + col]  # (GL, Nmax) padded with repeats
        idx, grp = _split_large(xyz, members, n[gl], p, coverage)
        rows.append(idx)
        row_group.append(gl[grp])
    if not rows:
        return _Patches(np.zeros((0, p), np.int64), np.zeros((0, p), bool),
                        np.zeros(0, np.int64))
    idx = np.concatenate(rows)
    row_group = np.concatenate(row_group)
    per_group = np.bincount(row_group, minlength=groups.size)
    kept = np.zeros(groups.size, dtype=bool)
    budget = max_patches
    for gi, need in enumerate(per_group.tolist()):  # priority order; one step per cluster
        if need <= budget:  # a cluster that does not fit is skipped, smaller ones still go
            kept[gi] = True
            budget -= need
    keep_rows = kept[row_group]
    order_rows = np.argsort(row_group[keep_rows], kind="stable")  # batch in priority order
    idx = idx[keep_rows][order_rows]
    g_of_row = row_group[keep_rows][order_rows]
    real = cols[None] < n[g_of_row][:, None]  # padding of small clusters is not real
    return _Patches(idx, real, per_group[kept])


def _select_groups(cxyz: np.ndarray, params: Mapping[str, Any], plane: np.ndarray | None):
    """Cluster the candidate points and pick the clusters to densify, nearest first.

    Returns labels (n,), counts (K,), K, eligible cluster ids (priority order)."""
    labels, k = cluster_points(cxyz, float(params["cluster.tolerance"]))
    stats = cluster_boxes(cxyz, labels, k)
    eligible = stats.count >= int(params["patches.min_cluster_points"])
    if params["mode"] == "objects":
        eligible &= plausible_objects(
            stats, min_points=int(params["patches.min_cluster_points"]),
            max_extent=float(params["cluster.max_extent"]),
            max_height=float(params["cluster.max_height"]),
            min_height=float(params["cluster.min_height"]))
        if plane is not None:  # objects stand on the ground: the base may not float
            base = stats.lo[:, 2] - (stats.centroid[:, :2] @ plane[:2] + plane[2])
            eligible &= base <= float(params["cluster.max_base_height"])
    groups = np.flatnonzero(eligible)
    dist = np.hypot(stats.centroid[groups, 0], stats.centroid[groups, 1])
    return labels, stats.count, k, groups[np.argsort(dist, kind="stable")]


def _empty(n_cropped_out: int, n_capped: int, **counts) -> DensifyResult:
    return DensifyResult(np.empty((0, 3), np.float32), np.empty((0, N_SOURCES), np.int64), 0,
                         n_cropped_out, n_capped, **counts)


def densify_points(xyz: np.ndarray, upsampler: Upsampler,
                   params: Mapping[str, Any]) -> DensifyResult:
    """Densify the objects (or ROI / all non-ground points) of one scan.

    Args:
        xyz: (N, 3) float32 finite points of one scan, sensor frame (z up).
        upsampler: any :class:`~sspu_ros.upsampler.Upsampler`; called once per scan.
        params: validated parameters (``mode``, ``crop.*``, ``max_points``, ``ground.*``,
            ``cluster.*``, ``roi.boxes``, ``patches.*``, ``outliers.*``).

    Returns:
        the generated points (the input points themselves are not repeated) and, for each,
        the indices (into ``xyz``) of its source point and the source's neighbours; counts
        of every stage and the stage times.
    """
    t0 = time.perf_counter()
    mode = params["mode"]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pts = np.asarray(xyz, dtype=np.float32)
    inside = np.flatnonzero(crop_mask(pts, params))
    n_capped = 0
    cap = int(params["max_points"])
    if inside.size > cap:  # keep the nearest points: bounded latency, most useful detail
        r2 = (pts[inside, :2].astype(np.float64) ** 2).sum(axis=1)
        inside = np.sort(inside[np.argpartition(r2, cap - 1)[:cap]])
        n_capped = int(r2.size - cap)
    n_out = int(pts.shape[0] - inside.size - n_capped)
    cand = inside
    plane = None
    n_ground = 0
    if params["ground.enabled"] and inside.size:
        ground, plane = ground_mask(
            pts[inside], cell_size=float(params["ground.cell_size"]),
            height_threshold=float(params["ground.height_threshold"]),
            max_deviation=float(params["ground.max_deviation"]), return_plane=True)
        n_ground = int(ground.sum())
        cand = inside[~ground]
    if mode == "roi" and cand.size:
        cand = cand[roi_mask(pts[cand], roi_boxes(params["roi.boxes"]))]
    if cand.size == 0:
        return _empty(n_out, n_capped, n_ground=n_ground)
    cxyz = pts[cand]
    labels, counts, k, groups = _select_groups(cxyz, params, plane)
    patches = _build_patches(cxyz, labels, counts, groups, upsampler.patch_size,
                             float(params["patches.coverage"]),
                             int(params["patches.max_per_scan"]))
    n_groups = int(patches.group_patches.size)
    counts_kw = dict(n_ground=n_ground, n_clusters=k, n_candidates=int(groups.size),
                     n_groups=n_groups, n_groups_capped=int(groups.size) - n_groups,
                     n_patches=int(patches.idx.shape[0]))
    if patches.idx.shape[0] == 0:
        return _empty(n_out, n_capped, **counts_kw)
    normed, centroid, radius = normalize_unit_sphere(torch.from_numpy(cxyz[patches.idx]))
    t1 = time.perf_counter()
    dense = np.asarray(upsampler.upsample_patches(normed.numpy()), dtype=np.float32)
    t2 = time.perf_counter()
    b, p = patches.idx.shape
    r = int(upsampler.ratio)
    if dense.shape != (b, r * p, 3):
        raise ValueError(f"upsampler {upsampler.name} returned {dense.shape} for {b} patches "
                         f"of {p} points, expected {(b, r * p, 3)}")
    generated, sources, selected, n_outliers = _merge(
        cxyz, normed, torch.from_numpy(dense), centroid, radius, patches, r, params)
    result = DensifyResult(generated, cand[sources], int(selected.size), n_out, n_capped,
                           n_outliers=n_outliers, selected=cand[selected], **counts_kw)
    t3 = time.perf_counter()
    result.timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                         "postprocess": (t3 - t2) * 1e3}
    return result


def _merge(cxyz: np.ndarray, normed: torch.Tensor, dense: torch.Tensor,
           centroid: torch.Tensor, radius: torch.Tensor, patches: _Patches, ratio: int,
           params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Owner merge + outlier drop.

    Args:
        cxyz: (n, 3) candidate points (metres).
        normed: (B, P, 3) unit-sphere patches; dense: (B, rP, 3) the upsampler's output;
        centroid (B, 1, 3), radius (B, 1, 1): their normalization.

    Returns:
        generated (M, 3) float32, sources (M, N_SOURCES) candidate indices, selected
        (S,) candidate indices of the densified points, number of outliers dropped.
    """
    b, p, _ = normed.shape
    owner, pos = _owners(torch.from_numpy(patches.idx), cxyz.shape[0])
    sel = torch.nonzero(owner >= 0).squeeze(1)
    ob, op = owner[sel], pos[sel]  # (S,) owner patch and position of each densified point
    copies = dense.reshape(b, p, ratio, 3)[ob, op]  # (S, r, 3)
    d2 = (copies - normed[ob, op][:, None]).square().sum(-1)  # (S, r)
    keep_copy = torch.ones_like(d2, dtype=torch.bool).scatter_(1, d2.argmin(1, keepdim=True),
                                                               False)
    copies = copies[keep_copy].reshape(-1, ratio - 1, 3)  # (S, r-1, 3)
    world = denormalize(copies, centroid[ob], radius[ob]).numpy()  # (S, r-1, 3) metres
    sel = sel.numpy()
    s = sel.size
    # Local surface of each densified point: its k nearest densified neighbours (their
    # distance gives the local spacing; the 2 nearest are also intensity sources).
    k = int(params["outliers.k"])
    n_query = min(max(k, N_SOURCES - 1) + 1, s)
    dist, nn = cKDTree(cxyz[sel]).query(cxyz[sel], k=n_query, workers=-1)
    dist, nn = dist.reshape(s, n_query), nn.reshape(s, n_query)  # column 0: the point
    src = sel[nn[:, :N_SOURCES]]
    if src.shape[1] < N_SOURCES:
        src = np.concatenate([src, np.repeat(src[:, :1], N_SOURCES - src.shape[1], 1)], 1)
    keep = np.isfinite(world).all(-1)  # (S, r-1)
    if params["outliers.enabled"]:
        spacing = dist[:, min(k, n_query - 1)]  # (S,)
        near = cxyz[sel[nn[:, :min(k, n_query - 1) + 1]]]  # (S, k+1, 3) point + k neighbours
        diff = world[:, :, None, :] - near[:, None]  # (S, r-1, k+1, 3)
        gap2 = np.einsum("sckd,sckd->sck", diff, diff).min(-1)  # (S, r-1) squared
        limit = (float(params["outliers.max_distance"]) * spacing).astype(np.float32)
        keep &= gap2 <= (limit * limit)[:, None]
    generated = world[keep].astype(np.float32, copy=False)
    sources = np.broadcast_to(src[:, None, :], (s, ratio - 1, N_SOURCES))[keep]
    return generated, sources, sel, int((~keep).sum())
