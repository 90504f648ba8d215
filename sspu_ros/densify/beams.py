"""LiDAR-native densification: new points on virtual beams between the real ones.

With a beam interpolator (``kind = "beams"``, e.g. ``sspu_lidar_x4``) the densifier does
not upsample point patches; it works on the scan's range image:

1. **structure**: the beam (row) of every point and each beam's elevation cone
   (:func:`sspu_ros.geometry.scan_structure.scan_structure`: the driver's ``ring`` /
   ``channel`` field, an organized cloud's rows, KITTI storage order, or a sensor preset);
   a scan whose structure cannot be recovered raises
   :class:`~sspu_ros.geometry.scan_structure.ScanStructureError` (the caller falls back to
   point patches);
2. **which gaps**: a virtual pixel (gap between rows u and u+1, column c) is wanted where
   the real pixel above or below it is one of the *selected* points (the mode's selection,
   :func:`sspu_ros.densify.densifier.densify_points`);
3. **one network call** on the wanted gap pixels only (their windows gathered in numpy,
   :func:`sspu_ros.geometry.range_window.gather_pixel_windows`), so the cost grows with
   what is densified: ``objects`` mode runs the network on a fraction of the scan;
4. **emit** the wanted virtual pixels whose probability exceeds the threshold (optionally
   minus the bridge veto), on the cone interpolated between the two rows' cones (elevation
   and apex height linear in t) at the azimuth interpolated between the two pixels.

Sources of each generated point (for the codec's intensity interpolation): the real
pixels above and below it in its column (one of them repeated when the other is empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry.beams import points_on_cones
from ..geometry.range_window import bridge_mask, smooth_steps
from ..geometry.scan_structure import ScanStructure, beam_field, scan_structure

__all__ = ["ScanHints", "densify_beams", "structure_of"]


@dataclass(frozen=True)
class ScanHints:
    """What a message says about the scan's beams, beside the points themselves.

    Attributes:
        beam: (N,) the driver's per-point beam field of the (finite) points, or None.
        beam_name: that field's name (``ring``, ``channel`` ...).
        organized: (height, width) of an organized cloud (height > 1), or None.
        flat_index: (N,) each (finite) point's index in the organized grid.
    """

    beam: np.ndarray | None = None
    beam_name: str = "ring"
    organized: tuple[int, int] | None = None
    flat_index: np.ndarray | None = None

    @classmethod
    def from_fields(cls, points: np.ndarray | None, valid: np.ndarray | None = None,
                    height: int = 1, width: int = 0) -> ScanHints:
        """Hints from a structured array of all points (a decoded PointCloud2's
        ``points``), ``valid`` the finite ones (the densifier's input points)."""
        hints = cls()
        name = beam_field(points.dtype.names) if points is not None and points.dtype.names \
            else None
        if name is not None:  # only the beam column is copied (per-scan path)
            col = points[name] if valid is None else points[name][valid]
            hints = cls.from_attributes({name: col})
        if height > 1 and width > 0:
            flat = np.flatnonzero(valid) if valid is not None else None
            hints = cls(hints.beam, hints.beam_name, (int(height), int(width)), flat)
        return hints

    @classmethod
    def from_attributes(cls, attributes) -> ScanHints:
        """Hints of per-point columns by name (a point-cloud file's attributes, a
        message's fields): the first beam field (``ring``, ``channel`` ...), as float."""
        name = beam_field(attributes)
        if name is None:
            return cls()
        col = np.asarray(attributes[name])
        return cls(np.asarray(col, np.float64).reshape(len(col), -1)[:, 0], name)

    @classmethod
    def from_decoded(cls, cloud) -> ScanHints:
        """Hints of a :class:`~sspu_ros.io.pointcloud2.DecodedCloud`."""
        return cls.from_fields(cloud.points, cloud.valid, cloud.height, cloud.width)


def structure_of(xyz: np.ndarray, hints: ScanHints | None,
                 params: Mapping[str, Any]) -> ScanStructure:
    """The scan's beam structure (``lidar.sensor``, ``lidar.columns``, ``lidar.min_beams``);
    raises ScanStructureError when none can be recovered."""
    hints = hints or ScanHints()
    columns = int(params.get("lidar.columns", 0)) or None
    return scan_structure(xyz, beam=hints.beam, beam_name=hints.beam_name,
                          organized=hints.organized, flat_index=hints.flat_index,
                          sensor=str(params.get("lidar.sensor", "auto")), columns=columns,
                          min_beams=int(params.get("lidar.min_beams", 8)))


def densify_beams(xyz: np.ndarray, structure: ScanStructure, interp, selected: np.ndarray,
                  *, threshold: float | None = None, veto_bridges: bool | None = None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Virtual-beam points next to the ``selected`` points.

    Args:
        xyz: (N, 3) float32 points of the scan (the structure's points).
        structure: their beam structure (rows, elevation cones, columns).
        interp: a beam interpolator (``predict_pixels``, ``ratio``, ``threshold``,
            ``veto_bridges``).
        selected: (S,) indices of the points to densify around.
        threshold, veto_bridges: override the interpolator's (None: its own).

    Returns:
        generated (M, 3) float32, sources (M, 3) int64 point indices (above, below, the
        nearer of the two), and the number of wanted pixels the bridge veto dropped.
    """
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), 0)
    if structure.n_rows < 2 or selected.size == 0:
        return empty
    image = structure.range_image(xyz)
    is_sel = np.zeros(len(xyz), dtype=bool)
    is_sel[selected] = True
    sel_px = (image.index >= 0) & is_sel[np.maximum(image.index, 0)]  # (H, W)
    uj, col = np.nonzero(sel_px[:-1] | sel_px[1:])  # wanted gap pixels (P,)
    if uj.size == 0:
        return empty
    pred, prob = interp.predict_pixels(image.range, uj, col)  # (T, P): wanted pixels only
    veto = getattr(interp, "veto_bridges", False) if veto_bridges is None else veto_bridges
    if threshold is not None:
        thr = float(threshold)
    elif hasattr(interp, "emit_threshold"):
        thr = interp.emit_threshold(bool(veto))
    else:
        thr = interp.threshold
    want = prob > thr
    n_veto = 0
    if veto:
        w = image.range.shape[1]
        around = np.stack([image.range[uj + d, (col + s) % w]
                           for d in (0, 1) for s in (-1, 0, 1)])  # (6, P)
        bridge = bridge_mask(around[:, None, :], pred)  # (T, P)
        bridge &= ~smooth_steps(image.range, uj, col)[None]  # a plane's far steps: no edge
        n_veto = int((want & bridge).sum())
        want &= ~bridge
    tj, pj = np.nonzero(want)
    uj, col = uj[pj], col[pj]
    t = (tj + 1) / interp.ratio
    rng = pred[tj, pj].astype(np.float64)
    ia, ib = image.index[uj, col], image.index[uj + 1, col]
    aa, ab = image.azimuth[uj, col], image.azimuth[uj + 1, col]
    centre = (col + 0.5) / structure.columns * 2 * np.pi - np.pi
    with np.errstate(invalid="ignore"):
        both = aa + np.angle(np.exp(1j * (ab - aa))) * t
    az = np.where(np.isfinite(both), both,
                  np.where(np.isfinite(aa), aa, np.where(np.isfinite(ab), ab, centre)))
    elev = (1 - t) * structure.elevation_deg[uj] + t * structure.elevation_deg[uj + 1]
    z0 = (1 - t) * structure.z0[uj] + t * structure.z0[uj + 1]
    pts = points_on_cones(rng, az, elev, z0).reshape(-1, 3).astype(np.float32)
    ia = np.where(ia >= 0, ia, ib)  # at least one exists: the gap was wanted through it
    ib = np.where(ib >= 0, ib, ia)
    nearer = np.where(t <= 0.5, ia, ib)
    sources = np.stack([ia, ib, nearer], axis=1).astype(np.int64)
    keep = np.isfinite(pts).all(axis=1) & (ia >= 0)
    return pts[keep], sources[keep], n_veto
