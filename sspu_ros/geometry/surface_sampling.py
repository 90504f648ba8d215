"""Points on triangle meshes, sampled uniformly by area (numpy)."""

from __future__ import annotations

import numpy as np


def triangle_areas(tri: np.ndarray) -> np.ndarray:
    """(F, 3, 3) triangles -> (F,) areas."""
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_triangles(tri: np.ndarray, n: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed over the area of the triangles.

    Args:
        tri: (F, 3, 3) float triangles (F >= 1, total area > 0).
    Returns:
        points (n, 3) float64 and the index of the triangle each lies on, (n,) int64.
    """
    area = triangle_areas(tri)
    total = float(area.sum())
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the mesh has no area to sample")
    owner = rng.choice(len(tri), size=n, p=area / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1  # reflect into the triangle: uniform barycentric sampling
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[owner]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return points, owner
