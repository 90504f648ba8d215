"""The standard patch protocol of point-cloud upsampling, for any patch generator.

normalize the shape -> FPS seeds (24 for 2048 points) -> each seed's 256 nearest points
form a patch, normalized to the unit sphere -> upsample every patch in ONE batched call ->
de-normalize -> merge -> FPS back to exactly r·N points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .geometry import (
    denormalize,
    extract_patches,
    farthest_point_sample,
    normalize_unit_sphere,
    seed_count,
)

PatchFn = Callable[[torch.Tensor], torch.Tensor]  # (P, K, 3) -> (P, rK, 3)


def upsample_with_patches(xyz: np.ndarray | torch.Tensor, patch_fn: PatchFn, ratio: int, *,
                          patch_size: int = 256, n_patches: int | None = None,
                          keep_input: bool = False) -> np.ndarray:
    """Upsample one cloud with a patch generator.

    Args:
        xyz: (N, 3) finite points, N >= 2.
        patch_fn: (P, K, 3) unit-sphere patches -> (P, r·K, 3) unit-sphere patches.
        ratio: r.
        patch_size: K (clipped to N).
        n_patches: FPS seeds; default :func:`seed_count` (24 for 2048 points).
        keep_input: put the N input points first and fill the rest by FPS of the
            generated points (else FPS over all generated points, the usual protocol).

    Returns:
        (r·N, 3) float32.
    """
    pts = torch.as_tensor(np.asarray(xyz, dtype=np.float32))
    n = pts.shape[0]
    if pts.dim() != 2 or pts.shape[1] != 3 or n < 2:
        raise ValueError(f"expected (N >= 2, 3) points, got shape {tuple(pts.shape)}")
    shape, centroid, radius = normalize_unit_sphere(pts[None])
    k = min(patch_size, n)
    p = n_patches or max(1, min(n, seed_count(n, k)))
    patches, _ = extract_patches(shape[0], p, k)  # (P, K, 3)
    normed, pc, pr = normalize_unit_sphere(patches)
    with torch.no_grad():
        dense = patch_fn(normed)  # (P, rK, 3)
    merged = denormalize(dense, pc, pr).reshape(1, -1, 3)  # (1, P·rK, 3)
    target = ratio * n
    if keep_input:
        need = target - n
        extra = merged[:, farthest_point_sample(merged, min(need, merged.shape[1]))[0]]
        out = torch.cat([shape, extra], dim=1)
    else:
        if merged.shape[1] < target:  # too few patches to cover r·N: pad by repetition
            reps = -(-target // merged.shape[1])
            merged = merged.repeat(1, reps, 1)
        out = merged[:, farthest_point_sample(merged, target)[0]]
    return denormalize(out, centroid, radius)[0].numpy().astype(np.float32)
