"""The beam structure of a spinning LiDAR scan, for any sensor: the beam (range-image row)
of every point, each beam's elevation, and the scan's range image with its validity mask.

Where the structure comes from (:func:`scan_structure`, ``sensor="auto"``), the first that
applies:

1. **the driver's beam field** (``ring``: Velodyne, Ouster, Hesai drivers; ``channel``,
   ``laser_id``, ``line`` ...): beam = field value;
2. **an organized cloud** (PointCloud2 ``height`` = beams, as Ouster drivers publish): the
   row of the point in the cloud;
3. **the storage order** of a scan stored laser by laser (KITTI ``.bin``): a new ring
   where the azimuth wraps at the front (:func:`sspu_ros.geometry.beams.recover_rings`);
4. **a sensor preset** (``sensor="vlp16"`` ...): the nominal beam elevation nearest to
   each point's elevation.

Rows are then ordered top beam first by the beams' measured elevations (drivers number
their beams in either direction, Velodyne's raw laser ids even interleaved), beams without
a single return are dropped (so rows that are adjacent are adjacent beams of the sensor
only when every beam has returns; :attr:`ScanStructure.missing_beams` says how many were
dropped), and the result is checked: at least ``min_beams`` beams, each a thin elevation
cone. A scan that passes none of these raises :class:`ScanStructureError` saying why; the
densifier then falls back to point patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .beams import RangeImage, fit_ring_cones, range_image, recover_rings

__all__ = [
    "BEAM_FIELDS",
    "SENSORS",
    "ScanStructure",
    "ScanStructureError",
    "SensorPreset",
    "beam_field",
    "scan_structure",
]

#: Per-point beam fields of common drivers, in order of preference.
BEAM_FIELDS = ("ring", "channel", "laser_id", "laser", "line", "beam", "row")


class ScanStructureError(ValueError):
    """The scan's beam structure cannot be recovered; the message says why."""


@dataclass(frozen=True)
class SensorPreset:
    """A spinning LiDAR's nominal geometry: beam elevations (degrees, top beam first) and
    azimuth columns per revolution (at 10 Hz). Nominal: calibrated sensors differ by
    fractions of a degree, which is why measured data take precedence."""

    name: str
    elevations_deg: tuple[float, ...]
    columns: int
    description: str

    @property
    def beams(self) -> int:
        return len(self.elevations_deg)


def _uniform(top: float, bottom: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linspace(top, bottom, n))


_VLP32C = (15.0, 10.333, 7.0, 4.667, 3.333, 2.333, 1.667, 1.333, 1.0, 0.667, 0.333, 0.0,
           -0.333, -0.667, -1.0, -1.333, -1.667, -2.0, -2.333, -2.667, -3.0, -3.333, -3.667,
           -4.0, -4.667, -5.333, -6.148, -7.254, -8.843, -11.31, -15.639, -25.0)

#: Sensor presets by name (``lidar sensor`` option); ``auto`` uses none.
SENSORS: Mapping[str, SensorPreset] = {p.name: p for p in (
    SensorPreset("hdl64e", _uniform(2.0, -8.33, 32) + _uniform(-8.83, -24.33, 32), 2048,
                 "Velodyne HDL-64E (KITTI): 64 beams, +2.0 to -24.3 deg in two blocks"),
    SensorPreset("hdl32e", _uniform(10.67, -30.67, 32), 2048,
                 "Velodyne HDL-32E: 32 beams, +10.7 to -30.7 deg"),
    SensorPreset("vlp16", _uniform(15.0, -15.0, 16), 1800,
                 "Velodyne VLP-16 / Puck: 16 beams, +15 to -15 deg, 2 deg apart"),
    SensorPreset("vlp32c", _VLP32C, 1800,
                 "Velodyne VLP-32C: 32 beams, +15 to -25 deg, dense near the horizon"),
    SensorPreset("os0-128", _uniform(45.0, -45.0, 128), 1024,
                 "Ouster OS0-128: 128 beams over 90 deg"),
    SensorPreset("os1-64", _uniform(22.5, -22.5, 64), 1024,
                 "Ouster OS1-64: 64 beams over 45 deg"),
    SensorPreset("os1-128", _uniform(22.5, -22.5, 128), 1024,
                 "Ouster OS1-128: 128 beams over 45 deg"),
    SensorPreset("os2-128", _uniform(11.25, -11.25, 128), 1024,
                 "Ouster OS2-128: 128 beams over 22.5 deg"),
    SensorPreset("hesai-xt32", _uniform(15.0, -16.0, 32), 2000,
                 "Hesai PandarXT-32: 32 beams, +15 to -16 deg, 1 deg apart"),
)}


@dataclass
class ScanStructure:
    """Beams of one scan.

    Attributes:
        rows: (N,) int64 beam row of every point (0 = top beam); -1 for points without one
            (no finite return, or outside every preset beam).
        elevation_deg: (H,) measured median elevation of each row, decreasing.
        spread_deg: (H,) median |elevation - row median| of each row's points.
        columns: W, azimuth columns of the range image.
        source: where the rows came from: ``field:<name>``, ``organized``,
            ``storage-order`` or ``preset:<sensor>``.
        missing_beams: beams of the source without any return (dropped rows).
        z0: (H,) apex height of each row's cone ``z = z0 + s tan(elevation)`` (metres;
            the lasers' vertical offsets in the sensor frame), zeros when not fitted.
    """

    rows: np.ndarray
    elevation_deg: np.ndarray
    spread_deg: np.ndarray
    columns: int
    source: str
    missing_beams: int = 0
    z0: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.z0 is None:
            self.z0 = np.zeros(len(self.elevation_deg))

    @property
    def n_rows(self) -> int:
        return len(self.elevation_deg)

    def range_image(self, points: np.ndarray) -> RangeImage:
        """(H, W) range image of ``points`` (the scan's own (N, 3+) points): nearest
        return per pixel; ``.valid`` is its validity mask."""
        keep = self.rows >= 0
        pts = np.asarray(points)[:, :3]
        image = range_image(pts[keep], self.rows[keep], self.n_rows, self.columns)
        if not keep.all():  # the image's indices refer to the scan's own points
            index = np.flatnonzero(keep)
            hit = image.index >= 0
            image.index[hit] = index[image.index[hit]]
        return image

    def summary(self) -> dict:
        return {"source": self.source, "beams": self.n_rows, "columns": self.columns,
                "missing_beams": self.missing_beams,
                "points_without_beam": int((self.rows < 0).sum()),
                "elevation_top_deg": round(float(self.elevation_deg[0]), 3),
                "elevation_bottom_deg": round(float(self.elevation_deg[-1]), 3),
                "spread_max_deg": round(float(self.spread_deg.max()), 4)}


def beam_field(names) -> str | None:
    """The first of :data:`BEAM_FIELDS` among ``names`` (case-insensitive), or None."""
    lower = {str(n).lower(): n for n in names}
    for f in BEAM_FIELDS:
        if f in lower:
            return lower[f]
    return None


def _elevation(pts: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1])))


def _order_rows(pts: np.ndarray, beam: np.ndarray, usable: np.ndarray, source: str,
                n_expected: int, columns: int, min_beams: int,
                max_spread_deg: float) -> ScanStructure:
    """Beam ids (any numbering, -1 = none) -> rows ordered top first, checked.

    Each beam's elevation is its cone fit (:func:`fit_ring_cones`: ``z = z0 + s tan e``,
    the apex offset included), its spread the median angular residual about the cone.
    Beams with fewer than 3 returns are dropped (their points get row -1)."""
    ids = np.where(usable, beam, -1)
    has = ids >= 0
    # any numbering (a driver's field is outside input: ids may be huge or sparse): number
    # the distinct ids 0..U-1 before counting
    _, ids_inv = np.unique(ids[has], return_inverse=True)
    ids = ids.copy()
    ids[has] = ids_inv.reshape(-1)
    counts = np.bincount(ids[has], minlength=1)
    present = np.flatnonzero(counts >= 3)
    if len(present) < min_beams:
        raise ScanStructureError(f"{source}: {len(present)} beam(s) with returns, fewer than "
                                 f"{min_beams}: not a multi-beam spinning LiDAR scan")
    dense = np.full(len(counts), -1, dtype=np.int64)
    dense[present] = np.arange(len(present))
    compact = np.where(ids >= 0, dense[np.maximum(ids, 0)], -1)
    ok = compact >= 0
    # the cones from at most ~16 k points (every k-th: each beam keeps its share; the fit
    # is a per-beam line, exact to well below a beam gap with a few hundred points)
    fit = np.flatnonzero(ok)
    if fit.size > 16384:
        fit = fit[::fit.size // 8192]
        fit = fit[np.bincount(compact[fit], minlength=len(present))[compact[fit]] >= 3]
    if np.bincount(compact[fit], minlength=len(present)).min() < 3:
        fit = np.flatnonzero(ok)  # a sparse beam lost its points to the stride
    cones = fit_ring_cones(pts[fit], compact[fit], len(present), min_points=3)
    rank = np.empty(len(present), dtype=np.int64)
    order = np.argsort(-cones.elevation_deg, kind="stable")
    rank[order] = np.arange(len(present))
    rows = np.where(ok, rank[np.maximum(compact, 0)], -1)
    spread = cones.spread_deg[order]
    if not np.median(spread) <= max_spread_deg:
        raise ScanStructureError(
            f"{source}: the beams are not thin elevation cones (median spread "
            f"{np.median(spread):.2f} deg > {max_spread_deg} deg)")
    # distinct beams: adjacent elevations further apart than the beams are thick (a flat
    # ground split into arbitrary "beams" fits a cone each, all at the same elevation)
    gaps = -np.diff(cones.elevation_deg[order])
    min_gap = max(0.05, 2.0 * float(np.median(spread)))
    if len(gaps) and not gaps.min() > min_gap:
        raise ScanStructureError(
            f"{source}: beams {int(gaps.argmin())} and {int(gaps.argmin()) + 1} have the "
            f"same elevation ({gaps.min():.3f} deg apart, need > {min_gap:.3f} deg): not "
            "one beam per id")
    return ScanStructure(rows, cones.elevation_deg[order], spread, columns, source,
                         missing_beams=max(0, n_expected - len(present)),
                         z0=cones.z0[order])


def scan_structure(points: np.ndarray, *, beam: np.ndarray | None = None,
                   beam_name: str = "ring", organized: tuple[int, int] | None = None,
                   flat_index: np.ndarray | None = None, sensor: str = "auto",
                   columns: int | None = None, min_beams: int = 8,
                   max_spread_deg: float = 0.5, min_range: float = 0.05) -> ScanStructure:
    """The beam structure of a scan (see the module docstring for the order of sources).

    Args:
        points: (N, 3+) points of one scan, in the driver's storage order.
        beam: (N,) the driver's per-point beam field, if any (its name in ``beam_name``).
        organized: (height, width) of an organized cloud (height > 1), with ``flat_index``
            (N,) each point's index in the height x width grid (default: 0..N-1).
        sensor: ``auto`` or a :data:`SENSORS` name (its elevations are the last resort;
            its column count the default ``columns``).
        columns: W of the range image (default: the preset's, else 2048).
        min_beams: fewest beams with returns for a valid structure.
        max_spread_deg: largest median angular spread of a beam about its elevation
            (checks a beam is one cone; HDL-64E rings measure ~0.01-0.05 deg).
        min_range: points closer than this (drivers publish 0,0,0 for no return) get no row.

    Raises:
        ScanStructureError: no source gives a valid structure (the reasons of all tried).
    """
    if sensor != "auto" and sensor not in SENSORS:
        raise ValueError(f"unknown sensor {sensor!r}; choose auto or one of "
                         f"{', '.join(SENSORS)}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"expected (N, 3+) points, got shape {pts.shape}")
    pts = pts[:, :3]
    preset = SENSORS.get(sensor)
    width = int(columns or (preset.columns if preset else 2048))
    usable = np.isfinite(pts).all(axis=1) & (np.linalg.norm(np.nan_to_num(pts), axis=1)
                                             >= min_range)
    reasons = []
    tries = []  # (source, beam ids, beams the source numbers)
    if beam is not None:
        b = np.asarray(beam)
        if b.shape != (len(pts),):
            raise ValueError(f"beam must have shape ({len(pts)},), got {b.shape}")
        b = np.asarray(b, dtype=np.float64)
        b = np.where(np.isfinite(b) & (b >= 0) & (b < 2**31), b, -1).astype(np.int64)
        n_ids = int(np.unique(b[b >= 0]).size)
        top = int(b.max(initial=-1)) + 1  # beams the driver numbers (if 0..B-1)
        tries.append((f"field:{beam_name}", b, top if top <= 4 * max(n_ids, 1) else n_ids))
    if organized is not None and organized[0] > 1:
        h, w = int(organized[0]), int(organized[1])
        idx = np.arange(len(pts)) if flat_index is None else np.asarray(flat_index, np.int64)
        if idx.shape != (len(pts),):
            raise ValueError(f"flat_index must have shape ({len(pts)},), got {idx.shape}")
        tries.append(("organized", idx // w, h))
        if columns is None and preset is None:
            width = w
    rings = recover_rings(pts) if len(pts) else np.zeros(0, np.int64)
    tries.append(("storage-order", rings, int(rings.max(initial=-1)) + 1))
    if preset is not None:
        tries.append((f"preset:{preset.name}", _nearest_beam(pts, preset), preset.beams))
    for source, ids, n_expected in tries:
        try:
            return _order_rows(pts, ids, usable, source, n_expected, width, min_beams,
                               max_spread_deg)
        except ScanStructureError as e:
            reasons.append(str(e))
    raise ScanStructureError("no beam structure: " + "; ".join(reasons) +
                             ("" if preset else "; give the sensor (a preset) or a ring field"))


def _nearest_beam(pts: np.ndarray, preset: SensorPreset) -> np.ndarray:
    """(N,) nearest nominal beam of each point by elevation; -1 beyond half a beam gap
    outside the field of view."""
    elev = np.asarray(preset.elevations_deg)[::-1]  # increasing for searchsorted
    e = _elevation(pts)
    hi = np.clip(np.searchsorted(elev, e), 1, len(elev) - 1)
    lo = hi - 1
    near = np.where(np.abs(e - elev[lo]) <= np.abs(e - elev[hi]), lo, hi)
    gap = np.diff(elev).min() if len(elev) > 1 else 1.0
    outside = (e < elev[0] - gap / 2) | (e > elev[-1] + gap / 2)
    return np.where(outside, -1, len(elev) - 1 - near).astype(np.int64)
