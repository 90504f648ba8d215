"""Differentiable rendering unit (DRU) of SSPU-Net (paper §3.2): point clouds -> soft
multi-view silhouettes, in plain PyTorch.

Pipeline (all batched over patches B and views V at once):

1. :func:`make_cameras` places V pinhole cameras on a sphere around the (unit-sphere
   normalized) patch, looking at the origin.
2. :func:`point_triangles` turns every point into a small equilateral triangle per view
   (paper Eq. 2-4). Its circumradius is ``triangle_scale * local_spacing`` so that a
   cloud with 4x the points (half the spacing) gets half the triangle size and the
   sparse and dense renderings of one surface agree.
3. :func:`project_points` projects the triangle vertices to normalized image coordinates.
4. :func:`rasterize_soft` renders SoftRas silhouettes (Liu et al., ICCV 2019):
   ``D(p, f) = sigmoid(delta * d^2(p, f) / sigma)``, ``I(p) = 1 - prod_f (1 - D(p, f))``.

Conventions
-----------
* Camera frame (OpenCV style, right-handed): x right, y down, z forward (towards the
  scene). ``Cameras.rotations`` are world->camera: ``x_cam = R @ (x_world - center)``.
* Normalized image coordinates ``(u, v)`` in [-1, 1]: ``u = f * x_cam / z_cam``
  (left -> right), ``v = f * y_cam / z_cam`` (top -> bottom), ``f = 1 / tan(fov / 2)``.
  Pixel ``(row i, col j)`` of an H x W image has its centre at
  ``u = -1 + (2 j + 1) / W``, ``v = -1 + (2 i + 1) / H``.
* ``sigma`` is measured in squared normalized image units (as SoftRas and PyTorch3D).

Triangle construction (``mode``)
--------------------------------
``"paper"`` is Eq. (2)-(4) literally: ``x = p - o``, ``s = [1, 0, 0]``,
``v1 = x × s``, ``v = s × v1``, ``v2``/``v3`` at ±120° from ``v1`` in the plane spanned
by ``v1`` and ``v`` (Eq. 4's ``v·v2 = |v2||v| cos 30°`` picks ``v2 = cos120° v1 + sin120° v``;
``v3`` is the other solution at 120° from both). Since ``v1 ⟂ s`` and ``v ⟂ s`` the
triangle always lies in a plane ⟂ s (normal along the world x axis) whatever the camera.
A camera sees it foreshortened by ``|x̂ · s|``: face-on from the x axis (where Eq. 2 itself
degenerates, ``x × s -> 0``, and the in-plane orientation swings with the point's y-z
offset), edge-on -- a nearly empty image -- from a camera in the plane x = 0 for points
in that plane too. With the :func:`make_cameras` defaults the views at azimuth 90° and
270° see every triangle at a grazing angle (foreshortened to ``|p_x| / 2.5 <= 40%``; a
3-D blob renders ~30% of its facing-mode coverage, a blob in the plane x = 0 ~5%) and the
45° views see them shrunk by about cos 45° cos 30°. (GUIDE.md says "edge-on by cameras on
the x axis"; it is the cameras ⟂ the x axis.)

``"facing"`` (default) is the evident intent: the same equilateral construction in the
plane ⟂ the view ray ``x``, so each triangle's normal is along its view ray and it
projects to a nearly equilateral 2-D triangle of the same size from every camera.

Rasterizer and memory
---------------------
A pair (pixel p, triangle f) with p outside f further than the blur radius
``r_b = sqrt(sigma * ln(1 / eps - 1))`` has ``D(p, f) < eps`` and is skipped (set to
exactly 0), as in SoftRas / PyTorch3D (``eps`` defaults to 1e-3). Each triangle only
visits the pixels of its bounding box grown by ``r_b`` (optionally capped at
``max_window`` pixels per axis: a larger window is cropped to the pixels around the
triangle's centroid, so outlier points cannot blow up the work). Triangles are grouped
by window size (rungs 1, 2, 3, 4, 6, 8, 12, ... pixels per axis, <= 1.5x waste per axis)
and each group is evaluated on a fixed K_v x K_u grid, chunk by chunk
(``chunk_pairs`` pairs at a time): work is O(sum of window areas) = O(B·V·N·K²) for a
typical window K, never O(B·V·N·H·W). ``log(1 - D)`` is accumulated per pixel with
``index_add_`` and ``I = 1 - exp(sum log(1 - D))`` is evaluated with
``logsigmoid``/``expm1``, stable for any overlap count. The backward pass is written by
hand (:class:`_WindowedSoftRaster`) and recomputes the pair geometry chunk by chunk, so
nothing of size (pairs) is kept between forward and backward: memory is O(B·V·N) plus
one chunk.

Default ``sigma = 1e-4``: a 64 x 64 pixel is 2/64 = 0.031 wide, ``sqrt(sigma) = 0.01`` is
a third of a pixel, so ``D`` falls from 0.5 on the edge to 0.27 at 1/3 px and to 6e-5 at
1 px outside: a soft but localized edge. ``r_b`` = 0.026 (0.85 px) with ``eps = 1e-3``.
For other resolutions scale sigma with the squared pixel size:
``sigma ≈ 0.4 * (2 / image_size)^2``.

Default ``triangle_scale = 1.25`` (circumradius = 1.25 x mean distance to the 3 nearest
neighbours), measured on a unit disc seen by the 8 default cameras at 64 x 64, facing
mode, uniform random samples of 256 / 1024 points: IoU with the exact disc silhouette
0.79 / 0.87, pixels of the disc left below 0.5 3.3% / 1.3%, mean |I_256 - I_1024| 0.078;
scale 1.0 leaves 10% / 5% holes, 1.5 over-grows the outline (IoU 0.77 / 0.87, |diff| 0.073).
On a regular grid 1.0 is best (holes 1.2% / 0.3%). The sparse rendering overhangs the
true outline by about one triangle, twice as far as the dense one. Paper mode at 1.25
(same disc and cameras): IoU 0.66 / 0.75, holes 22% / 12%, |diff| 0.11.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_BLUR_EPS",
    "DEFAULT_CHUNK_PAIRS",
    "DEFAULT_FOV_DEG",
    "DEFAULT_SIGMA",
    "DEFAULT_TRIANGLE_SCALE",
    "Cameras",
    "benchmark_render",
    "blur_radius",
    "local_spacing",
    "look_at_cameras",
    "make_cameras",
    "point_triangles",
    "project_points",
    "rasterize_soft",
    "render_silhouettes",
]

DEFAULT_FOV_DEG = 50.0
DEFAULT_SIGMA = 1e-4
DEFAULT_BLUR_EPS = 1e-3
DEFAULT_TRIANGLE_SCALE = 1.25
_MIN_DEPTH = 1e-6
TriangleMode = Literal["facing", "paper"]


# --------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class Cameras:
    """V pinhole cameras.

    Attributes:
        centers: (V, 3) camera centres in world coordinates.
        rotations: (V, 3, 3) world->camera rotations; rows are the camera's right, down
            and forward (viewing) axes in world coordinates.
        fov_deg: full field of view (both image axes), degrees.
    """

    centers: Tensor
    rotations: Tensor
    fov_deg: float = DEFAULT_FOV_DEG

    @property
    def n_views(self) -> int:
        return int(self.centers.shape[0])

    @property
    def focal(self) -> float:
        """Focal length in normalized image units, ``1 / tan(fov / 2)``."""
        return 1.0 / math.tan(math.radians(self.fov_deg) / 2.0)

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(self.centers.to(device=device, dtype=dtype),
                       self.rotations.to(device=device, dtype=dtype), self.fov_deg)


def look_at_cameras(centers: Tensor, *, target: tuple[float, float, float] = (0.0, 0.0, 0.0),
                    up: tuple[float, float, float] = (0.0, 0.0, 1.0),
                    fov_deg: float = DEFAULT_FOV_DEG) -> Cameras:
    """Cameras at ``centers`` (V, 3) looking at ``target`` with ``up`` as the image's up.

    Where the viewing direction is parallel to ``up`` (camera straight above or below),
    the world axis least aligned with the viewing direction is used as ``up`` instead.

    Returns:
        :class:`Cameras` with rotations (V, 3, 3) of the dtype/device of ``centers``.
    """
    if centers.ndim != 2 or centers.shape[-1] != 3:
        raise ValueError(f"centers must be (V, 3), got {tuple(centers.shape)}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    target_t = centers.new_tensor(target)
    forward, degenerate_center = _safe_normalize(target_t - centers, centers.new_tensor(
        [1.0, 0.0, 0.0]))
    if bool(degenerate_center.any()):
        raise ValueError("a camera centre coincides with the look-at target")
    up_t = centers.new_tensor(up).expand_as(forward)
    right = torch.linalg.cross(forward, up_t)
    parallel = (right * right).sum(-1, keepdim=True) < 1e-12
    # fallback up: the world axis least aligned with the viewing direction
    axes = torch.eye(3, dtype=centers.dtype, device=centers.device)
    fallback_up = axes[forward.abs().argmin(-1)]
    right = torch.where(parallel, torch.linalg.cross(forward, fallback_up), right)
    right = F.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right)
    rotations = torch.stack([right, down, forward], dim=-2)
    return Cameras(centers, rotations, float(fov_deg))


def make_cameras(n_views: int = 8, radius: float = 2.5,
                 elevations_deg: tuple[float, ...] = (-30.0, 30.0), *,
                 fov_deg: float = DEFAULT_FOV_DEG, device=None,
                 dtype: torch.dtype = torch.float32) -> Cameras:
    """``n_views`` cameras on a sphere of ``radius`` around the origin, looking at it.

    View k sits at azimuth ``2 pi k / n_views`` and elevation
    ``elevations_deg[k % len(elevations_deg)]`` (the elevations cycle), up = +z.
    Patches normalized to the unit sphere are fully visible with the defaults (the unit
    sphere subtends ±23.6° at distance 2.5, inside the ±25° half field of view).

    Returns:
        :class:`Cameras` with centers (V, 3) and rotations (V, 3, 3).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if len(elevations_deg) == 0:
        raise ValueError("elevations_deg must hold at least one elevation")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    k = torch.arange(n_views, device=device, dtype=torch.float64)
    azimuth = 2.0 * math.pi * k / n_views
    elevations = torch.tensor(elevations_deg, device=device, dtype=torch.float64)
    elevation = torch.deg2rad(elevations[torch.arange(n_views, device=device)
                                        % len(elevations_deg)])
    centers = radius * torch.stack([torch.cos(elevation) * torch.cos(azimuth),
                                    torch.cos(elevation) * torch.sin(azimuth),
                                    torch.sin(elevation)], dim=-1)
    cams = look_at_cameras(centers, fov_deg=fov_deg)
    return cams.to(device=device, dtype=dtype)


def project_points(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Project world points seen by each view to normalized image coordinates.

    Args:
        points: (B, V, ..., 3) world coordinates, view axis 1 matching ``cameras``.
        cameras: V cameras.

    Returns:
        uv: (B, V, ..., 2) normalized image coordinates (in [-1, 1] inside the image).
        depth: (B, V, ...) camera-frame z (distance along the viewing axis). Points with
        depth below 1e-6 are projected as if at that depth (they should not occur: keep
        the scene in front of the cameras).
    """
    b, v = points.shape[:2]
    if v != cameras.n_views or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, V={cameras.n_views}, ..., 3), "
                         f"got {tuple(points.shape)}")
    flat = points.reshape(b, v, -1, 3) - cameras.centers.to(points)[None, :, None, :]
    cam = torch.einsum("vij,bvnj->bvni", cameras.rotations.to(points), flat)
    depth = cam[..., 2]
    uv = cameras.focal * cam[..., :2] / depth.clamp_min(_MIN_DEPTH).unsqueeze(-1)
    return uv.reshape(*points.shape[:-1], 2), depth.reshape(points.shape[:-1])


# --------------------------------------------------------------------------- triangles


def _safe_normalize(vectors: Tensor, fallback: Tensor, rel_tol: float = 0.0,
                    reference_norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Unit vectors of ``vectors`` (..., 3); ``fallback`` (broadcastable) where the norm is
    (relatively) zero. NaN-free in forward and backward.

    Returns:
        (unit (..., 3), degenerate (..., 1) bool).
    """
    norm2 = (vectors * vectors).sum(-1, keepdim=True)
    threshold = 0.0 if reference_norm is None else (rel_tol * reference_norm) ** 2
    degenerate = norm2 <= torch.as_tensor(threshold, dtype=norm2.dtype).clamp_min(
        torch.finfo(norm2.dtype).tiny)
    safe = torch.where(degenerate, torch.ones_like(norm2), norm2)
    unit = vectors * torch.rsqrt(safe)
    return torch.where(degenerate, fallback.expand_as(unit), unit), degenerate


def point_triangles(points: Tensor, centers: Tensor, size: Tensor,
                    mode: TriangleMode = "facing") -> Tensor:
    """One equilateral triangle per point and view (paper Eq. 2-4).

    Vertices are ``p + size * (v1, v2, v3)`` with unit ``v1, v2, v3`` at 120° to each
    other (circumradius ``size``).

    * ``mode="paper"``: literal Eq. (2)-(4) with ``s = [1, 0, 0]``: the triangle lies in
      the plane ⟂ s (normal along the world x axis) for every camera; it is seen edge-on
      by cameras in the plane x = 0 (for points in that plane) and face-on from the x
      axis. Where ``x = p - o`` is parallel to s (``v1 = x × s = 0``) ``v1 = [0, 1, 0]``
      is used (still ⟂ s), without NaN.
    * ``mode="facing"``: same construction in the plane ⟂ the view ray ``x = p - o``:
      ``v1 ⟂ x`` from a helper axis (world z, or world x where the ray is within ~26° of
      z), ``v2``/``v3`` are ``v1`` rotated by ±120° about ``x̂``; normal along ``x``.

    Args:
        points: (B, N, 3) world coordinates.
        centers: (V, 3) camera centres ``o``.
        size: (B, N) circumradius of each point's triangle (world units).
        mode: ``"facing"`` or ``"paper"``.

    Returns:
        (B, V, N, 3, 3): per view, per point, the 3 vertices (xyz).
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    if size.shape != points.shape[:2]:
        raise ValueError(f"size must be (B, N) = {tuple(points.shape[:2])}, "
                         f"got {tuple(size.shape)}")
    p = points[:, None, :, :]  # (B, 1, N, 3)
    ray = p - centers.to(points)[None, :, None, :]  # x = p - o: (B, V, N, 3)
    ex, ey, ez = torch.eye(3, dtype=points.dtype, device=points.device)
    ray_norm = ray.norm(dim=-1, keepdim=True).detach()
    if mode == "paper":
        s = ex.expand_as(ray)
        v1, _ = _safe_normalize(torch.linalg.cross(ray, s), ey, rel_tol=1e-6,
                                reference_norm=ray_norm)  # Eq. (2)
        second = torch.linalg.cross(s, v1)  # Eq. (3): unit, ⟂ s and v1
    elif mode == "facing":
        view_dir, _ = _safe_normalize(ray, ex)
        near_z = view_dir[..., 2:3].abs() > 0.9
        helper = torch.where(near_z, ex, ez)
        v1, _ = _safe_normalize(torch.linalg.cross(helper, view_dir), ey)
        second = torch.linalg.cross(view_dir, v1)  # unit, ⟂ x̂ and v1
    else:
        raise ValueError(f"mode must be 'facing' or 'paper', got {mode!r}")
    cos120, sin120 = -0.5, math.sqrt(3.0) / 2.0
    v2 = cos120 * v1 + sin120 * second  # Eq. (4): 120° from v1, 30° from v
    v3 = cos120 * v1 - sin120 * second
    offsets = torch.stack([v1, v2, v3], dim=-2)  # (B, V, N, 3, 3)
    return p[..., None, :] + size[:, None, :, None, None] * offsets


def local_spacing(points: Tensor, k: int = 3) -> Tensor:
    """Mean distance of each point to its k nearest other points.

    Differentiable w.r.t. ``points`` (the neighbour choice is not); coincident points
    give a distance of ~sqrt(tiny), never a NaN gradient.

    Args:
        points: (B, N, 3), N > k.
        k: number of neighbours.

    Returns:
        (B, N) mean neighbour distance.
    """
    from ..geometry.knn import gather_points, knn

    if points.ndim != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    if not 1 <= k < points.shape[1]:
        raise ValueError(f"need 1 <= k < N, got k={k} with N={points.shape[1]}")
    with torch.no_grad():
        _, idx = knn(points, points, k, exclude_self=True)  # (B, N, k)
    neighbours = gather_points(points, idx)  # (B, N, k, 3)
    dist2 = ((neighbours - points[:, :, None, :]) ** 2).sum(-1)
    tiny = torch.finfo(points.dtype).eps ** 2
    return dist2.clamp_min(tiny).sqrt().mean(-1)


# --------------------------------------------------------------------------- rasterizer


def blur_radius(sigma: float, eps: float = DEFAULT_BLUR_EPS) -> float:
    """Distance outside a triangle beyond which ``D = sigmoid(-d^2 / sigma) < eps``:
    ``r_b = sqrt(sigma * ln(1 / eps - 1))`` (normalized image units)."""
    if sigma <= 0 or not 0.0 < eps < 0.5:
        raise ValueError(f"need sigma > 0 and 0 < eps < 0.5, got {sigma}, {eps}")
    return math.sqrt(sigma * math.log(1.0 / eps - 1.0))


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return int(h), int(w)


def _log_one_minus_coverage(tri: Tensor, px: Tensor, py: Tensor, sigma: float,
                            cut2: float) -> Tensor:
    """``log(1 - D(p, f))`` for triangle/pixel pairs; 0 beyond the blur radius.

    Args:
        tri: (T, 3, 2) 2-D triangles.
        px, py: pixel centre coordinates, broadcastable against (T, ...) after the
            triangle axis, e.g. (T, 1, K) and (T, K, 1) or (1, 1, H*W).
        sigma: SoftRas sharpness (squared image units).
        cut2: squared blur radius; outside pairs farther than this contribute 0.

    Returns:
        (T, ...) broadcast shape of px, py: ``logsigmoid(-delta * d^2 / sigma)``.
    """
    extra = max(px.ndim, py.ndim) - 1
    vx = tri[..., 0].reshape(tri.shape[0], 3, *([1] * extra))
    vy = tri[..., 1].reshape(tri.shape[0], 3, *([1] * extra))
    dist2 = None
    signs = []
    for i in range(3):  # the three edges a -> b
        ax, ay, bx, by = vx[:, i], vy[:, i], vx[:, (i + 1) % 3], vy[:, (i + 1) % 3]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        len2 = ex * ex + ey * ey
        safe_len2 = torch.where(len2 > 0, len2, torch.ones_like(len2))
        t = ((wx * ex + wy * ey) / safe_len2).clamp(0.0, 1.0)
        dx, dy = wx - t * ex, wy - t * ey
        edge_dist2 = dx * dx + dy * dy
        dist2 = edge_dist2 if dist2 is None else torch.minimum(dist2, edge_dist2)
        signs.append(ex * wy - ey * wx)  # 2-D cross product: side of the edge
    with torch.no_grad():
        inside = ((signs[0] > 0) & (signs[1] > 0) & (signs[2] > 0)) | (
            (signs[0] < 0) & (signs[1] < 0) & (signs[2] < 0))
        skipped = (~inside) & (dist2 > cut2)
    signed = torch.where(inside, dist2, -dist2) / sigma
    return torch.where(skipped, torch.zeros_like(signed), F.logsigmoid(-signed))


# Window side lengths (pixels) that triangles are grouped by: a triangle whose grown
# bounding box spans c pixels goes to the smallest rung >= c (waste <= 1.5x per axis).
_WINDOW_RUNGS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
DEFAULT_CHUNK_PAIRS = 1 << 20


def _triangle_windows(tri: Tensor, h: int, w: int, radius: float, max_window: int | None
                      ) -> tuple[Tensor, Tensor]:
    """Pixel windows of 2-D triangles (T, 3, 2) grown by ``radius``, clipped to the image.

    Returns:
        first: (T, 2) int64 first (col, row) pixel of each window.
        count: (T, 2) int64 window width/height in pixels (0: off-image). Windows wider
        than ``max_window`` are cropped to ``max_window`` pixels around the centroid.
    """
    with torch.no_grad():
        tri = tri.to(torch.promote_types(tri.dtype, torch.float32))
        res = torch.tensor([w, h], device=tri.device, dtype=tri.dtype)  # (u, v) order
        lo = (tri.amin(1) - radius + 1.0) * res / 2.0 - 0.5  # continuous pixel index
        hi = (tri.amax(1) + radius + 1.0) * res / 2.0 - 0.5
        first = torch.minimum(torch.ceil(lo).clamp_min(0.0), res).long()  # res: off-image
        last = torch.minimum(torch.floor(hi).clamp_min(-1.0), res - 1).long()
        count = (last - first + 1).clamp_min(0)  # (T, 2)
        if max_window is not None:
            centre = torch.round((tri.mean(1) + 1.0) * res / 2.0 - 0.5).long()
            start = torch.minimum(torch.maximum(centre - max_window // 2, first),
                                  last - max_window + 1)
            first = torch.where(count > max_window, start, first)
            count = count.clamp_max(max_window)
    return first, count


def _window_groups(count: Tensor, h: int, w: int) -> list[tuple[Tensor, int, int]]:
    """Group triangles by window size.

    Args:
        count: (T, 2) window width/height in pixels.

    Returns:
        [(triangle indices (T_g,), K_u, K_v)]: every triangle with a non-empty window in
        exactly one group, whose K_u x K_v window contains its own.
    """
    rungs = list(_WINDOW_RUNGS)
    while rungs[-1] < max(h, w):
        rungs.append(2 * rungs[-1])
    ladder = torch.tensor(rungs, device=count.device)
    active = torch.nonzero((count > 0).all(1)).squeeze(1)
    rung = torch.bucketize(count[active], ladder)  # (T_a, 2): ladder[i-1] < c <= ladder[i]
    key = rung[:, 0] * len(rungs) + rung[:, 1]
    key_sorted, order = torch.sort(key)
    keys, sizes = torch.unique_consecutive(key_sorted, return_counts=True)
    groups = []
    for group_key, members in zip(keys.tolist(), torch.split(active[order], sizes.tolist()),
                                  strict=True):
        k_u = min(rungs[group_key // len(rungs)], w)
        k_v = min(rungs[group_key % len(rungs)], h)
        groups.append((members, k_u, k_v))
    return groups


def _window_pixels(first: Tensor, count: Tensor, k_u: int, k_v: int, h: int, w: int,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel centres of K_v x K_u windows.

    Args:
        first, count: (T, 2) int64 window start (col, row) and size.

    Returns:
        px: (T, 1, K_u), py: (T, K_v, 1) pixel centre coordinates; valid: (T, K_v, K_u)
        inside the triangle's own window; pixel: (T, K_v, K_u) int64 ``row * W + col``
        (clamped into the image where not valid).
    """
    steps_u = torch.arange(k_u, device=first.device)
    steps_v = torch.arange(k_v, device=first.device)
    cols = (first[:, 0:1] + steps_u).clamp_max(w - 1)  # (T, K_u)
    rows = (first[:, 1:2] + steps_v).clamp_max(h - 1)  # (T, K_v)
    valid = (steps_v < count[:, 1:2])[:, :, None] & (steps_u < count[:, 0:1])[:, None, :]
    px = (-1.0 + (2.0 * cols.to(dtype) + 1.0) / w)[:, None, :]
    py = (-1.0 + (2.0 * rows.to(dtype) + 1.0) / h)[:, :, None]
    return px, py, valid, rows[:, :, None] * w + cols[:, None, :]


def _closest_edge(tri: Tensor, px: Tensor, py: Tensor, *, closest_point: bool = True
                  ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None,
                             Tensor | None, Tensor]:
    """Nearest triangle edge of each pixel (no autograd; shared by forward and backward).

    Args:
        tri: (T, 3, 2); px: (T, 1, K_u); py: (T, K_v, 1).

    Returns:
        dist2, dx, dy, t, edge, inside, each (T, K_v, K_u): squared distance to the
        triangle's boundary, ``p - q`` for the closest boundary point
        ``q = a + t (b - a)`` on edge ``edge`` (a = vertex edge, b = vertex edge + 1), and
        whether p is strictly inside. With ``closest_point=False`` only dist2 and inside
        are returned (the others are None).
    """
    vx = tri[:, :, 0, None, None]  # (T, 3, 1, 1)
    vy = tri[:, :, 1, None, None]
    d2s, dxs, dys, ts, crosses = [], [], [], [], []
    for i in range(3):
        ax, ay, bx, by = vx[:, i], vy[:, i], vx[:, (i + 1) % 3], vy[:, (i + 1) % 3]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        len2 = ex * ex + ey * ey
        t = ((wx * ex + wy * ey) / torch.where(len2 > 0, len2, torch.ones_like(len2))
             ).clamp(0.0, 1.0)
        dx, dy = wx - t * ex, wy - t * ey
        d2s.append(dx * dx + dy * dy)
        dxs.append(dx)
        dys.append(dy)
        ts.append(t)
        crosses.append(ex * wy - ey * wx)
    inside = ((crosses[0] > 0) & (crosses[1] > 0) & (crosses[2] > 0)) | (
        (crosses[0] < 0) & (crosses[1] < 0) & (crosses[2] < 0))
    if not closest_point:
        return torch.minimum(torch.minimum(d2s[0], d2s[1]), d2s[2]), None, None, None, None, inside
    dist2, edge = torch.stack(d2s).min(0)
    pick = edge.unsqueeze(0)
    dx = torch.stack(dxs).gather(0, pick).squeeze(0)
    dy = torch.stack(dys).gather(0, pick).squeeze(0)
    t = torch.stack(ts).gather(0, pick).squeeze(0)
    return dist2, dx, dy, t, edge, inside


class _WindowedSoftRaster(torch.autograd.Function):
    """Sum of ``log(1 - D)`` per pixel over all triangles' windows, with a hand-written
    backward that recomputes the pair geometry chunk by chunk: nothing of size
    (pairs) is kept between forward and backward, only the triangles and their windows.

    Gradient: ``d log(1 - D) / d d2 = -(delta / sigma) sigmoid(delta d2 / sigma)`` and,
    for the closest boundary point q = a + t (b - a), ``d d2 / d a = -2 (p - q)(1 - t)``,
    ``d d2 / d b = -2 (p - q) t`` (envelope theorem); delta is piecewise constant.
    """

    @staticmethod
    def forward(ctx, tri, first, count, image_index, groups, n_pixels, h, w, sigma, cut2,
                chunk_pairs):
        log_background = tri.new_zeros(n_pixels)
        for members, chunk, k_u, k_v in _chunks(groups, chunk_pairs):
            ids = members[chunk]
            px, py, valid, pixel = _window_pixels(first[ids], count[ids], k_u, k_v, h, w,
                                                  tri.dtype)
            dist2, _, _, _, _, inside = _closest_edge(tri[ids], px, py, closest_point=False)
            terms = F.logsigmoid(torch.where(inside, -dist2, dist2) / sigma)
            keep = valid & (inside | (dist2 <= cut2))
            terms = torch.where(keep, terms, torch.zeros_like(terms))
            index = image_index[ids, None, None] * (h * w) + pixel
            log_background.index_add_(0, index.reshape(-1), terms.reshape(-1))
        ctx.save_for_backward(tri, first, count, image_index)
        ctx.groups, ctx.settings = groups, (h, w, sigma, cut2, chunk_pairs)
        return log_background

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_background):
        tri, first, count, image_index = ctx.saved_tensors
        h, w, sigma, cut2, chunk_pairs = ctx.settings
        grad_tri = torch.zeros_like(tri)
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        for members, chunk, k_u, k_v in _chunks(ctx.groups, chunk_pairs):
            ids = members[chunk]
            px, py, valid, pixel = _window_pixels(first[ids], count[ids], k_u, k_v, h, w,
                                                  tri.dtype)
            dist2, dx, dy, t, edge, inside = _closest_edge(tri[ids], px, py)
            delta = torch.where(inside, 1.0, -1.0).to(tri.dtype)
            d_term = -(delta / sigma) * torch.sigmoid(delta * dist2 / sigma)
            keep = valid & (inside | (dist2 <= cut2))
            upstream = grad_log_background[image_index[ids, None, None] * (h * w) + pixel]
            g = torch.where(keep, upstream * d_term, torch.zeros_like(d_term)) * -2.0
            gx, gy = g * dx, g * dy
            grad_chunk = tri.new_zeros(ids.shape[0], 3, 2)
            for i in range(3):
                on_edge = edge == i
                weight_b = torch.where(on_edge, t, torch.zeros_like(t))
                weight_a = on_edge.to(t.dtype) - weight_b
                grad_chunk[:, i, 0] += (weight_a * gx).sum((1, 2))
                grad_chunk[:, i, 1] += (weight_a * gy).sum((1, 2))
                grad_chunk[:, (i + 1) % 3, 0] += (weight_b * gx).sum((1, 2))
                grad_chunk[:, (i + 1) % 3, 1] += (weight_b * gy).sum((1, 2))
            grad_tri.index_add_(0, ids, grad_chunk)
        return (grad_tri,) + (None,) * 10


def _chunks(groups: list[tuple[Tensor, int, int]], chunk_pairs: int):
    """Yield (members, slice, K_u, K_v) with at most ~chunk_pairs pixel pairs per slice."""
    for members, k_u, k_v in groups:
        step = max(1, chunk_pairs // (k_u * k_v))
        for start in range(0, members.shape[0], step):
            yield members, slice(start, start + step), k_u, k_v


def rasterize_soft(tri2d: Tensor, image_size: int | tuple[int, int] = 64,
                   sigma: float = DEFAULT_SIGMA, *, eps: float = DEFAULT_BLUR_EPS,
                   max_window: int | None = None, chunk_pairs: int = DEFAULT_CHUNK_PAIRS
                   ) -> Tensor:
    """SoftRas silhouettes of 2-D triangles, windowed (no pixels x triangles tensor).

    ``I(p) = 1 - prod_f (1 - sigmoid(delta(p, f) * d^2(p, f) / sigma))`` where d is the
    distance from the pixel centre to triangle f (0 inside) and delta = +1 inside, -1
    outside; pairs farther outside than :func:`blur_radius` (D < eps) are skipped.

    Args:
        tri2d: (B, V, F, 3, 2) triangle vertices in normalized image coordinates.
        image_size: H = W, or (H, W).
        sigma: sharpness in squared normalized image units.
        eps: skip threshold on D (sets the blur radius).
        max_window: cap on the per-triangle pixel window (per axis). None: no cap (exact).
            Triangles whose grown bounding box spans more pixels are cropped to the
            window around their centroid (only outliers should hit a sensible cap).
        chunk_pairs: (triangle, pixel) pairs evaluated at once; bounds the transient
            memory of forward and backward (about 100 bytes per pair).

    Returns:
        (B, V, H, W) silhouettes in [0, 1].
    """
    if tri2d.ndim != 5 or tri2d.shape[-2:] != (3, 2):
        raise ValueError(f"tri2d must be (B, V, F, 3, 2), got {tuple(tri2d.shape)}")
    if max_window is not None and max_window < 1:
        raise ValueError(f"max_window must be >= 1 or None, got {max_window}")
    h, w = _image_hw(image_size)
    b, v, f = tri2d.shape[:3]
    radius = blur_radius(sigma, eps)
    tri = tri2d.reshape(b * v * f, 3, 2)
    if not bool(torch.isfinite(tri).all()):
        raise ValueError("rasterize_soft: non-finite triangle coordinates (NaN/Inf points, "
                         "or points at a camera centre)")
    first, count = _triangle_windows(tri, h, w, radius, max_window)
    groups = _window_groups(count, h, w)
    image_index = torch.arange(b * v, device=tri.device).repeat_interleave(f)
    log_background = _WindowedSoftRaster.apply(tri, first, count, image_index, groups,
                                               b * v * h * w, h, w, float(sigma),
                                               radius * radius, int(chunk_pairs))
    return (0.0 - torch.expm1(log_background)).view(b, v, h, w)


def _rasterize_soft_dense(tri2d: Tensor, image_size: int | tuple[int, int] = 64,
                          sigma: float = DEFAULT_SIGMA, *, eps: float | None = DEFAULT_BLUR_EPS
                          ) -> Tensor:
    """Reference rasterizer over all pixel x triangle pairs (tests only, small inputs).

    Args:
        tri2d: (B, V, F, 3, 2); eps: the skip threshold, or None for no skipping.

    Returns:
        (B, V, H, W).
    """
    h, w = _image_hw(image_size)
    b, v, f = tri2d.shape[:3]
    cols = torch.arange(w, device=tri2d.device, dtype=tri2d.dtype)
    rows = torch.arange(h, device=tri2d.device, dtype=tri2d.dtype)
    py, px = torch.meshgrid(-1.0 + (2.0 * rows + 1.0) / h, -1.0 + (2.0 * cols + 1.0) / w,
                            indexing="ij")
    cut2 = math.inf if eps is None else blur_radius(sigma, eps) ** 2
    terms = _log_one_minus_coverage(tri2d.reshape(-1, 3, 2), px.reshape(1, -1),
                                    py.reshape(1, -1), sigma, cut2)  # (T, H*W)
    log_background = terms.view(b * v, f, h * w).sum(1)
    return (0.0 - torch.expm1(log_background)).view(b, v, h, w)


# --------------------------------------------------------------------------- renderer


def render_silhouettes(points: Tensor, cameras: Cameras, *, image_size: int = 64,
                       sigma: float = DEFAULT_SIGMA,
                       triangle_scale: float = DEFAULT_TRIANGLE_SCALE,
                       mode: TriangleMode = "facing", knn_k: int = 3,
                       eps: float = DEFAULT_BLUR_EPS, max_window: int | None = -1,
                       backend: Literal["torch", "pytorch3d"] = "torch",
                       faces_per_pixel: int = 50) -> Tensor:
    """Soft multi-view silhouettes of point clouds (the DRU).

    Each point becomes a triangle of circumradius ``triangle_scale * local_spacing``
    (mean distance to its ``knn_k`` nearest neighbours) per view, built with ``mode``
    (see :func:`point_triangles`), projected and soft-rasterized.

    Args:
        points: (B, N, 3), normalized to the unit sphere (cameras at radius 2.5).
        cameras: V cameras (see :func:`make_cameras`), same device/dtype as points.
        image_size: H = W.
        sigma: SoftRas sharpness, squared normalized image units.
        triangle_scale: triangle circumradius in units of the local point spacing.
        mode: ``"facing"`` (default) or ``"paper"`` (literal Eq. 2-4).
        knn_k: neighbours for the local spacing.
        eps: skip pairs with D < eps (blur radius).
        max_window: per-triangle pixel window cap; -1 (default): ``max(8, image_size // 2)``
            so that outlier points with huge spacing cannot blow up the work (memory is
            bounded by chunking anyway); None: no cap.
        backend: ``"torch"`` (ours) or ``"pytorch3d"`` (its SoftSilhouetteShader, when
            installed; ``faces_per_pixel`` limits the faces it blends per pixel).

    Returns:
        (B, V, H, W) silhouettes in [0, 1].
    """
    if max_window == -1:
        max_window = max(8, image_size // 2)
    cameras = cameras.to(device=points.device, dtype=points.dtype)
    size = triangle_scale * local_spacing(points, knn_k)
    triangles = point_triangles(points, cameras.centers, size, mode)  # (B, V, N, 3, 3)
    if backend == "pytorch3d":
        return _render_pytorch3d(triangles, cameras, image_size, sigma, eps, faces_per_pixel)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'pytorch3d', got {backend!r}")
    tri2d, _ = project_points(triangles, cameras)  # (B, V, N, 3, 2)
    return rasterize_soft(tri2d, image_size, sigma, eps=eps, max_window=max_window)


def _render_pytorch3d(triangles: Tensor, cameras: Cameras, image_size: int, sigma: float,
                      eps: float, faces_per_pixel: int) -> Tensor:
    """PyTorch3D soft silhouettes of world triangles (B, V, N, 3, 3) -> (B, V, H, W).

    PyTorch3D's view frame is x left, y up, z forward with row-vector transforms
    ``X_view = X_world @ R + T``; ours is x right, y down, z forward with
    ``x_cam = R_ours (x - c)``, so ``R = R_ours^T diag(-1, -1, 1)`` and
    ``T = -diag(-1, -1, 1) R_ours c``. Its NDC +x left / +y up puts NDC (+1, +1) at pixel
    (0, 0), which is our (u, v) = (-1, -1): the images line up without a flip.
    """
    try:
        from pytorch3d.renderer import (
            BlendParams,
            FoVPerspectiveCameras,
            MeshRasterizer,
            MeshRenderer,
            RasterizationSettings,
            SoftSilhouetteShader,
        )
        from pytorch3d.structures import Meshes
    except ImportError as err:
        raise RuntimeError("backend='pytorch3d' needs the pytorch3d package "
                           "(not installable from PyPI on Linux); use backend='torch'") from err
    b, v, n = triangles.shape[:3]
    flip = triangles.new_tensor([-1.0, -1.0, 1.0])
    rot_view = cameras.rotations * flip[None, :, None]  # diag(flip) @ R_ours: (V, 3, 3)
    r_p3d = rot_view.transpose(1, 2)
    t_p3d = -torch.einsum("vij,vj->vi", rot_view, cameras.centers)
    p3d_cameras = FoVPerspectiveCameras(
        R=r_p3d.repeat(b, 1, 1), T=t_p3d.repeat(b, 1), fov=cameras.fov_deg, degrees=True,
        znear=0.01, zfar=100.0, device=triangles.device)
    settings = RasterizationSettings(
        image_size=image_size, blur_radius=blur_radius(sigma, eps) ** 2,  # squared units
        faces_per_pixel=faces_per_pixel, perspective_correct=False)
    renderer = MeshRenderer(
        rasterizer=MeshRasterizer(cameras=p3d_cameras, raster_settings=settings),
        shader=SoftSilhouetteShader(blend_params=BlendParams(sigma=sigma, gamma=1e-4)))
    verts = triangles.reshape(b * v, n * 3, 3)  # one mesh of N separate triangles per image
    faces = torch.arange(n * 3, device=triangles.device).view(1, n, 3).expand(b * v, n, 3)
    meshes = Meshes(verts=verts, faces=faces)
    images = renderer(meshes)  # (B*V, H, W, 4), alpha = silhouette
    return images[..., 3].reshape(b, v, image_size, image_size)


# --------------------------------------------------------------------------- benchmark


def _synthetic_patches(batch: int, n_points: int, *, device=None,
                       dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    """(batch, n_points, 3) random wavy surface patches normalized to the unit sphere."""
    gen = torch.Generator().manual_seed(seed)
    radius = torch.rand(batch, n_points, generator=gen).sqrt()
    angle = 2.0 * math.pi * torch.rand(batch, n_points, generator=gen)
    x, y = radius * torch.cos(angle), radius * torch.sin(angle)
    phase = 2.0 * math.pi * torch.rand(batch, 1, generator=gen)
    z = 0.2 * torch.sin(3.0 * x + phase) * torch.cos(2.0 * y)
    pts = torch.stack([x, y, z], dim=-1)
    pts = pts - pts.mean(1, keepdim=True)
    pts = pts / pts.norm(dim=-1).amax(1)[:, None, None]
    return pts.to(device=device, dtype=dtype)


def benchmark_render(*, batch: int = 28, n_views: int = 8,
                     n_points: tuple[int, ...] = (1024, 256), image_size: int = 64,
                     repeats: int = 3, device=None, dtype: torch.dtype = torch.float32,
                     mode: TriangleMode = "facing") -> list[dict]:
    """Time :func:`render_silhouettes` forward and backward on synthetic patches.

    Memory is the total size of the tensors autograd saves for backward (measured with
    saved-tensor hooks, any device) plus, on CUDA, the peak allocated memory.

    Returns:
        One dict per entry of ``n_points``: n_points, max_window (K_v, K_u), rms_window
        (pixels per axis), groups (window size classes), pairs (evaluated triangle-pixel
        pairs), dense_pairs (B·V·N·H·W, what a dense rasterizer would evaluate),
        forward_ms, backward_ms (medians), saved_mb, cuda_peak_mb.
    """
    device = torch.device(device if device is not None else "cpu")
    cameras = make_cameras(n_views, device=device, dtype=dtype)
    results = []
    for n in n_points:
        points = _synthetic_patches(batch, n, device=device, dtype=dtype)
        with torch.no_grad():
            size = DEFAULT_TRIANGLE_SCALE * local_spacing(points)
            tri2d, _ = project_points(point_triangles(points, cameras.centers, size, mode),
                                      cameras)
            tri = tri2d.reshape(-1, 3, 2)
            _, count = _triangle_windows(tri, image_size, image_size,
                                         blur_radius(DEFAULT_SIGMA), max(8, image_size // 2))
            groups = _window_groups(count, image_size, image_size)
            pairs = sum(int(m.shape[0]) * k_u * k_v for m, k_u, k_v in groups)
            window = count.amax(0).tolist()[::-1]
            mean_window = (count[:, 0] * count[:, 1]).double().mean().sqrt().item()
        forward_s, backward_s, saved_bytes, cuda_peak = [], [], 0, None
        for _ in range(repeats):
            pts = points.clone().requires_grad_(True)
            seen: dict[tuple[int, int], int] = {}

            def pack(t: Tensor, seen=seen) -> Tensor:
                key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
                seen[key] = t.untyped_storage().nbytes()
                return t

            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                images = render_silhouettes(pts, cameras, image_size=image_size, mode=mode)
            loss = images.square().mean()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20
            t2 = time.perf_counter()
            forward_s.append(t1 - t0)
            backward_s.append(t2 - t1)
            saved_bytes = sum(seen.values())
        results.append({
            "n_points": n, "batch": batch, "views": n_views, "image_size": image_size,
            "max_window": tuple(window), "rms_window": round(mean_window, 2),
            "groups": len(groups), "pairs": pairs,
            "dense_pairs": batch * n_views * n * image_size**2,
            "forward_ms": 1e3 * sorted(forward_s)[len(forward_s) // 2],
            "backward_ms": 1e3 * sorted(backward_s)[len(backward_s) // 2],
            "saved_mb": saved_bytes / 2**20, "cuda_peak_mb": cuda_peak,
            "device": str(device)})
    return results
