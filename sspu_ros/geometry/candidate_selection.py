"""Selecting r copies per point out of an over-complete set of candidates.

A generator built with ``candidates = r' > r`` (:class:`sspu_ros.model.generator.Generator`)
returns r' candidates per input point (copy-major: row ``i*r' + j`` is candidate ``j`` of
point ``i``; candidate 0 is the point itself). The dense cloud keeps the N input points and
chooses (r-1)·N of the (r'-1)·N other candidates, the most evenly spread ones, as the
classical MLS + FPS baseline (:func:`sspu_ros.evaluation.baselines.mls_upsample`) and
Grad-PU / PU-GCN do:

- :func:`fps_extend_torch`: farthest point sampling that starts from an already chosen set
  (the input points), batched over patches; used in training (per patch) and where a whole
  cloud is upsampled (:func:`sspu_ros.runtime.patch_inference.upsample_with_patches`,
  numpy FPS there: :func:`fps_extend_numpy`, also the MLS + FPS baseline's).
- :func:`select_per_point`: every point keeps exactly r-1 of its own candidates, chosen
  greedily (point by point, r-1 rounds) as the one farthest from everything chosen so far;
  this keeps the copy-major layout ``(B, r·P, 3)`` that :meth:`Upsampler.upsample_patches`
  and the LiDAR densifier rely on.

Both prefer the candidates *in reach* (:data:`MAX_REACH`): a candidate farther from its
point than ``MAX_REACH`` times the point's nearest-neighbour distance is taken only when a
point (per point) or the cloud (FPS) has too few others. On evenly sampled surfaces (the
PU-GAN inputs) the 6th nearest neighbour of 99 % of the points lies within 3.1 nearest-
neighbour distances, so the midpoints to all r'-1 = 6 neighbours stay in reach (reach
1.55); on a LiDAR scan the nearest neighbours lie along the ring and a midpoint to a point
of the next ring (or of an object behind) reaches 3-10 of them: in the gaps the scan does
not sample, often across a depth edge. Measured (``sspu bench quality``, README "What
changed from the paper"): PU-GAN dev CD 0.1896 -> 0.1897; on LiDAR objects P2F 0.0155 ->
0.0141 m (lidar-sim), accuracy 0.0196 -> 0.0181 m (KITTI objects, the node's path).

Indices are picked without gradient; gather the coordinates afterwards so the gradient
reaches the chosen candidates.
"""

from __future__ import annotations

import numpy as np
import torch

from .knn import knn
from .knn_numpy import nearest_neighbors

#: Reach of a candidate: its distance to its point over the point's nearest-neighbour
#: distance; candidates within MAX_REACH go first (module docstring). 2 = the midpoint of a
#: chord up to 4 nearest-neighbour distances long.
MAX_REACH = 2.0
#: Neighbours closer than this (unit-sphere patches / shapes) are the same point (a scan's
#: duplicate returns): the spacing is the distance to the nearest point farther away.
SAME_POINT = 1e-6


def fps_extend_torch(fixed: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Farthest point sampling of ``n`` candidates per batch item, starting from ``fixed``.

    Each pick is the candidate farthest (squared distance) from the union of ``fixed`` and
    the candidates picked so far; ties go to the lowest index (as
    :func:`fps_extend_numpy`, which does the same for one cloud in numpy).

    Args:
        fixed: (B, F, 3) points already kept, F >= 1.
        candidates: (B, M, 3) points to choose from.
        n: picks, 0 <= n <= M.

    Returns:
        (B, n) int64 indices into M, in pick order (no gradient).
    """
    b, m, _ = candidates.shape
    if not 0 <= n <= m:
        raise ValueError(f"n must be in [0, {m}], got {n}")
    with torch.no_grad():
        cand = candidates.detach()
        d2 = torch.cdist(cand, fixed.detach()).square().amin(-1)  # (B, M)
        out = torch.empty(b, n, dtype=torch.long, device=cand.device)
        rows = torch.arange(b, device=cand.device)
        for i in range(n):
            j = d2.argmax(-1)  # (B,) first maximum
            out[:, i] = j
            picked = cand[rows, j]  # (B, 3)
            d2 = torch.minimum(d2, (cand - picked[:, None]).square().sum(-1))
            d2[rows, j] = -1.0
    return out


def select_fps(xyz: torch.Tensor, candidates: torch.Tensor, ratio: int) -> torch.Tensor:
    """Input points plus (r-1)·N of the candidates by :func:`fps_extend_torch`.

    Args:
        xyz: (B, N, 3) input points.
        candidates: (B, N·c, 3) generator output, copy-major with c = r' candidates per
            point, candidate 0 of each point being the point itself (dropped here).
        ratio: r, 2 <= r <= c.

    Returns:
        (B, r·N, 3): the N input points first, then the chosen candidates in pick order
        (differentiable with respect to the chosen candidates).
    """
    b, n, _ = xyz.shape
    c = candidates.shape[1] // n
    if candidates.shape[1] != c * n or not 2 <= ratio <= c:
        raise ValueError(f"expected (B, c*{n}, 3) candidates with c >= ratio={ratio}, got "
                         f"{tuple(candidates.shape)}")
    others = candidates.reshape(b, n, c, 3)[:, :, 1:].reshape(b, n * (c - 1), 3)
    idx = fps_extend_torch(xyz, others, (ratio - 1) * n)  # (B, (r-1)N)
    chosen = torch.gather(others, 1, idx[..., None].expand(-1, -1, 3))
    return torch.cat([xyz, chosen], dim=1)


def select_per_point(xyz: torch.Tensor, candidates: torch.Tensor, ratio: int, *,
                     local_k: int = 16, max_reach: float | None = MAX_REACH) -> torch.Tensor:
    """Exactly r copies per point: the point, then r-1 of its own candidates.

    r-1 rounds; in each round the points take turns in index order, and each takes its
    not-yet-taken candidate that is farthest from the input points and everything taken so
    far (squared distance; ties to the lowest candidate index), among its candidates in
    reach (``max_reach``; when those run out, the others in index order). Distances are kept for the
    candidates of each point's ``local_k`` nearest points (itself included) only: a pick
    updates the candidates of the picking point's neighbourhood, and a candidate's initial
    distance is to the nearest of its point's neighbours (candidates lie within about one
    spacing of their point, so farther ones rarely matter; exact when local_k >= N).
    Sequential over points, vectorized over the batch.

    Args:
        xyz: (B, N, 3) input points.
        candidates: (B, N·c, 3), copy-major, c >= r candidates per point, candidate 0 the
            point itself (not chosen: the point is copy 0 of the output).
        local_k: neighbourhood size of the distance updates.
        max_reach: see :data:`MAX_REACH`; None: every candidate is in reach.

    Returns:
        (B, r·N, 3) copy-major: row ``i*r`` is point i, rows ``i*r + 1 .. i*r + r-1`` its
        chosen candidates in pick order (differentiable with respect to them).
    """

    b, n, _ = xyz.shape
    c = candidates.shape[1] // n
    if candidates.shape[1] != c * n or not 2 <= ratio <= c:
        raise ValueError(f"expected (B, c*{n}, 3) candidates with c >= ratio={ratio}, got "
                         f"{tuple(candidates.shape)}")
    others = candidates.reshape(b, n, c, 3)[:, :, 1:]  # (B, N, c-1, 3)
    k = min(int(local_k), n)
    with torch.no_grad():
        pts = xyz.detach()
        cand = others.detach()
        _, nbr = knn(pts, pts, k)  # (B, N, k), self included
        rows = torch.arange(b, device=xyz.device)
        nb_pts = pts[rows[:, None, None], nbr]  # (B, N, k, 3)
        d2 = (cand[:, :, :, None] - nb_pts[:, :, None]).square().sum(-1).amin(-1)  # (B,N,c-1)
        if max_reach is not None and k > 1:  # out of reach: after all in reach (-1 = taken)
            gaps = (nb_pts[:, :, 1:] - pts[:, :, None]).norm(dim=-1)  # (B, N, k-1)
            gaps = torch.where(gaps > SAME_POINT, gaps, torch.inf)  # duplicates do not count
            spacing = gaps.amin(-1)  # (B, N) distance to the nearest other point
            reach = (cand - pts[:, :, None]).norm(dim=-1)  # (B, N, c-1)
            d2 = torch.where(reach > max_reach * spacing[..., None], -0.5, d2)
        m = c - 1
        # flat views: candidate (b, q, s) is row (b*N + q)*m + s; one small gather / scatter
        # per pick instead of advanced indexing on the 4-D tensors
        d2 = d2.reshape(-1).contiguous()
        flat_cand = cand.reshape(-1, 3)
        own = ((rows[:, None] * n + nbr.reshape(b, -1)) * m).reshape(b, n, k, 1)
        nb_flat = (own + torch.arange(m, device=xyz.device)).reshape(b, n, k * m)  # (B,N,km)
        nb_flat = nb_flat.transpose(0, 1).contiguous()  # (N, B, k*m)
        start = rows * n * m  # (B,)
        pick = torch.empty(b, n, ratio - 1, dtype=torch.long, device=xyz.device)
        for t in range(ratio - 1):
            for i in range(n):
                j = d2.view(b, n, m)[:, i].argmax(-1)  # (B,)
                pick[:, i, t] = j
                sel = start + i * m + j
                p = flat_cand[sel]  # (B, 3)
                idx = nb_flat[i].reshape(-1)  # (B*k*m,)
                near = flat_cand.index_select(0, idx).view(b, k * m, 3)
                local = (near - p[:, None]).square().sum(-1).reshape(-1)
                d2.scatter_reduce_(0, idx, local, reduce="amin")
                d2[sel] = -1.0
    chosen = torch.gather(others, 2, pick[..., None].expand(-1, -1, -1, 3))  # (B,N,r-1,3)
    return torch.cat([xyz[:, :, None], chosen], dim=2).reshape(b, n * ratio, 3)


def fps_extend_numpy(fixed: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Farthest point sampling of ``n`` candidates, starting from an already chosen set:
    every pick is the candidate farthest from ``fixed`` and the picks so far (ties to the
    lowest index). The squared distance to each pick is |c|^2 - 2 c.p + |p|^2, one
    matrix-vector product and three passes over the candidates per pick.

    Args:
        fixed: (F, 3) points already kept (F >= 0); candidates: (M, 3); 0 <= n <= M.

    Returns:
        (n,) int64 indices into ``candidates``, in pick order.
    """
    cand = np.ascontiguousarray(candidates, dtype=np.float64)
    m = cand.shape[0]
    if not 0 <= n <= m:
        raise ValueError(f"n must be in [0, {m}], got {n}")
    if len(fixed):
        d2 = nearest_neighbors(np.asarray(fixed, dtype=np.float64), cand)[0] ** 2
    else:
        d2 = np.full(m, np.inf)
    sq = np.einsum("ij,ij->i", cand, cand)
    out = np.empty(n, dtype=np.int64)
    dist = np.empty(m)
    for i in range(n):
        j = int(d2.argmax())
        out[i] = j
        p = cand[j]
        np.dot(cand, -2.0 * p, out=dist)
        dist += sq
        dist += sq[j]
        np.minimum(d2, dist, out=d2)
        d2[j] = -1.0
    return out


def fps_in_reach(fixed: np.ndarray, candidates: np.ndarray, parent: np.ndarray, n: int, *,
                 max_reach: float | None = MAX_REACH) -> np.ndarray:
    """:func:`fps_extend_numpy` over the candidates in reach; when fewer than ``n`` are, all
    of those plus the nearest others (by reach).

    Args:
        fixed: (F, 3) the input points, F >= 2; candidates: (M, 3); parent: (M,) int64 the
            input point each candidate was made from; 0 <= n <= M.
        max_reach: see :data:`MAX_REACH`; None: plain :func:`fps_extend_numpy`.

    Returns:
        (n,) int64 indices into ``candidates`` (those in reach first).
    """
    if max_reach is None or len(fixed) < 2:
        return fps_extend_numpy(fixed, candidates, n)
    fixed = np.asarray(fixed, dtype=np.float64)
    gaps = nearest_neighbors(fixed, fixed, k=min(8, len(fixed)))[0][:, 1:]  # (F, k-1)
    spacing = np.where(gaps > SAME_POINT, gaps, np.inf).min(axis=1)  # duplicates skipped
    reach = (np.linalg.norm(np.asarray(candidates, dtype=np.float64) - fixed[parent], axis=1)
             / np.maximum(spacing[parent], 1e-12))
    ok = np.flatnonzero(reach <= max_reach)
    if ok.size >= n:
        return ok[fps_extend_numpy(fixed, candidates[ok], n)]
    rest = np.flatnonzero(reach > max_reach)
    rest = rest[np.argsort(reach[rest], kind="stable")][: n - ok.size]
    return np.concatenate([ok, rest]).astype(np.int64)
