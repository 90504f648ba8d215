"""The one entry point to an upsampler, whatever is behind it.

Callers (CLI, node, benchmarks) get an :class:`Upsampler` from :func:`load_upsampler` and
never branch on what it is. Built in: ``midpoint`` (classical baseline). Trained SSPU-Net
generators and their backends (PyTorch, ONNX Runtime, TensorRT) plug in here.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Upsampler(Protocol):
    """Densifies a point set by an integer ratio.

    ``upsample_patches`` is the batched core every backend implements (one call per scan
    in the densifier); ``upsample`` runs the standard patch protocol over a whole cloud.
    """

    name: str
    ratio: int
    patch_size: int

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        """(B, P, 3) float32 unit-sphere patches -> (B, ratio*P, 3) float32; row
        ``i*ratio + j`` of a patch is copy j of its point i (copy-major per point).
        Over-complete generators (``copies`` > ratio candidates per point) keep this layout:
        copy 0 is the point, copies 1..r-1 are chosen among its own candidates by
        :func:`~sspu_ros.geometry.candidate_selection.select_per_point`; ``upsample`` instead
        selects over the whole cloud by farthest point sampling (see
        :mod:`sspu_ros.runtime.patch_inference`)."""
        ...

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) float32 -> (ratio*N, 3) float32; the first N rows are the input points."""
        ...

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`upsample`, plus ((ratio-1)*N, k) int64: for every generated point the
        input points it was made from (used to give it their fields, e.g. intensity)."""
        ...


def _copy_sources(n: int, ratio: int) -> np.ndarray:
    """Sources of a generator's output with the owner merge: the r-1 generated copies of
    point i (consecutive rows) come from point i. ((r-1)*N, 1) int64."""
    return np.repeat(np.arange(n, dtype=np.int64), ratio - 1)[:, None]


def _check_patches(pts, ratio: int) -> None:
    if pts.dim() != 3 or pts.shape[-1] != 3:
        raise ValueError(f"expected patches of shape (B, P, 3), got {tuple(pts.shape)}")
    if pts.shape[1] < ratio:
        raise ValueError(f"patches need at least ratio={ratio} points, got {pts.shape[1]}")


def _empty_output(patches: np.ndarray, ratio: int) -> np.ndarray:
    return np.zeros((0, ratio * patches.shape[1], 3), dtype=np.float32)
