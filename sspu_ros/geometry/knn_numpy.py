"""k nearest neighbours for numpy callers (one k-d tree helper for the whole package;
:mod:`.knn` is the batched torch version).

The tree is scipy's ``cKDTree`` built without balancing or node compaction: a 120k-point
scan builds in a few ms instead of tens, and the query results are the same.

Shapes follow ``cKDTree.query``: with ``k == 1`` the distances and indices are ``(M,)``,
with ``k > 1`` they are ``(M, k)``. Distances are Euclidean (not squared). A neighbour
slot that found nothing (fewer than k points within ``max_distance``, or fewer than k
points in all) has distance ``inf`` and index ``len(ref)``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["NeighborIndex", "nearest_neighbors"]


class NeighborIndex:
    """A k-d tree over ``ref`` ((N, D) points) for repeated queries."""

    def __init__(self, ref: np.ndarray) -> None:
        ref = np.asarray(ref)
        if ref.ndim != 2:
            raise ValueError(f"ref must be (N, D) points, got shape {ref.shape}")
        self.n = ref.shape[0]
        self._tree = cKDTree(ref, balanced_tree=False, compact_nodes=False)

    def query(self, points: np.ndarray, k: int = 1, *, max_distance: float = np.inf,
              workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference points of each of ``points`` ((M, D)).

        Returns (distances, indices): ``(M,)`` each for ``k == 1``, else ``(M, k)``,
        nearest first; ``workers=-1`` uses every core."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self._tree.query(points, k=int(k), distance_upper_bound=max_distance,
                                workers=workers)


def nearest_neighbors(ref: np.ndarray, points: np.ndarray, k: int = 1, *,
                      max_distance: float = np.inf,
                      workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One-shot :meth:`NeighborIndex.query`: the ``k`` nearest of ``ref`` ((N, D)) to each
    of ``points`` ((M, D)); (distances, indices) as ``cKDTree.query``."""
    return NeighborIndex(ref).query(points, k, max_distance=max_distance, workers=workers)
