"""Classical upsampling baselines (no learning), used as references in the benchmarks and
as the built-in ``midpoint`` model until trained models ship."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


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
    _, idx = cKDTree(pts).query(pts, k=ratio)  # (N, r): self first (or a duplicate point)
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
