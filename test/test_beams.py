"""Ring recovery, ring cones, range images and range-image beam interpolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sspu_ros.geometry.beams import (
    RingCones,
    assign_rows,
    fit_ring_cones,
    interpolate_beams,
    points_on_cones,
    range_image,
    recover_rings,
)

KITTI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti" / "object"
DEV_FRAMES = ("000000", "000001", "000002", "000003", "000010")


def _laser_by_laser_scan(elev_deg, z0, *, points_per_ring=300, seed=0):
    """A synthetic scan stored like KITTI: ring by ring, each sweeping counter-clockwise
    from just after the front (azimuth 0+) through the back (±180°) to just before 0."""
    rng = np.random.default_rng(seed)
    rings, pts = [], []
    for k, (e, h) in enumerate(zip(elev_deg, z0, strict=True)):
        az = np.sort(rng.uniform(0.001, 2 * np.pi - 0.001, points_per_ring))
        s = rng.uniform(3.0, 60.0, points_per_ring)
        z = h + s * np.tan(np.radians(e))
        pts.append(np.column_stack([s * np.cos(az), s * np.sin(az), z]))
        rings.append(np.full(points_per_ring, k))
    return np.concatenate(pts), np.concatenate(rings)


def test_synthetic_laser_by_laser_scan_recovers_rings_and_cones_exactly():
    elev = np.array([2.0, 1.5, 0.7, -0.4, -3.0, -8.0, -15.0, -24.0])
    z0 = np.array([0.21, 0.2, 0.2, 0.19, 0.12, 0.12, 0.11, 0.1])
    xyz, truth = _laser_by_laser_scan(elev, z0)
    rings = recover_rings(xyz)
    np.testing.assert_array_equal(rings, truth)  # 8 rings, not split at the back wrap
    cones = fit_ring_cones(xyz, rings)
    np.testing.assert_allclose(cones.elevation_deg, elev, atol=1e-9)
    np.testing.assert_allclose(cones.z0, z0, atol=1e-9)
    assert cones.spread_deg.max() < 1e-9
    np.testing.assert_array_equal(cones.count, 300)
    np.testing.assert_array_equal(assign_rows(xyz, cones), truth)


def test_a_split_at_the_back_wrap_would_give_one_ring_more():
    xyz, _ = _laser_by_laser_scan([1.0, -1.0], [0.0, 0.0], points_per_ring=100)
    y = xyz[:, 1]
    back = (xyz[1:, 0] < 0) & (y[:-1] > 0) & (y[1:] <= 0)
    assert back.sum() == 2 and recover_rings(xyz).max() + 1 == 2


def test_fit_ring_cones_refuses_rings_without_points():
    xyz, rings = _laser_by_laser_scan([1.0, -1.0], [0.0, 0.0], points_per_ring=50)
    with pytest.raises(ValueError, match=r"rings \[2\] have fewer"):
        fit_ring_cones(xyz, rings, n_rings=3)


@pytest.mark.parametrize("frame", DEV_FRAMES)
def test_real_kitti_scan_has_64_monotone_rings_on_thin_cones(frame):
    path = KITTI / "velodyne" / f"{frame}.bin"
    if not path.is_file():
        pytest.skip(f"KITTI dev scan {path} not found (clone the repo beside ../shared)")
    from sspu_ros.io.kitti import read_velodyne

    xyz = read_velodyne(path)
    rings = recover_rings(xyz)
    assert rings.max() + 1 == 64
    assert (np.diff(rings) >= 0).all()
    cones = fit_ring_cones(xyz, rings)
    assert (np.diff(cones.elevation_deg) < 0).all()  # top beam first, strictly down
    assert 1.5 < cones.elevation_deg[0] < 2.5 and -25.5 < cones.elevation_deg[-1] < -24.5
    assert cones.spread_deg.max() < 0.005  # ≈0.002° as the guide says
    assert (assign_rows(xyz, cones) == rings).mean() > 0.9999


def test_range_image_keeps_the_nearest_point_per_pixel():
    # Two points in the same pixel (row 1, azimuth ~0), one alone in row 0 behind.
    xyz = np.array([[10.0, 0.01, 0.0], [5.0, 0.004, 0.0], [-3.0, -0.001, 4.0]])
    img = range_image(xyz, np.array([1, 1, 0]), n_rows=2, width=8)
    col_front = int(np.floor((0 + np.pi) / (2 * np.pi) * 8))  # 4
    assert img.valid.sum() == 2
    assert img.range[1, col_front] == pytest.approx(np.linalg.norm(xyz[1]))
    assert img.index[1, col_front] == 1
    assert img.azimuth[1, col_front] == pytest.approx(np.arctan2(0.004, 5.0))
    assert img.index[0, 0] == 2 and img.range[0, 0] == pytest.approx(5.0)  # az -> col 0


def _one_column_image(ranges_top, ranges_bottom, azimuths):
    from sspu_ros.geometry.beams import RangeImage

    r = np.array([ranges_top, ranges_bottom], dtype=np.float64)
    a = np.array([azimuths, azimuths], dtype=np.float64)
    a[~np.isfinite(r)] = np.nan
    return RangeImage(r, a, np.arange(r.size).reshape(r.shape))


def test_interpolate_beams_tiny_exact_case():
    # Kept rows 0 and 4 at elevations 0° and -4° (apex at the origin); 4 columns:
    # a smooth one, an edge (10 m vs 14 m: over the 1 m threshold), an empty neighbour,
    # and a 0.9 m step.
    sparse = _one_column_image([10.0, 10.0, 10.0, 10.0], [10.8, 14.0, np.nan, 10.9],
                               [0.1, 0.2, 0.3, -0.4])
    cones = RingCones(np.array([0.0, -4.0]), np.zeros(2), np.zeros(2), np.ones(2))
    pts, rows = interpolate_beams(sparse, np.array([0, 4]), cones, n_rows=5)
    assert sorted(rows.tolist()) == [1, 1, 2, 2, 3, 3]
    first = np.isclose(np.arctan2(pts[:, 1], pts[:, 0]), 0.1)
    assert first.sum() == 3
    for j, r in zip((1, 2, 3), (10.2, 10.4, 10.6), strict=True):
        e = np.radians(-1.0 * j)
        want = r * np.array([np.cos(e) * np.cos(0.1), np.cos(e) * np.sin(0.1), np.sin(e)])
        got = pts[first & (rows == j)]
        np.testing.assert_allclose(got[0], want, atol=1e-12)
    step = np.isclose(np.arctan2(pts[:, 1], pts[:, 0]), -0.4)
    np.testing.assert_allclose(np.linalg.norm(pts[step], axis=1), [10.225, 10.45, 10.675])
    _, _, sources = interpolate_beams(sparse, np.array([0, 4]), cones, n_rows=5,
                                      return_sources=True)
    assert sorted(map(tuple, sources.tolist())) == [(0, 4)] * 3 + [(3, 7)] * 3


def test_interpolate_beams_circular_azimuth_and_threshold():
    sparse = _one_column_image([10.0, 10.0], [10.5, 12.0], [np.pi - 0.01, np.pi - 0.02])
    sparse.azimuth[1] = [-np.pi + 0.01, np.pi - 0.02]  # pixel pair straddling ±180°
    cones = RingCones(np.array([0.0, -2.0]), np.zeros(2), np.zeros(2), np.ones(2))
    pts, rows = interpolate_beams(sparse, np.array([0, 2]), cones, n_rows=3,
                                  max_range_step=1.0, max_relative_step=0.0)
    assert rows.tolist() == [1]  # the 2 m step is dropped
    assert abs(abs(np.arctan2(pts[0, 1], pts[0, 0])) - np.pi) < 1e-12  # mean of ±(π-0.01)


def test_points_on_cones_have_the_asked_range_and_lie_on_the_cone():
    rng = np.random.default_rng(1)
    r = rng.uniform(2, 80, 200)
    az = rng.uniform(-np.pi, np.pi, 200)
    e = rng.uniform(-25, 3, 200)
    z0 = rng.uniform(0.0, 0.3, 200)
    p = points_on_cones(r, az, e, z0)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), r, rtol=1e-12)
    s = np.hypot(p[:, 0], p[:, 1])
    np.testing.assert_allclose(p[:, 2], z0 + s * np.tan(np.radians(e)), atol=1e-9)
    np.testing.assert_allclose(np.arctan2(p[:, 1], p[:, 0]), az, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n_rings=st.integers(1, 12), per_ring=st.integers(3, 60), seed=st.integers(0, 10_000))
def test_ring_recovery_is_exact_for_any_laser_by_laser_scan(n_rings, per_ring, seed):
    elev = np.linspace(2.0, -24.0, n_rings)
    xyz, truth = _laser_by_laser_scan(elev, np.full(n_rings, 0.2), points_per_ring=per_ring,
                                      seed=seed)
    # The stored layout: every ring after the first starts in the front-left quadrant (x > 0,
    # y >= 0) and the ring before it ends right of the car (y < 0), so the wrap is visible
    # (a ring of a few random points may not sweep that far, e.g. 3 points ending at +52°).
    starts = np.flatnonzero(np.diff(truth)) + 1
    if ((xyz[starts, 0] <= 0) | (xyz[starts, 1] < 0) | (xyz[starts - 1, 1] >= 0)).any():
        return  # not the stored layout
    np.testing.assert_array_equal(recover_rings(xyz), truth)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_interpolated_ranges_lie_between_their_neighbours(seed):
    rng = np.random.default_rng(seed)
    r = rng.uniform(2.0, 50.0, (3, 16))
    r[rng.random(r.shape) < 0.2] = np.nan
    a = np.broadcast_to(np.linspace(-3, 3, 16), r.shape).copy()
    from sspu_ros.geometry.beams import RangeImage

    img = RangeImage(r, a, np.arange(r.size).reshape(r.shape))
    cones = RingCones(np.array([1.0, -3.0, -9.0]), np.array([0.2, 0.15, 0.1]), np.zeros(3),
                      np.ones(3))
    pts, rows, src = interpolate_beams(img, np.array([0, 4, 8]), cones, n_rows=9,
                                       return_sources=True)
    rr = np.linalg.norm(pts, axis=1)
    lo = np.minimum(r.ravel()[src[:, 0]], r.ravel()[src[:, 1]])
    hi = np.maximum(r.ravel()[src[:, 0]], r.ravel()[src[:, 1]])
    assert ((rr >= lo - 1e-9) & (rr <= hi + 1e-9)).all()
    assert set(rows.tolist()) <= {1, 2, 3, 5, 6, 7}
    assert (hi - lo <= np.maximum(1.0, 0.1 * lo)).all()
