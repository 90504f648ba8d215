"""Scan densification, ROS-free: which points of a scan are densified, and how.

The node and ``sspu`` both call :func:`densify_points`; the node only adds message
decoding/encoding around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .upsampler import Upsampler


@dataclass
class DensifyResult:
    generated: np.ndarray      # (M, 3) float32 new points
    sources: np.ndarray        # (M, k) int64: input points each generated point came from
    n_selected: int            # input points that were densified
    n_cropped_out: int         # finite input points outside the crop region
    n_capped: int              # points in the region left out by max_points


def crop_mask(xyz: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """(N, 3) -> (N,) bool: inside the ``crop.*`` region (horizontal range and height)."""
    r2 = xyz[:, 0].astype(np.float64) ** 2 + xyz[:, 1].astype(np.float64) ** 2
    z = xyz[:, 2]
    return ((r2 >= params["crop.min_range"] ** 2) & (r2 <= params["crop.max_range"] ** 2)
            & (z >= params["crop.min_z"]) & (z <= params["crop.max_z"]))


def densify_points(xyz: np.ndarray, upsampler: Upsampler,
                   params: Mapping[str, Any]) -> DensifyResult:
    """Densify the points of a scan inside the crop region.

    Args:
        xyz: (N, 3) float32 finite points of one scan, sensor frame.
        upsampler: any :class:`~sspu_ros.upsampler.Upsampler`.
        params: validated parameters (``crop.*``, ``max_points``).

    Returns:
        the generated points (the input points themselves are not repeated) and, for each,
        the indices (into ``xyz``) of the input points it came from.
    """
    inside = np.flatnonzero(crop_mask(xyz, params))
    n_capped = 0
    cap = int(params["max_points"])
    if inside.size > cap:  # keep the nearest points: bounded latency, most useful detail
        r2 = (xyz[inside, :2].astype(np.float64) ** 2).sum(axis=1)
        inside = inside[np.argpartition(r2, cap - 1)[:cap]]
        n_capped = int(r2.size - cap)
    n_out = int(xyz.shape[0] - inside.size - n_capped)
    if inside.size < upsampler.ratio:
        return DensifyResult(np.empty((0, 3), np.float32), np.empty((0, 1), np.int64), 0,
                             n_out, n_capped)
    dense, sources = upsampler.upsample_with_sources(xyz[inside])
    return DensifyResult(dense[inside.size:], inside[sources], int(inside.size), n_out,
                         n_capped)
