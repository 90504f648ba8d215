"""Scan densification, ROS-free: which points of a scan are densified, and how.

The node, ``sspu densify`` and ``sspu bench speed`` all call :func:`densify_points`; the
node only adds message decoding/encoding around it.

Pipeline (vectorized; the only Python loops run over splitting rounds (<= 4), FPS
iterations and the handful of ROI boxes):

1. **crop**: horizontal range and height (``crop.*``), then at most ``max_points`` points,
   nearest first;
2. **ground removal** (``ground.*``, :func:`sspu_ros.densify.segmentation.ground_mask`);
3. **selection** by ``mode``:
   ``objects`` (default): Euclidean clusters (``cluster.tolerance``) of object size
   (``cluster.*``: vehicles, pedestrians, cyclists);
   ``roi``: the clusters of the non-ground points inside the ``roi.boxes``;
   ``full``: the clusters of all non-ground points in the crop;
   in every mode clusters with fewer than ``patches.min_cluster_points`` points are
   skipped;
4. **patches**: a cluster of at most ``upsampler.patch_size`` points is one patch, padded
   by copies of its points moved far from it (:data:`PAD_OFFSET`: no real point has a
   padding point among its neighbours; the copies generated for the padding are
   dropped); larger
   clusters (all batched) get FPS seeds (``patches.coverage`` per patch_size points), each
   point joins its nearest seed's cell, and a cell of at most patch_size points becomes a
   patch (its points, then the nearest other points of the cluster as context); larger
   cells are split again in the next round. Clusters are taken nearest first; one whose
   patches no longer fit in ``patches.max_per_scan`` (a cap against overload) is skipped
   and counted, smaller ones after it still go in;
5. **one batched** ``upsampler.upsample_patches`` call for the scan, on unit-sphere
   patches;
6. **merge** with the owner rule of :mod:`sspu_ros.runtime.patch_inference` (each input
   point takes its r copies from the one patch where it lies closest to the seed; the copy
   nearest the point itself is dropped since the point is already in the scan),
   de-normalize;
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

from ..config import roi_boxes
from ..geometry.knn_numpy import nearest_neighbors
from ..geometry.scan_structure import ScanStructureError
from ..runtime.upsampler import Upsampler
from .beams import ScanHints, densify_beams, structure_of
from .segmentation import cluster_boxes, cluster_points, ground_mask, plausible_objects

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
    path: str = "patches"      # "beams": virtual beams from a beam interpolator
    structure: str = ""        # beam path: where the scan's beams came from (ring field ...)
    fallback: str = ""         # beam model, no beam structure: why (patch path used)


def crop_mask(xyz: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """(N, 3) -> (N,) bool: inside the ``crop.*`` region (horizontal range and height)."""
    r2 = xyz[:, 0].astype(np.float64) ** 2 + xyz[:, 1].astype(np.float64) ** 2
    z = xyz[:, 2]
    return ((r2 >= params["crop.min_range"] ** 2) & (r2 <= params["crop.max_range"] ** 2)
            & (z >= params["crop.min_z"]) & (z <= params["crop.max_z"]))


def roi_mask(xyz: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 3) points, (K, 6) boxes -> (N,) bool: inside at least one box (faces inclusive)."""
    inside = np.zeros(xyz.shape[0], dtype=bool)
    for b in boxes:  # K is a handful of boxes
        inside |= ((xyz[:, 0] >= b[0]) & (xyz[:, 0] <= b[1]) & (xyz[:, 1] >= b[2])
                   & (xyz[:, 1] <= b[3]) & (xyz[:, 2] >= b[4]) & (xyz[:, 2] <= b[5]))
    return inside


#: A small cluster's patch is padded with translated copies of its points: repeat q (>= 1)
#: moved by q * PAD_OFFSET along x in the unit-sphere frame of the real points. Real points
#: lie within 2 of each other, so a pad is >= 3 from every real point: no real point has
#: one among its nearest neighbours (as it did when the pads were plain repeats: every
#: point's nearest neighbours were its own duplicates, and a kNN generator's copies
#: collapsed onto the point itself), and the generator's output for the real points is the
#: output for the cluster alone (tested).
PAD_OFFSET = 5.0


def unpad_patches(patches: np.ndarray) -> np.ndarray:
    """(B, P, 3) unit-sphere patches as handed to ``upsample_patches`` -> the same with each
    padding entry moved back onto the point it copies (plain repeats: what a training set
    of node patches wants). Real points lie in the unit sphere (|x| <= 1), a padding copy at
    x + q·PAD_OFFSET, so q = round(x / PAD_OFFSET)."""
    out = np.array(patches, dtype=np.float32, copy=True)
    out[..., 0] -= np.float32(PAD_OFFSET) * np.round(out[..., 0] / np.float32(PAD_OFFSET))
    return out


@dataclass
class _Patches:
    idx: np.ndarray    # (B, P) int64 indices into the candidate points
    rank: np.ndarray   # (B, P) owner priority of each entry (lowest wins, see _owners)
    group_patches: np.ndarray  # (G,) patches of each densified group, in batch order
    repeat: np.ndarray  # (B, P) int64: 0 for a real entry, q >= 1 for the q-th padding copy


def _split_large(xyz: np.ndarray, members: np.ndarray, group: np.ndarray, n_groups: int,
                 patch_size: int, coverage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches of the clusters larger than a patch, all clusters at once.

    **Chunks**: each cluster of m points is cut into ``q = ceil(max(1, coverage) * m /
    patch_size)`` chunks of at most ``patch_size`` points by recursive equal-count
    bisection (every round halves each chunk at the right quantile along its longest
    axis, so chunks stay compact and q is the least possible number of patches).
    **Context**: a chunk's patch is its points, then the cluster's other points nearest
    the chunk's centroid up to ``patch_size`` (the generator sees the surroundings). One
    k-d tree serves every cluster: each is centred and shifted along x by a multiple of a
    span larger than any cluster, so nearest neighbours never cross clusters.

    Args:
        xyz: (n, 3) candidate points; members: (L,) their indices, grouped by cluster
            (contiguous runs, cluster rows ascending); group: (L,) cluster row of each, in
            [0, n_groups); every cluster has more than ``patch_size`` points.

    Returns:
        idx (T, patch_size) candidate indices; rank (T, patch_size): the position of a
        chunk's own point in its row, ``patch_size`` + position for context points (the
        owner rule then gives every point to its own chunk); the (T,) cluster row of
        each patch.
    """
    p = patch_size
    n_pts = members.size
    pts = xyz[members]  # (L, 3) float32
    m = np.bincount(group, minlength=n_groups)
    q = np.minimum(np.maximum(np.ceil(max(coverage, 1.0) * m / p), np.ceil(m / p)), m)
    c_n, c_q, c_g = m.astype(np.int64), q.astype(np.int64), np.arange(n_groups)
    perm = np.arange(n_pts)  # points in chunk order (each chunk a contiguous run)
    while (c_q > 1).any():
        st = np.cumsum(c_n) - c_n
        cid = np.repeat(np.arange(c_n.size), c_n)
        cp = pts[perm]
        axis = (np.maximum.reduceat(cp, st, axis=0) - np.minimum.reduceat(cp, st, axis=0)
                ).argmax(1)  # (C,) longest side of each chunk
        perm = perm[np.lexsort((cp[np.arange(n_pts), axis[cid]], cid))]
        left_q = np.where(c_q > 1, c_q // 2, c_q)
        left_n = c_n * left_q // c_q  # both halves hold at most their q * patch_size
        sizes = np.stack([left_n, c_n - left_n], 1).reshape(-1)
        qs = np.stack([left_q, c_q - left_q], 1).reshape(-1)
        real = sizes > 0
        c_n, c_q, c_g = sizes[real], qs[real], np.repeat(c_g, 2)[real]
    n_chunks = c_n.size
    st = np.cumsum(c_n) - c_n
    chunk_of = np.empty(n_pts, dtype=np.int64)
    chunk_of[perm] = np.repeat(np.arange(n_chunks), c_n)
    centre = np.stack([np.bincount(group, weights=pts[:, c], minlength=n_groups)
                       for c in range(3)], 1) / m[:, None]  # (G, 3) float64
    local = pts - centre[group]
    span = 2.0 * float(np.abs(local).max()) + 1.0
    local[:, 0] += group * span  # cluster g lives around (g * span, 0, 0)
    chunk_centre = np.stack([np.bincount(chunk_of, weights=local[:, c], minlength=n_chunks)
                             for c in range(3)], 1) / c_n[:, None]
    # (T, P) in-cluster neighbours of each chunk's centre
    _, near = nearest_neighbors(local, chunk_centre, k=p)
    near = near.reshape(n_chunks, p)
    cols = np.arange(p)
    own = perm[np.minimum(st[:, None] + cols, n_pts - 1)]  # (T, P) the chunk, then junk
    own_ok = cols[None] < c_n[:, None]
    cand = np.concatenate([own, near], 1)  # (T, 2P)
    key = np.concatenate([np.where(own_ok, 0, 2),
                          np.where(chunk_of[near] == np.arange(n_chunks)[:, None], 2, 1)], 1)
    pick = np.argsort(key, axis=1, kind="stable")[:, :p]  # chunk points, then context
    idx = np.take_along_axis(cand, pick, 1)
    return members[idx], pick, c_g  # pick: own point j -> j (< n_t); context -> P + j


def _build_patches(xyz: np.ndarray, order: np.ndarray, start: np.ndarray, counts: np.ndarray,
                   groups: np.ndarray, patch_size: int, coverage: float,
                   max_patches: int, max_cluster_points: int) -> _Patches:
    """Patches of the clusters ``groups`` (in priority order) of the candidate points.

    A cluster of at most ``patch_size`` points is ONE patch (its points, then repeats of
    them, moved away by :data:`PAD_OFFSET` in :func:`densify_points`: the generator sees
    only the object); larger ones get kNN patches from
    :func:`_split_large` (``ceil(coverage * n / patch_size)`` compact chunks with their
    nearest points as context). A cluster of more than ``max_cluster_points``
    points (a near car: already dense) is densified from that many of its points, evenly
    spaced in scan order (regular thinning of the scan pattern). Clusters are taken in
    priority order; one whose patches do not fit in what is left of ``max_patches`` is
    skipped, smaller ones after it still go in.

    Args:
        xyz: (n, 3) candidate points; order (n,): candidate indices sorted by cluster,
            start (K,) and counts (K,): each cluster's run in ``order``.
        groups: (G,) clusters to densify, highest priority first.
    """
    p = patch_size
    cols = np.arange(p)
    n = counts[groups]
    small = n <= p
    rows, ranks, row_group, repeats = [], [], [], []
    if small.any():  # one patch each: the points, then repeats of them
        gs = np.flatnonzero(small)
        rows.append(order[start[groups[gs]][:, None] + cols[None, :] % n[gs][:, None]])
        ranks.append(np.broadcast_to(cols, rows[-1].shape))
        repeats.append(cols[None, :] // n[gs][:, None])
        row_group.append(gs)
    if (~small).any():
        gl = np.flatnonzero(~small)
        nl = n[gl]
        ml = np.minimum(nl, max(max_cluster_points, p + 1))  # points densified per cluster
        grp = np.repeat(np.arange(gl.size), ml)  # (L,) cluster row, grouped
        within = np.arange(grp.size) - np.repeat(np.cumsum(ml) - ml, ml)
        within = within * nl[grp] // ml[grp]  # evenly spaced in scan order: regular thinning
        members = order[start[groups[gl]][grp] + within]
        idx, rank, g = _split_large(xyz, members, grp, gl.size, p, coverage)
        rows.append(idx)
        ranks.append(rank)
        repeats.append(np.zeros_like(idx))
        row_group.append(gl[g])
    if not rows:
        return _Patches(np.zeros((0, p), np.int64), np.zeros((0, p), np.int64),
                        np.zeros(0, np.int64), np.zeros((0, p), np.int64))
    idx = np.concatenate(rows)
    rank = np.concatenate(ranks)
    repeat = np.concatenate(repeats).astype(np.int64)
    row_group = np.concatenate(row_group)
    per_group = np.bincount(row_group, minlength=groups.size)
    # priority order: a cluster fits when the patches before it plus its own fit the
    # budget; a skipped cluster does not use budget (one cheap step per cluster)
    kept = np.zeros(groups.size, dtype=bool)
    budget = max_patches
    for gi, need in enumerate(per_group.tolist()):
        if need <= budget:
            kept[gi] = True
            budget -= need
    keep_rows = kept[row_group]
    order_rows = np.argsort(row_group[keep_rows], kind="stable")  # batch in priority order
    return _Patches(idx[keep_rows][order_rows], rank[keep_rows][order_rows], per_group[kept],
                    repeat[keep_rows][order_rows])


def _select_groups(cxyz: np.ndarray, params: Mapping[str, Any], plane: np.ndarray | None,
                   vertical_scale: float = 1.0):
    """Cluster the candidate points and pick the clusters to densify, nearest first.

    ``vertical_scale`` < 1 shrinks z for the connectivity only (the size filters see the
    real points): points further apart vertically still connect, as the rings of one
    object are on a sparse multi-beam scan.

    Returns K, the cluster order (n,) (candidate indices sorted by cluster), each
    cluster's start (K,) and count (K,) in it, and the eligible cluster ids (priority
    order)."""
    connect = cxyz if vertical_scale == 1.0 else cxyz * np.float32([1, 1, vertical_scale])
    labels, k = cluster_points(connect, float(params["cluster.tolerance"]))
    stats = cluster_boxes(cxyz, labels, k)
    min_points = int(params["patches.min_cluster_points"])
    if params["mode"] == "objects":
        ground_z = (None if plane is None
                    else stats.centroid[:, :2] @ plane[:2] + plane[2])  # (K,) under each
        eligible = plausible_objects(
            stats, ground_z, min_points=min_points,
            max_extent=float(params["cluster.max_extent"]),
            max_width=float(params["cluster.max_width"]),
            max_height=float(params["cluster.max_height"]),
            min_height=float(params["cluster.min_height"]),
            min_top=float(params["cluster.min_top"]),
            max_base_height=float(params["cluster.max_base_height"]))
    else:
        eligible = stats.count >= min_points
    groups = np.flatnonzero(eligible)
    dist = np.hypot(stats.centroid[groups, 0], stats.centroid[groups, 1])
    groups = groups[np.argsort(dist, kind="stable")]
    return k, stats.order, stats.start, stats.count, groups


def _empty(n_cropped_out: int, n_capped: int, **counts) -> DensifyResult:
    return DensifyResult(np.empty((0, 3), np.float32), np.empty((0, N_SOURCES), np.int64), 0,
                         n_cropped_out, n_capped, **counts)


def _region(pts: np.ndarray, params: Mapping[str, Any]) -> dict[str, Any]:
    """Crop, cap and ground removal (steps 1-2): ``inside`` (cropped, capped scan indices),
    ``cand`` (those that are not ground), ``plane``, ``n_out``, ``n_capped``, ``n_ground``."""
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
    return {"inside": inside, "cand": cand, "plane": plane, "n_out": n_out,
            "n_capped": n_capped, "n_ground": n_ground}


def densify_points(xyz: np.ndarray, upsampler: Upsampler, params: Mapping[str, Any], *,
                   hints: ScanHints | None = None) -> DensifyResult:
    """Densify the objects (or ROI / all non-ground points) of one scan.

    Args:
        xyz: (N, 3) float32 finite points of one scan, sensor frame (z up), in the
            driver's order.
        upsampler: any :class:`~sspu_ros.runtime.upsampler.Upsampler`; called once per
            scan. A beam interpolator (``kind == "beams"``) takes the LiDAR-native path
            (:func:`_densify_beams`).
        params: validated parameters (``mode``, ``crop.*``, ``max_points``, ``ground.*``,
            ``cluster.*``, ``roi.boxes``, ``patches.*``, ``outliers.*``, ``lidar.*``).
        hints: what the message says about the beams (ring field, organized height); the
            beam path only.

    Returns:
        the generated points (the input points themselves are not repeated) and, for each,
        the indices (into ``xyz``) of its source point and the source's neighbours; counts
        of every stage and the stage times.
    """
    mode = params["mode"]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if getattr(upsampler, "kind", "patches") == "beams":
        return _densify_beams(xyz, upsampler, params, hints)
    t0 = time.perf_counter()
    pts = np.asarray(xyz, dtype=np.float32)
    reg = _region(pts, params)
    n_out, n_capped, n_ground, plane = (reg["n_out"], reg["n_capped"], reg["n_ground"],
                                        reg["plane"])
    cand = reg["cand"]
    if mode == "roi" and cand.size:
        cand = cand[roi_mask(pts[cand], roi_boxes(params["roi.boxes"]))]
    if cand.size == 0:
        return _empty(n_out, n_capped, n_ground=n_ground)
    cxyz = pts[cand]
    k, order, start, counts, groups = _select_groups(cxyz, params, plane)
    patches = _build_patches(cxyz, order, start, counts, groups, upsampler.patch_size,
                             float(params["patches.coverage"]),
                             int(params["patches.max_per_scan"]),
                             int(params["patches.max_cluster_points"]))
    n_groups = int(patches.group_patches.size)
    counts_kw = dict(n_ground=n_ground, n_clusters=k, n_candidates=int(groups.size),
                     n_groups=n_groups, n_groups_capped=int(groups.size) - n_groups,
                     n_patches=int(patches.idx.shape[0]))
    if patches.idx.shape[0] == 0:
        return _empty(n_out, n_capped, **counts_kw)
    raw = cxyz[patches.idx]  # (B, P, 3) metres
    real = patches.repeat == 0  # (B, P): the padding is left out of the normalization
    centroid = ((raw * real[..., None]).sum(axis=1, keepdims=True)
                / real.sum(axis=1)[:, None, None]).astype(np.float32)  # (B, 1, 3)
    normed = raw - centroid
    radius = np.sqrt(np.where(real, (normed * normed).sum(-1), 0).max(axis=1))[:, None, None]
    radius = np.maximum(radius, np.float32(1e-12))  # (B, 1, 1)
    normed /= radius
    normed[..., 0] += np.float32(PAD_OFFSET) * patches.repeat  # padding away from the object
    t1 = time.perf_counter()
    dense = np.asarray(upsampler.upsample_patches(normed), dtype=np.float32)
    t2 = time.perf_counter()
    b, p = patches.idx.shape
    r = int(upsampler.ratio)
    if dense.shape != (b, r * p, 3):
        raise ValueError(f"upsampler {upsampler.name} returned {dense.shape} for {b} patches "
                         f"of {p} points, expected {(b, r * p, 3)}")
    generated, sources, selected, n_outliers = _merge(
        cxyz, normed, dense, centroid, radius, patches, r, params)
    result = DensifyResult(generated, cand[sources], int(selected.size), n_out, n_capped,
                           n_outliers=n_outliers, selected=cand[selected], **counts_kw)
    t3 = time.perf_counter()
    result.timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                         "postprocess": (t3 - t2) * 1e3}
    return result


def _ring_scale(structure) -> float:
    """Vertical connectivity scale for a scan's beams: the clusters' tolerance was set for
    64-beam KITTI (rings ~0.4 deg apart); sparser beams (median gap g deg) connect across
    g / 0.4 times the distance vertically (at most 1/4 of the scale)."""
    gaps = -np.diff(structure.elevation_deg)
    if gaps.size == 0:
        return 1.0
    return float(np.clip(0.4 / max(float(np.median(gaps)), 1e-6), 0.25, 1.0))


def _densify_beams(xyz: np.ndarray, interp, params: Mapping[str, Any],
                   hints: ScanHints | None) -> DensifyResult:
    """The LiDAR-native path (:mod:`sspu_ros.densify.beams`). Selection by ``mode``:
    ``objects``: the points of the object clusters (as the patch path picks them);
    ``roi``: every cropped point inside ``roi.boxes`` (ground included: a denser sensor
    sees the ground there too); ``full``: every cropped point. A scan without a
    recoverable beam structure goes to ``interp.fallback`` (point patches) with the
    reason in ``result.fallback``."""
    t0 = time.perf_counter()
    pts = np.asarray(xyz, dtype=np.float32)
    try:
        structure = structure_of(pts, hints, params)
    except ScanStructureError as e:
        reason = str(e)
        fb = getattr(interp, "fallback", None)
        result = (densify_points(pts, fb, params) if fb is not None
                  else _empty(0, 0))
        result.fallback = reason
        return result
    reg = _region(pts, params)
    mode = params["mode"]
    counts_kw: dict[str, int] = dict(n_ground=reg["n_ground"])
    if mode == "objects":
        cand = reg["cand"]
        sel = np.zeros(0, np.int64)
        if cand.size:
            k, order, start, counts, groups = _select_groups(
                pts[cand], params, reg["plane"], vertical_scale=_ring_scale(structure))
            cluster_of = np.repeat(np.arange(k), counts)  # cluster of each entry of order
            sel = np.sort(cand[order[np.isin(cluster_of, groups)]])
            counts_kw.update(n_clusters=k, n_candidates=int(groups.size),
                             n_groups=int(groups.size))
    elif mode == "roi":
        inside = reg["inside"]
        sel = inside[roi_mask(pts[inside], roi_boxes(params["roi.boxes"]))]
    else:
        sel = reg["inside"]
    t1 = time.perf_counter()
    generated, sources, n_veto = densify_beams(
        pts, structure, interp, sel, threshold=float(params.get("lidar.threshold", 0)) or None,
        veto_bridges=params.get("lidar.veto_bridges"))
    t2 = time.perf_counter()
    result = DensifyResult(generated, sources, int(sel.size), reg["n_out"], reg["n_capped"],
                           n_outliers=n_veto, selected=sel, path="beams", **counts_kw)
    result.structure = structure.source
    # the network is most of densify_beams; the image, emit and cone maths are small
    result.timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                         "postprocess": 0.0}
    return result


def _owners(idx: np.ndarray, rank: np.ndarray, n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The owner rule: every point takes its copies from the entry of lowest ``rank``
    (ties: the earlier patch, then the earlier position). A small cluster's padding
    repeats rank after the point's own entry, and context points rank after every chunk
    point, so each point is owned by its own chunk / cluster patch.

    Args:
        idx: (B, P) point indices of each patch; rank: (B, P) int; n: number of points.

    Returns:
        selected (S,) points in some patch (ascending), their owner patch (S,) and
        position in it (S,).
    """
    b, p = idx.shape
    flat = b * p
    code = rank.astype(np.int64) * flat + np.arange(flat, dtype=np.int64).reshape(b, p)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, idx.reshape(-1), code.reshape(-1))
    sel = np.flatnonzero(first < np.iinfo(np.int64).max)
    owner, pos = np.divmod(first[sel] % flat, p)
    return sel, owner, pos


def _merge(cxyz: np.ndarray, normed: np.ndarray, dense: np.ndarray, centroid: np.ndarray,
           radius: np.ndarray, patches: _Patches, ratio: int,
           params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Owner merge + outlier drop (numpy and one k-d tree; no torch threads).

    Args:
        cxyz: (n, 3) candidate points (metres).
        normed: (B, P, 3) unit-sphere patches; dense: (B, rP, 3) the upsampler's output;
        centroid (B, 1, 3), radius (B, 1, 1): their normalization; patches: the patches'
        candidate indices (B, P) and owner ranks.

    Returns:
        generated (M, 3) float32, sources (M, N_SOURCES) candidate indices, selected
        (S,) candidate indices of the densified points, number of outliers dropped.
    """
    b, p, _ = normed.shape
    sel, ob, op = _owners(patches.idx, patches.rank, cxyz.shape[0])
    s = sel.size
    copies = dense.reshape(b, p, ratio, 3)[ob, op]  # (S, r, 3)
    diff = copies - normed[ob, op][:, None]
    nearest = (diff * diff).sum(-1).argmin(1)  # (S,) the copy that is the point itself
    keep_copy = np.arange(ratio)[None] != nearest[:, None]
    copies = copies[keep_copy].reshape(s, ratio - 1, 3)
    world = copies * radius[ob] + centroid[ob]  # (S, r-1, 3) metres
    # Local surface of each densified point: its k nearest densified neighbours (their
    # distance gives the local spacing; the 2 nearest are also intensity sources).
    k = int(params["outliers.k"])
    n_query = min(max(k, N_SOURCES - 1) + 1, s)
    own = cxyz[sel]
    dist, nn = nearest_neighbors(own, own, k=n_query)
    dist, nn = dist.reshape(s, n_query), nn.reshape(s, n_query)  # column 0: the point
    src = sel[nn[:, :N_SOURCES]]
    if src.shape[1] < N_SOURCES:
        src = np.concatenate([src, np.repeat(src[:, :1], N_SOURCES - src.shape[1], 1)], 1)
    keep = np.isfinite(world).all(-1)  # (S, r-1)
    if params["outliers.enabled"]:
        kk = min(k, n_query - 1)
        spacing = dist[:, kk].astype(np.float32)  # (S,)
        near = own[nn[:, :kk + 1]]  # (S, k+1, 3) point + k neighbours
        gap2 = np.full(keep.shape, np.inf, dtype=np.float32)
        for j in range(kk + 1):  # k+1 small steps, each over all (S, r-1) copies
            d = world - near[:, None, j]
            np.minimum(gap2, (d * d).sum(-1), out=gap2)
        limit = np.float32(params["outliers.max_distance"]) * spacing
        keep &= gap2 <= (limit * limit)[:, None]
    generated = world[keep].astype(np.float32, copy=False)
    sources = np.broadcast_to(src[:, None, :], (s, ratio - 1, N_SOURCES))[keep]
    return generated, sources, sel, int((~keep).sum())
