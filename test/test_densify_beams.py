"""The LiDAR-native path of the densifier (sspu_ros.densify.beams): virtual beams between
the real ones, only next to the selected points, sources above/below, the threshold, the
fall-back to point patches for scans without a beam structure, and the shipped model on a
simulated scan (its points lie between the rings and on the surfaces)."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sspu_ros.config import load_config
from sspu_ros.densify.beams import ScanHints, structure_of
from sspu_ros.densify.densifier import densify_points
from sspu_ros.geometry.beams import RingCones, interpolate_beams
from sspu_ros.geometry.knn_numpy import nearest_neighbors
from sspu_ros.geometry.range_window import gather_pixel_windows
from sspu_ros.runtime.midpoint import MidpointUpsampler
from sspu_ros.runtime.range_interpolation import BeamInterpolatorBase

MODELS = Path(__file__).resolve().parents[1] / "models"


class LinearBeams(BeamInterpolatorBase):
    """A stub beam interpolator: linear in range between the pixels right above and
    below (window channels 7 and 12 of the 4 x 5 window), probability 1 where both exist,
    0 elsewhere: the classical range-image interpolation without its edge rule."""

    backend = "stub"

    def __init__(self, ratio=4, threshold=0.5):
        self._init_common("linear-stub", ratio, threshold, 2, False)
        self.calls = []

    def _run(self, wr, wv, t):
        self.calls.append(wr.shape[1])
        up, lo = wr[7], wr[12]
        both = wv[7] * wv[12]
        pred = (1 - t[:, None]) * up[None] + t[:, None] * lo[None]
        return pred.astype(np.float32), np.broadcast_to(both, pred.shape).astype(np.float32)


def _wall_scan(beams=8, n_az=90, seed=0):
    """A spinning LiDAR inside a cylinder wall of radius 10..14 m (varying with azimuth),
    stored laser by laser, with its ring field; returns points (N, 3) and ring (N,)."""
    rng = np.random.default_rng(seed)
    elev = np.linspace(2.0, -12.0, beams)
    az = np.radians(np.arange(n_az) * 360.0 / n_az + 1.0)
    s = 12.0 + 2.0 * np.sin(3 * az)
    pts, ring = [], []
    for k, e in enumerate(elev):
        z = s * np.tan(np.radians(e))
        p = np.c_[s * np.cos(az), s * np.sin(az), z] + rng.normal(0, 1e-4, (n_az, 3))
        pts.append(p)
        ring.append(np.full(n_az, k))
    return np.concatenate(pts).astype(np.float32), np.concatenate(ring)


def _params(**kw):
    base = {"mode": "full", "crop.min_range": 0.5, "crop.max_range": 100.0,
            "crop.min_z": -50.0, "crop.max_z": 50.0, "lidar.columns": 90}
    return load_config(None, {**base, **kw})


def test_gather_pixel_windows_layout_on_a_hand_made_image():
    img = np.arange(4 * 6, dtype=np.float64).reshape(4, 6)
    img[1, 0] = np.nan
    wr, wv = gather_pixel_windows(img, np.array([0, 2]), np.array([0, 5]),
                                  rows_each_side=2, half_width=1)
    # gap 0, column 0: rows -1 (outside), 0, 1, 2; columns 5, 0, 1 (wrapping)
    np.testing.assert_array_equal(wr[:, 0], [0, 0, 0, 5, 0, 1, 11, np.nan_to_num(0), 7,
                                             17, 12, 13])
    np.testing.assert_array_equal(wv[:, 0], [0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    # gap 2, column 5: rows 1, 2, 3, 4 (outside); columns 4, 5, 0
    np.testing.assert_array_equal(wr[:, 1], [10, 11, 0, 16, 17, 12, 22, 23, 18, 0, 0, 0])
    np.testing.assert_array_equal(wv[:, 1], [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])


def test_full_mode_equals_range_image_interpolation_on_the_same_image():
    pts, ring = _wall_scan()
    interp = LinearBeams()
    params = _params()
    res = densify_points(pts, interp, params, hints=ScanHints(beam=ring))
    assert res.path == "beams" and res.structure == "field:ring" and not res.fallback
    st = structure_of(pts, ScanHints(beam=ring), params)
    img = st.range_image(pts)
    cones = RingCones(st.elevation_deg, st.z0, st.spread_deg, np.zeros(st.n_rows))
    want, _, src = interpolate_beams(img, np.arange(st.n_rows) * 4, cones,
                                     n_rows=4 * st.n_rows - 3, max_range_step=1e9,
                                     max_relative_step=1e9, return_sources=True)
    assert len(res.generated) == len(want) == 7 * 3 * 90
    d, i = nearest_neighbors(want, res.generated.astype(np.float64), k=1)
    assert d.max() < 1e-3  # the same points (float32 output)
    np.testing.assert_array_equal(np.sort(res.sources[:, :2], axis=1),
                                  np.sort(src[i.ravel()], axis=1))
    # every generated point between its two beams (elevations top first, decreasing)
    e = np.degrees(np.arctan2(res.generated[:, 2], np.hypot(*res.generated[:, :2].T)))
    upper = st.elevation_deg[st.rows[res.sources[:, 0]]]
    lower = st.elevation_deg[st.rows[res.sources[:, 1]]]
    assert ((e < upper) & (e > lower)).all()
    # the wall is a ruled surface: virtual points lie on it (horizontal distance)
    s_true = 12.0 + 2.0 * np.sin(3 * np.arctan2(res.generated[:, 1], res.generated[:, 0]))
    assert np.abs(np.hypot(*res.generated[:, :2].T) - s_true).max() < 0.05


def test_only_gaps_next_to_selected_points_and_the_threshold():
    pts, ring = _wall_scan()
    interp = LinearBeams()
    params = _params(mode="roi", **{"roi.boxes": [0.0, 20.0, -20.0, 20.0, -1.0, 10.0]})
    res = densify_points(pts, interp, params, hints=ScanHints(beam=ring))
    sel = np.zeros(len(pts), bool)
    sel[res.selected] = True
    assert sel.sum() == ((pts[:, 0] >= 0) & (pts[:, 2] >= -1.0)).sum() > 0
    # every generated point has a selected pixel above or below it
    assert (sel[res.sources[:, 0]] | sel[res.sources[:, 1]]).all()
    assert len(res.generated) < 0.5 * 7 * 3 * 90
    assert interp.calls[-1] < 7 * 90  # the network saw only the wanted gap pixels
    none = densify_points(pts, interp, {**params, "lidar.threshold": 1.0},
                          hints=ScanHints(beam=ring))
    assert none.generated.shape == (0, 3) and none.n_selected == res.n_selected
    # ratio 2: one virtual beam per gap, at t = 1/2
    half = densify_points(pts, LinearBeams(ratio=2), params, hints=ScanHints(beam=ring))
    assert len(half.generated) * 3 == len(res.generated)


def test_no_beam_structure_falls_back_to_point_patches():
    rng = np.random.default_rng(0)
    blob = (rng.normal(0, 0.5, (400, 3)) + [8.0, 0.0, 0.0]).astype(np.float32)  # no beams
    params = _params(mode="full", **{"ground.enabled": False})
    interp = LinearBeams()
    alone = densify_points(blob, interp, params)
    assert alone.fallback.startswith("no beam structure") and len(alone.generated) == 0
    interp.fallback = MidpointUpsampler(4)
    res = densify_points(blob, interp, params)
    assert res.fallback and res.path == "patches" and len(res.generated) > 0
    direct = densify_points(blob, MidpointUpsampler(4), params)
    np.testing.assert_array_equal(res.generated, direct.generated)


def test_hints_from_a_decoded_organized_cloud_with_a_ring_field():
    from sspu_ros.io.bags import typestore
    from sspu_ros.io.pointcloud2 import decode, encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    pts, ring = _wall_scan(beams=4, n_az=8)
    arr = np.zeros(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("ring", "u2")])
    arr["x"], arr["y"], arr["z"] = pts.T
    arr["ring"] = ring
    arr["x"][5] = np.nan  # one point without a return
    store = typestore()
    enc = encode_structured(arr)
    enc.height, enc.width = 4, 8
    enc.row_step = 8 * enc.point_step
    msg = to_pointcloud2(enc, store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="l"),
        store.types["sensor_msgs/msg/PointCloud2"], store.types["sensor_msgs/msg/PointField"])
    cloud = decode(msg)
    hints = ScanHints.from_decoded(cloud)
    assert hints.beam_name == "ring" and hints.organized == (4, 8)
    np.testing.assert_array_equal(hints.beam, np.delete(ring, 5))
    np.testing.assert_array_equal(hints.flat_index, np.delete(np.arange(32), 5))
    assert ScanHints.from_attributes({"intensity": np.zeros(3)}) == ScanHints()


@pytest.mark.skipif(not (MODELS / "sspu_lidar_x4.pt").is_file(), reason="no shipped model")
def test_shipped_model_fills_between_the_rings_of_a_simulated_scan():
    from sspu_ros.runtime.loading import load_upsampler
    from sspu_ros.simulation.lidar_sim import procedural_scene, simulate_scan

    scene = procedural_scene(3, n_objects=10, max_distance=25.0)
    full = simulate_scan(scene, beams=64, azimuth_step_deg=0.36, seed=1)
    keep = full.ring % 4 == 0  # the 16-beam input, 1.8 deg apart
    sparse = full.select(keep)
    params = load_config(None, {"mode": "full", "lidar.columns": 1000})
    model = load_upsampler("sspu_lidar_x4", None, config=params)
    res = densify_points(sparse.xyz, model, params, hints=ScanHints(beam=sparse.ring // 4))
    assert res.path == "beams" and len(res.generated) > 0.25 * len(sparse)
    # on the virtual beams: each generated point between two adjacent real beams
    e = np.degrees(np.arctan2(res.generated[:, 2], np.hypot(*res.generated[:, :2].T)))
    real = full.elevations_deg[::4]
    gap = np.searchsorted(-real, -e)  # real beam below each point
    assert ((gap > 0) & (gap < len(real))).all()
    assert np.all(np.minimum(real[gap - 1] - e, e - real[np.minimum(gap, 15)]) > 0.15)
    # accuracy against the true 64-beam scan: generated points lie on the scene
    d, _ = nearest_neighbors(full.xyz.astype(np.float64), res.generated.astype(np.float64),
                             k=1)
    assert np.median(d) < 0.05 and np.mean(d < 0.3) > 0.95
    # completeness: the dropped beams' points are nearer to input + generated
    dropped = full.xyz[~keep].astype(np.float64)
    before, _ = nearest_neighbors(sparse.xyz.astype(np.float64), dropped, k=1)
    after, _ = nearest_neighbors(np.concatenate([sparse.xyz, res.generated]).astype(
        np.float64), dropped, k=1)
    assert np.median(after) < 0.8 * np.median(before)


def test_objects_mode_connects_the_rings_of_a_far_object_on_a_sparse_scan():
    from sspu_ros.densify.densifier import _ring_scale, _select_groups
    from sspu_ros.geometry.scan_structure import ScanStructure

    def structure(gap_deg, n=16):
        elev = -gap_deg * np.arange(n)
        return ScanStructure(np.zeros(1, np.int64), elev, np.zeros(n), 2048, "test")

    assert _ring_scale(structure(0.42)) == pytest.approx(0.4 / 0.42)  # 64-beam KITTI
    assert _ring_scale(structure(1.8)) == 0.25  # 16 beams: clipped at 1/4
    assert _ring_scale(structure(0.2)) == 1.0
    # a car-sized object at 35 m seen by two rings 0.9 m apart (16 beams), ground at -1.7
    y = np.linspace(-1.0, 1.0, 40)
    car = np.concatenate([np.c_[np.full(40, 35.0), y, np.full(40, z)] for z in (-1.2, -0.3)])
    params = load_config(None, {"mode": "objects"})
    plane = np.array([0.0, 0.0, -1.7])
    _, _, _, counts, groups = _select_groups(car.astype(np.float32), params, plane)
    assert groups.size == 0  # each ring alone is too flat to be an object
    _, _, _, counts, groups = _select_groups(car.astype(np.float32), params, plane,
                                             vertical_scale=0.25)
    assert groups.size == 1 and counts[groups[0]] == 80


def test_smooth_steps_tell_a_ground_plane_from_a_car_in_front_of_a_wall():
    from sspu_ros.geometry.range_window import bridge_mask, smooth_steps

    # column ranges of 5 beams looking down at a flat ground 1.7 m below: 1/r linear-ish
    elev = np.radians([-3.0, -4.8, -6.6, -8.4, -10.2])
    ground = 1.7 / np.sin(-elev)  # 32.5, 20.3, 14.8, 11.6, 9.6 m: large jumps, no edge
    car_wall = np.array([30.0, 30.0, 12.0, 12.0, 12.0])  # wall behind, car in front
    img = np.stack([ground, car_wall], axis=1).repeat(3, axis=1)  # (5, 6): columns 0-2, 3-5
    gap = np.array([1, 1])
    col = np.array([1, 4])
    np.testing.assert_array_equal(smooth_steps(img, gap, col), [True, False])
    # both gaps look like an edge to the spread rule; only the car/wall one is a bridge
    around = np.stack([img[gap + d, (col + s) % 6] for d in (0, 1) for s in (-1, 0, 1)])
    mid = np.array([17.0, 20.0])  # a point between the two returns of each gap
    edge = bridge_mask(around, mid)
    assert edge.all()
    np.testing.assert_array_equal(edge & ~smooth_steps(img, gap, col), [False, True])
    # a missing row: not known to be smooth
    img[0, 0] = np.nan
    assert not smooth_steps(img, gap, col)[0]


_BEAM_VALUES = st.one_of(
    st.integers(-(2**40), 2**40).map(float),
    st.integers(0, 70).map(float),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -0.0, 2**31 - 1.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_outside_beam_hints_never_crash_the_beam_path(data):
    """A driver's ring field and organized size are outside input: any values give either
    the beam path or the patch fallback, finite points and valid source indices."""
    n = data.draw(st.integers(0, 400), label="points")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    kind = data.draw(st.sampled_from(["scan", "blob", "line"]), label="kind")
    if kind == "scan":  # a real-looking 8-beam sweep, then hints of any quality
        pts, ring = _wall_scan(beams=8, n_az=max(1, n // 8))
        pts, ring = pts[:n], ring[:n].astype(np.float64)
        n = len(pts)
    elif kind == "blob":
        pts = (rng.normal(0, 3, (n, 3)) + [10, 0, 0]).astype(np.float32)
        ring = rng.integers(0, 16, n).astype(np.float64)
    else:
        pts = np.c_[np.linspace(1, 30, n), np.zeros(n), np.zeros(n)].astype(np.float32)
        ring = np.zeros(n)
    if data.draw(st.booleans(), label="garbage ring values") and n:
        k = data.draw(st.integers(1, n), label="how many")
        idx = rng.choice(n, k, replace=False)
        ring[idx] = data.draw(st.lists(_BEAM_VALUES, min_size=k, max_size=k), label="values")
    organized = None
    flat = None
    if data.draw(st.booleans(), label="organized") and n:
        h = data.draw(st.integers(1, 64), label="height")
        w = max(1, -(-n // h))
        organized, flat = (h, w), np.sort(rng.choice(h * w, n, replace=False))
    hints = ScanHints(beam=ring if data.draw(st.booleans(), label="ring field") else None,
                      organized=organized, flat_index=flat)
    interp = LinearBeams()
    interp.fallback = MidpointUpsampler(4)
    res = densify_points(pts, interp, _params(**{"lidar.columns": 64}), hints=hints)
    assert res.path in ("beams", "patches")
    assert (res.path == "patches") == bool(res.fallback)
    assert np.isfinite(res.generated).all()
    assert res.sources.shape == (len(res.generated), 3)
    assert ((res.sources >= 0) & (res.sources < max(n, 1))).all()
