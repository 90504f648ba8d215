"""Virtual beams of a spinning-LiDAR scan from the learned range-image interpolator.

:class:`LearnedBeamInterpolator` is the learned counterpart of
:func:`~sspu_ros.geometry.beams.interpolate_beams` (same arguments, same outputs): it fills
the r-1 virtual rows between each pair of kept beams with the network's ranges, keeps a
pixel where ``sigmoid(return) · sigmoid(trust) > threshold`` (a return exists and the
range is trusted: no ghost points bridging a depth discontinuity, none in empty space),
and puts the points on the linearly interpolated cones at the interpolated azimuth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry.beams import RangeImage, RingCones, points_on_cones
from ..geometry.range_window import gap_rows, virtual_azimuth
from ..model.range_interpolator import RangeInterpolator, load_range_interpolator

__all__ = ["LearnedBeamInterpolator"]


class LearnedBeamInterpolator:
    """The learned interpolator on whole range images (PyTorch, CPU by default)."""

    def __init__(self, model: RangeInterpolator, *, threshold: float = 0.5,
                 name: str = "learned range interp", veto_bridges: bool = False) -> None:
        self.model = model.eval()
        self.threshold = float(threshold)
        self.name = name
        self.veto_bridges = veto_bridges

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, threshold: float | None = None,
                        name: str | None = None, veto_bridges: bool = False
                        ) -> LearnedBeamInterpolator:
        model, ckpt = load_range_interpolator(path)
        thr = ckpt.get("threshold", 0.5) if threshold is None else threshold
        return cls(model, threshold=thr, name=name or f"learned:{Path(path).stem}",
                   veto_bridges=veto_bridges)

    def predict(self, ranges: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, W) kept ranges (NaN where empty) -> range and emit probability
        ``sigmoid(return)·sigmoid(trust)``, each (r-1, K-1, W) float32."""
        valid = np.isfinite(ranges)
        rng = torch.from_numpy(np.where(valid, ranges, 0.0).astype(np.float32))[None]
        t = torch.arange(1, ratio, dtype=torch.float32) / ratio
        with torch.inference_mode():
            pred, ret, trust = self.model(rng, torch.from_numpy(valid).float()[None], t)
            prob = torch.sigmoid(ret) * torch.sigmoid(trust)
        return pred[0].numpy(), prob[0].numpy()

    def interpolate(self, sparse: RangeImage, kept_rows: np.ndarray, kept_cones: RingCones,
                    *, n_rows: int, threshold: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`~sspu_ros.geometry.beams.interpolate_beams`: (M, 3) float64 points of
        the kept virtual pixels and their (M,) int64 dense rows. The kept rows must be
        equally spaced (r apart); rows outside the first and last kept row are not
        extrapolated."""
        kept_rows = np.asarray(kept_rows, dtype=np.int64)
        if sparse.range.shape[0] != len(kept_rows) or len(kept_cones) != len(kept_rows):
            raise ValueError(f"{sparse.range.shape[0]} image rows, {len(kept_rows)} kept "
                             f"rows and {len(kept_cones)} cones must agree")
        ratio = int(kept_rows[1] - kept_rows[0]) if len(kept_rows) > 1 else 1
        if len(kept_rows) < 2 or ratio < 2 or kept_rows[-1] >= n_rows:
            return np.zeros((0, 3)), np.zeros(0, np.int64)
        u, t, row = gap_rows(kept_rows, ratio)
        pred, prob = self.predict(sparse.range, ratio)  # (T, G, W)
        width = sparse.range.shape[1]
        ts = np.arange(1, ratio) / ratio
        az = virtual_azimuth(sparse.azimuth, ts, width)  # (T, G, W)
        # gap-major order as gap_rows: (G, T, W) -> (J, W)
        pred = pred.transpose(1, 0, 2).reshape(-1, width)
        prob = prob.transpose(1, 0, 2).reshape(-1, width)
        az = az.transpose(1, 0, 2).reshape(-1, width)
        thr = self.threshold if threshold is None else threshold
        emit = prob > thr
        if self.veto_bridges:
            emit &= ~_bridges(sparse.range, pred, u, width)
        jj, cc = np.nonzero(emit)
        tj = t[jj]
        elev = ((1 - tj) * kept_cones.elevation_deg[u[jj]]
                + tj * kept_cones.elevation_deg[u[jj] + 1])
        z0 = (1 - tj) * kept_cones.z0[u[jj]] + tj * kept_cones.z0[u[jj] + 1]
        pts = points_on_cones(pred[jj, cc].astype(np.float64), az[jj, cc], elev, z0)
        return pts.reshape(-1, 3), row[jj]


def _bridges(kept: np.ndarray, pred: np.ndarray, gap: np.ndarray, width: int) -> np.ndarray:
    """(J, W) bool: virtual pixels at a depth discontinuity whose range is on none of the
    surfaces around them — a ghost bridging them. The neighbourhood is the kept pixels
    above and below in columns c-1..c+1 (azimuth wraps); a discontinuity is a spread of
    their ranges over max(1 m, 10 % of the nearest) (the baseline's edge rule); "on a
    surface" is within max(0.3 m, 3 %) of one of them.

    Args:
        kept: (K, W) kept ranges (NaN where empty); pred: (J, W) predicted ranges of the
            virtual rows; gap: (J,) gap index of each virtual row.
    """
    rows = np.stack([np.roll(kept[gap + d], s, axis=1) for d in (0, 1) for s in (-1, 0, 1)])
    with np.errstate(invalid="ignore"):
        near, far = np.fmin.reduce(rows, axis=0), np.fmax.reduce(rows, axis=0)
        edge = (far - near) > np.maximum(1.0, 0.1 * near)
        tol = np.maximum(0.3, 0.03 * pred)
        on_surface = (np.abs(rows - pred[None]) <= tol[None]).any(axis=0)
    return edge & ~on_surface
