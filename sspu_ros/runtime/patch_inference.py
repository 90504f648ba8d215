"""The standard patch protocol of point-cloud upsampling, for any patch generator.

normalize the shape -> FPS seeds (24 for 2048 points) -> each seed's 256 nearest points
form a patch, normalized to the unit sphere -> upsample every patch in ONE batched call ->
de-normalize -> merge -> exactly r·N points.

Two merges:
- ``"fps"`` (the PU-GAN protocol): pool every generated point of every patch, FPS to r·N
  (or, with ``keep_input``, the N inputs plus FPS of the pool to (r−1)·N). FPS favours
  isolated points, so one patch's stray output outweighs the others' agreement.
- ``"owner"`` (default): every input point takes its r generated copies from the one patch
  in which it lies closest to the seed (where the generator saw the most context around
  it); points no first-round patch covers get patches of their own. With ``keep_input`` the
  copy nearest the input point is replaced by the input point itself.
The generator's output order is assumed to be copy-major per point: row ``i·r + j`` is
copy ``j`` of input point ``i`` (true of :class:`sspu_ros.model.generator.Generator`).

Over-complete generators (``candidates`` c > r copies per point, candidate 0 = the point):
the merge pools c-1 candidates per point (with "owner": those of the point's owner patch;
with "fps": those of every patch) and keeps the N input points plus (r-1)·N candidates
chosen by farthest point sampling that starts from the input points
(:func:`sspu_ros.geometry.candidate_selection.fps_in_reach`, over the whole normalized
shape), as the MLS + FPS baseline does, preferring the candidates in reach of their point
(:data:`~sspu_ros.geometry.candidate_selection.MAX_REACH`); the output always starts with
the N input points then.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..geometry.knn import knn
from ..geometry.patches import denormalize, extract_patches, normalize_unit_sphere, seed_count
from ..geometry.sampling import farthest_point_sample

PatchFn = Callable[[torch.Tensor], torch.Tensor]  # (P, K, 3) -> (P, rK, 3)
MERGES = ("owner", "fps")


def _owners(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every point, the patch where it has the lowest rank (distance order to the
    seed) and that rank; -1 for points in no patch.

    Args:
        idx: (P, K) point indices of each patch, sorted by distance to the seed.
    Returns:
        owner (n,), position (n,) int64.
    """
    p, k = idx.shape
    rank = torch.arange(k).expand(p, k).reshape(-1)
    order = torch.argsort(rank, stable=True)  # lowest rank first, ties by patch
    point = idx.reshape(-1)[order]
    patch = torch.arange(p)[:, None].expand(p, k).reshape(-1)[order]
    first = torch.full((n,), p * k, dtype=torch.long)
    first.scatter_reduce_(0, point, torch.arange(p * k), reduce="amin")
    owner = torch.full((n,), -1, dtype=torch.long)
    pos = torch.zeros(n, dtype=torch.long)
    seen = first < p * k
    owner[seen] = patch[first[seen]]
    pos[seen] = rank[order][first[seen]]
    return owner, pos


def _covering_patches(shape: torch.Tensor, n_patches: int, k: int,
                      max_rounds: int = 8) -> torch.Tensor:
    """(N, 3) -> (P, K) patch indices such that every point is in some patch."""
    _, idx = extract_patches(shape, n_patches, k)
    n = shape.shape[0]
    for _ in range(max_rounds):
        covered = torch.zeros(n, dtype=torch.bool)
        covered[idx.reshape(-1)] = True
        missing = torch.nonzero(~covered).squeeze(1)
        if missing.numel() == 0:
            break
        extra = max(1, min(missing.numel(), seed_count(missing.numel(), k)))
        seeds = missing[farthest_point_sample(shape[missing][None], extra)[0]]
        _, more = knn(shape[seeds][None], shape[None], k)
        idx = torch.cat([idx, more[0]])
    return idx


def upsample_with_patches(xyz: np.ndarray | torch.Tensor, patch_fn: PatchFn, ratio: int, *,
                          patch_size: int = 256, n_patches: int | None = None,
                          keep_input: bool = False, merge: str = "owner",
                          candidates: int | None = None, return_parents: bool = False
                          ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Upsample one cloud with a patch generator.

    Args:
        xyz: (N, 3) finite points, N >= 2.
        patch_fn: (P, K, 3) unit-sphere patches -> (P, r·K, 3) unit-sphere patches.
        ratio: r.
        patch_size: K (clipped to N).
        n_patches: FPS seeds; default :func:`seed_count` (24 for 2048 points).
        keep_input: the N input points come first, unchanged.
        merge: "owner" or "fps" (see the module docstring).
        candidates: c, copies per point that ``patch_fn`` returns (default r); c > r
            selects r·N of them by farthest point sampling (module docstring).
        return_parents: also return, for c > r, the input point ((r-1)·N,) int64 each
            generated point (rows N..) was made from.

    Returns:
        (r·N, 3) float32 (and the parents with ``return_parents``).
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    pts = torch.as_tensor(np.asarray(xyz, dtype=np.float32))
    n = pts.shape[0]
    if pts.dim() != 2 or pts.shape[1] != 3 or n < 2:
        raise ValueError(f"expected (N >= 2, 3) points, got shape {tuple(pts.shape)}")
    shape, centroid, radius = normalize_unit_sphere(pts[None])
    k = min(patch_size, n)
    p = n_patches or max(1, min(n, seed_count(n, k)))
    if merge == "owner":
        idx = _covering_patches(shape[0], p, k)
    else:
        _, idx = extract_patches(shape[0], p, k)
    normed, pc, pr = normalize_unit_sphere(shape[0][idx])  # (P, K, 3)
    with torch.no_grad():
        dense = denormalize(patch_fn(normed), pc, pr)  # (P, rK, 3) in shape coordinates
    c = int(candidates or ratio)
    if c > ratio:
        return _select_candidates(pts, shape[0], centroid, radius, dense, idx, c, ratio,
                                  merge, return_parents)
    if return_parents:
        raise ValueError("return_parents needs candidates > ratio (else the parents are "
                         "copy-major: generated row j comes from point j // (r - 1))")
    if merge == "owner":
        owner, pos = _owners(idx, n)
        copies = dense.reshape(idx.shape[0], k, ratio, 3)[owner, pos]  # (N, r, 3)
        if keep_input:
            d2 = (copies - shape[0][:, None]).square().sum(-1)  # (N, r)
            drop = d2.argmin(1, keepdim=True)
            keep = torch.ones_like(d2, dtype=torch.bool).scatter_(1, drop, False)
            generated = copies[keep].reshape(1, -1, 3)
        else:
            generated = copies.reshape(1, -1, 3)
    else:
        merged = dense.reshape(1, -1, 3)
        target = ratio * n - (n if keep_input else 0)
        if merged.shape[1] < target:  # too few patches to cover r·N: pad by repetition
            merged = merged.repeat(1, -(-target // merged.shape[1]), 1)
        generated = merged[:, farthest_point_sample(merged, target)[0]]
    out = denormalize(generated, centroid, radius)[0].numpy().astype(np.float32)
    return np.concatenate([pts.numpy(), out]) if keep_input else out


def _select_candidates(pts: torch.Tensor, shape: torch.Tensor, centroid: torch.Tensor,
                       radius: torch.Tensor, dense: torch.Tensor, idx: torch.Tensor, c: int,
                       ratio: int, merge: str, return_parents: bool
                       ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Over-complete merge: pool the candidates, FPS from the inputs to (r-1)·N.

    pts (N, 3) original points; shape (N, 3) normalized; dense (P, c·K, 3) candidates in
    shape coordinates; idx (P, K) patch indices."""
    from ..geometry.candidate_selection import fps_in_reach

    n = shape.shape[0]
    p, k = idx.shape
    cand = dense.reshape(p, k, c, 3)[:, :, 1:]  # (P, K, c-1, 3): candidate 0 is the point
    if merge == "owner":
        owner, pos = _owners(idx, n)
        pool = cand[owner, pos].reshape(-1, 3)  # (N·(c-1), 3), point-major
        parent = torch.arange(n).repeat_interleave(c - 1)
    else:
        pool = cand.reshape(-1, 3)
        parent = idx[:, :, None].expand(p, k, c - 1).reshape(-1)
    need = (ratio - 1) * n
    pool_np = pool.double().numpy()
    parent_np = parent.numpy()
    if pool_np.shape[0] < need:  # tiny clouds: repeat the pool
        reps = -(-need // pool_np.shape[0])
        pool_np, parent_np = np.tile(pool_np, (reps, 1)), np.tile(parent_np, reps)
    pick = fps_in_reach(shape.double().numpy(), pool_np, parent_np, need)
    chosen = torch.from_numpy(pool_np[pick]).float()
    out = denormalize(chosen[None], centroid, radius)[0].numpy().astype(np.float32)
    dense_out = np.concatenate([pts.numpy(), out])
    return (dense_out, parent_np[pick].astype(np.int64)) if return_parents else dense_out


def _per_point(pts, out, ratio: int):
    """(B, P, 3) patches and the generator's (B, c·P, 3) output -> (B, r·P, 3) copy-major
    (c > r: :func:`~sspu_ros.geometry.candidate_selection.select_per_point`; else ``out``)."""
    if out.shape[1] == ratio * pts.shape[1]:
        return out
    from ..geometry.candidate_selection import select_per_point

    return select_per_point(pts, out, ratio)


def _with_sources(upsampler, xyz: np.ndarray, patch_fn) -> tuple[np.ndarray, np.ndarray]:
    """``upsample_with_sources`` of a generator backend whose raw patch function is
    ``patch_fn`` (copies per point: ``upsampler.copies``)."""
    from .upsampler import _copy_sources

    if upsampler.copies == upsampler.ratio:
        return upsampler.upsample(xyz), _copy_sources(len(xyz), upsampler.ratio)
    dense, parents = upsample_with_patches(
        xyz, patch_fn, upsampler.ratio, candidates=upsampler.copies,
        patch_size=upsampler.patch_size, keep_input=True, return_parents=True)
    return dense, parents[:, None]
