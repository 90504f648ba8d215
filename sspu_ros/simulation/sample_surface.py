"""Sample data the project generates itself (no download, no licence question).

The README's main command upsamples this sample. It is a closed procedural surface (a
torus knot tube) sampled uniformly by area: curved, thin, with concave parts, so that an
upsampler's failure modes (filling the hole, bridging the tube) are visible.
"""

from __future__ import annotations

import numpy as np


def torus_knot_surface(n_points: int = 2048, *, p: int = 2, q: int = 3,
                       tube_radius: float = 0.45, seed: int = 0) -> np.ndarray:
    """Points sampled uniformly by area on a tube around a (p, q) torus knot.

    Returns:
        (n_points, 3) float32, centred, inside the unit sphere.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rng = np.random.default_rng(seed)
    # Dense parameter grid -> per-cell area weights -> sample cells by area, jitter inside.
    nu, nv = 720, 48
    u = (np.arange(nu) + 0.5) / nu * 2 * np.pi
    v = (np.arange(nv) + 0.5) / nv * 2 * np.pi
    pos = _tube(u[:, None], v[None, :], p, q, tube_radius)  # (nu, nv, 3)
    du = np.roll(pos, -1, axis=0) - pos
    dv = np.roll(pos, -1, axis=1) - pos
    area = np.linalg.norm(np.cross(du, dv), axis=-1).ravel()
    cells = rng.choice(area.size, size=n_points, p=area / area.sum())
    uu = u[cells // nv] + (rng.random(n_points) - 0.5) * (2 * np.pi / nu)
    vv = v[cells % nv] + (rng.random(n_points) - 0.5) * (2 * np.pi / nv)
    pts = _tube(uu, vv, p, q, tube_radius)
    pts -= pts.mean(axis=0)
    pts /= np.linalg.norm(pts, axis=1).max()
    return pts.astype(np.float32)


def _tube(u: np.ndarray, v: np.ndarray, p: int, q: int, r: float) -> np.ndarray:
    """Surface point of the tube at knot parameter u and tube angle v (broadcast) -> (..., 3)."""
    def curve(t):
        rad = 2.0 + np.cos(q * t)
        return np.stack([rad * np.cos(p * t), rad * np.sin(p * t), -np.sin(q * t)], axis=-1)

    c = curve(u)
    tangent = curve(u + 1e-4) - curve(u - 1e-4)
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), tangent.shape)
    n1 = np.cross(tangent, up)
    n1 /= np.linalg.norm(n1, axis=-1, keepdims=True)
    n2 = np.cross(tangent, n1)
    vv = np.asarray(v)[..., None]
    return c + r * (np.cos(vv) * n1 + np.sin(vv) * n2)
