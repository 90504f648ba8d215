"""Evaluation metrics with the guide's conventions (GUIDE.md §3).

CD and HD: prediction and ground truth are each normalized to the unit sphere (own
centroid, own max radius); squared nearest-neighbour distances; CD = mean(p→g) + mean(g→p),
HD = max(p→g) + max(g→p). Reported ×1e-3 by the benchmarks.
"""

from __future__ import annotations

import numpy as np

from ..geometry.knn_numpy import nearest_neighbors


def normalize_unit_sphere_np(xyz: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3) float64 centred on its centroid, max radius 1."""
    c = xyz.astype(np.float64) - xyz.astype(np.float64).mean(axis=0)
    return c / max(np.linalg.norm(c, axis=1).max(), 1e-12)


def chamfer_hausdorff(pred: np.ndarray, gt: np.ndarray, *,
                      normalize: bool = True) -> tuple[float, float]:
    """(P, 3), (G, 3) -> (CD, HD) with squared nearest-neighbour distances."""
    p = normalize_unit_sphere_np(pred) if normalize else pred.astype(np.float64)
    g = normalize_unit_sphere_np(gt) if normalize else gt.astype(np.float64)
    d_pg = nearest_neighbors(g, p)[0] ** 2
    d_gp = nearest_neighbors(p, g)[0] ** 2
    return float(d_pg.mean() + d_gp.mean()), float(d_pg.max() + d_gp.max())
