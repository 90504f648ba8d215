"""The built-in ``midpoint`` upsampler (classical, no learning): each point plus the
midpoints to its ratio-1 nearest neighbours. The node's CPU default and a baseline of the
benchmarks."""

from __future__ import annotations

import numpy as np

from ..geometry.knn_numpy import nearest_neighbors
from .upsampler import _check_patches


def midpoint_upsample(xyz: np.ndarray, ratio: int = 4, *,
                      return_sources: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Each point plus the midpoints to its ``ratio - 1`` nearest neighbours.

    Args:
        xyz: (N, 3) points, N >= ratio.
        ratio: upsampling ratio r >= 2.

    Returns:
        (r*N, 3) float32: the N input points first (in order), then for each point its
        r-1 midpoints (point-major: rows N + i*(r-1) + j belong to point i); with
        ``return_sources`` also ((r-1)*N, 2) int64: the two input points of each midpoint.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got shape {xyz.shape}")
    if ratio < 2:
        raise ValueError(f"ratio must be >= 2, got {ratio}")
    n = xyz.shape[0]
    if n < ratio:
        raise ValueError(f"need at least ratio={ratio} points for {ratio - 1} neighbours, got {n}")
    pts = xyz.astype(np.float64, copy=False)
    _, idx = nearest_neighbors(pts, pts, k=ratio)  # (N, r): self first (or a duplicate point)
    neighbours = _drop_self(idx, ratio)  # (N, r-1)
    mid = 0.5 * (pts[:, None, :] + pts[neighbours])  # (N, r-1, 3)
    dense = np.concatenate([pts, mid.reshape(-1, 3)]).astype(np.float32)
    if not return_sources:
        return dense
    own = np.repeat(np.arange(n), ratio - 1)
    return dense, np.stack([own, neighbours.ravel()], axis=1).astype(np.int64)


def _drop_self(idx: np.ndarray, ratio: int) -> np.ndarray:
    """(N, r) kNN indices including the query point -> (N, r-1) without it.

    With duplicate points the query may not come first; remove it wherever it is, and
    drop the last neighbour where it does not appear at all."""
    n = idx.shape[0]
    is_self = idx == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # duplicates filled all k slots: drop the farthest
    return idx[~is_self].reshape(n, ratio - 1)


class MidpointUpsampler:
    """Each point plus the midpoints to its ratio-1 nearest neighbours."""

    backend = "builtin"

    def __init__(self, ratio: int, patch_size: int = 256) -> None:
        self.name = "midpoint"
        self.ratio = int(ratio)
        self.patch_size = int(patch_size)

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        """Copy 0 of every point is the point; copies 1..r-1 the midpoints to its r-1
        nearest neighbours within the patch (vectorized over the batch)."""
        import torch

        from ..geometry.knn import knn

        pts = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        _check_patches(pts, self.ratio)
        b, p, _ = pts.shape
        _, idx = knn(pts, pts, self.ratio - 1, exclude_self=True)  # (B, P, r-1)
        nb = pts[torch.arange(b)[:, None, None], idx]  # (B, P, r-1, 3)
        copies = torch.cat([pts[:, :, None], 0.5 * (pts[:, :, None] + nb)], dim=2)
        return copies.reshape(b, p * self.ratio, 3).numpy()

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        return midpoint_upsample(xyz, self.ratio)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return midpoint_upsample(xyz, self.ratio, return_sources=True)
