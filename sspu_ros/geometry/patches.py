"""Unit-sphere normalization and the inference patch protocol's patches (FPS seeds, each
with its nearest points), in PyTorch."""

from __future__ import annotations

import torch

from .knn import _check_points, gather_points, knn
from .sampling import farthest_point_sample

__all__ = ["denormalize", "extract_patches", "normalize_unit_sphere", "seed_count"]

def normalize_unit_sphere(
    xyz: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre each cloud on its mean and scale it into the unit ball.

    Args:
        xyz: (B, N, 3) points, N >= 1.

    Returns:
        normed: (B, N, 3) ``(xyz - centroid) / radius``; its farthest point has norm 1.
        centroid: (B, 1, 3) mean of each cloud.
        radius: (B, 1, 1) largest distance from the centroid, clamped to >= 1e-12 (so a
            single point or a collapsed cloud maps to the origin without NaNs).
    """
    _check_points(xyz, "xyz")
    centroid = xyz.mean(dim=1, keepdim=True)  # (B, 1, 3)
    centred = xyz - centroid
    radius = centred.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True).clamp_min(1e-12)
    return centred / radius, centroid, radius


def denormalize(xyz: torch.Tensor, centroid: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_unit_sphere`.

    Args:
        xyz: (B, N, 3) normalized points (N may differ from the normalized cloud's).
        centroid: (B, 1, 3).
        radius: (B, 1, 1).

    Returns:
        (B, N, 3) ``xyz * radius + centroid``.
    """
    return xyz * radius + centroid


def extract_patches(
    xyz: torch.Tensor,
    n_patches: int,
    patch_size: int,
    *,
    start: str = "first",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference patches: FPS seeds on the cloud, then each seed's nearest points.

    The patches are returned in the cloud's coordinates (not normalized; apply
    :func:`normalize_unit_sphere` to the (P, K, 3) batch per patch).

    Args:
        xyz: (N, 3) one point cloud.
        n_patches: P, number of FPS seeds, ``1 <= P <= N`` (see :func:`seed_count`).
        patch_size: points per patch; K = min(patch_size, N).
        start, generator: FPS start, as in :func:`farthest_point_sample`.

    Returns:
        patches: (P, K, 3) points, each patch ordered by distance to its seed (the seed,
            or a duplicate of it, first).
        idx: (P, K) int64 indices into ``xyz``: ``patches == xyz[idx]``.
    """
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 2:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise ValueError(f"xyz must be an (N, 3) tensor, got {shape}")
    n_points = xyz.shape[0]
    n_patches, patch_size = int(n_patches), int(patch_size)
    if n_patches < 1 or n_patches > n_points:
        raise ValueError(
            f"n_patches must be in [1, {n_points}] for {n_points} points, got {n_patches}"
        )
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    cloud = xyz.unsqueeze(0)  # (1, N, 3)
    seeds = farthest_point_sample(cloud, n_patches, start=start, generator=generator)  # (1, P)
    seed_xyz = gather_points(cloud, seeds)  # (1, P, 3)
    _, idx = knn(seed_xyz, cloud, min(patch_size, n_points))  # (1, P, K)
    return gather_points(cloud, idx)[0], idx[0]


def seed_count(n_points: int, patch_size: int = 256, ratio_of_coverage: float = 3) -> int:
    """Number of FPS seeds for the standard patch-based inference protocol.

    PU-GAN / PU-GCN take ``int(n_points / patch_size * ratio_of_coverage)`` seeds so that
    every point is covered by about ``ratio_of_coverage`` patches: 2048 points with
    256-point patches give 24 seeds. Computed here as the exact floor of
    ``n_points * ratio_of_coverage / patch_size`` (no float round-off), and at least 1 for
    a non-empty cloud (small clouds still get one patch).

    Args:
        n_points: points in the cloud, >= 0.
        patch_size: points per patch, >= 1.
        ratio_of_coverage: patches covering each point on average, > 0.

    Returns:
        Seed count (0 only for an empty cloud).
    """
    if n_points < 0 or patch_size < 1 or ratio_of_coverage <= 0:
        raise ValueError(
            f"need n_points >= 0, patch_size >= 1, ratio_of_coverage > 0; got {n_points}, "
            f"{patch_size}, {ratio_of_coverage}"
        )
    if n_points == 0:
        return 0
    return max(1, int(n_points * ratio_of_coverage // patch_size))
