"""The ray-casting LiDAR simulator: ray-triangle hits, culling against brute force, scans
of known shapes, scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sspu_ros.geometry.beams import recover_rings
from sspu_ros.simulation.lidar_sim import (
    Scene,
    SceneObject,
    box_mesh,
    cylinder_mesh,
    hdl64_elevations,
    procedural_scene,
    ray_triangle_intersect,
    simulate_scan,
    vehicle_scene,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COARSE = {"azimuth_step_deg": 1.0}  # 360 columns instead of 2000: keeps the tests fast


def test_ray_hits_a_known_triangle_at_the_hand_computed_point():
    v0, v1, v2 = np.array([5.0, -1, -1]), np.array([5.0, 1, -1]), np.array([5.0, 0, 1])
    d = np.array([[1.0, 0.05, 0.05],   # hits (5, 0.25, 0.25): inside (|y| <= 0.375 there)
                  [1.0, 0.1, 0.05],    # (5, 0.5, 0.25): outside the slanted edge
                  [-1.0, 0.0, 0.0],    # pointing away: t < 0
                  [0.0, 1.0, 0.0],     # parallel to the triangle's plane
                  [2.0, 0.0, 0.0]])    # t in units of the direction's length
    rep = [np.broadcast_to(v, d.shape) for v in (v0, v1, v2)]
    t = ray_triangle_intersect(d, *rep)
    assert t[0] == pytest.approx(5.0)
    np.testing.assert_allclose(t[0] * d[0], [5.0, 0.25, 0.25])
    assert np.isinf(t[1:4]).all()
    assert t[4] == pytest.approx(2.5)
    # Both faces count: the reversed triangle gives the same hit.
    assert ray_triangle_intersect(d[:1], v0[None], v2[None], v1[None])[0] == pytest.approx(5.0)


def _brute_force_ranges(scene: Scene, step_deg: float) -> np.ndarray:
    el = np.radians(hdl64_elevations())
    az = np.arange(int(round(360 / step_deg))) * np.radians(step_deg)
    d = np.stack(np.broadcast_arrays(np.cos(el)[:, None] * np.cos(az),
                                     np.cos(el)[:, None] * np.sin(az), np.sin(el)[:, None]),
                 axis=-1).reshape(-1, 3)
    tri, _ = scene.triangles()
    rays = np.repeat(np.arange(len(d)), len(tri))
    t = ray_triangle_intersect(d[rays], *(np.tile(tri[:, k], (len(d), 1)) for k in range(3)))
    return np.sort(t.reshape(len(d), len(tri)).min(axis=1))


def test_culled_casting_equals_brute_force_all_rays_all_triangles():
    # A car-like mesh close by (large angular triangles: subdivided) and a cylinder across
    # the ±180° azimuth wrap behind the sensor.
    from sspu_ros.simulation.lidar_sim import _car_mesh

    car = SceneObject("car", *_car_mesh(4.5, 1.8, 1.6), np.array([3.5, 1.0, -1.73]), 0.6)
    pole = SceneObject("pole", *cylinder_mesh(0.4, 3.0, 12), np.array([-6.0, 0.0, -1.73]))
    scene = Scene([car, pole], ground_z=None)
    scan = simulate_scan(scene, range_noise=0.0, azimuth_step_deg=2.0)
    want = _brute_force_ranges(scene, 2.0)
    want = want[np.isfinite(want) & (want >= 0.9)]
    got = np.sort(np.linalg.norm(scan.xyz.astype(np.float64), axis=1))
    assert len(got) == len(want) > 250
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert set(np.unique(scan.object_id)) == {1, 2}


def test_single_box_points_lie_on_its_faces_and_ground_on_the_plane():
    v, f = box_mesh((2.0, 1.5, 1.8))
    scene = Scene([SceneObject("box", v, f, np.array([8.0, -2.0, -1.73]), 0.4)])
    exact = simulate_scan(scene, range_noise=0.0, **COARSE)
    on_box = exact.object_id == 1
    assert on_box.sum() > 100
    assert scene.distance_to_object(1, exact.xyz[on_box]).max() < 1e-5
    np.testing.assert_allclose(exact.xyz[exact.object_id == 0, 2], -1.73, atol=1e-5)
    assert set(np.unique(exact.object_id)) == {0, 1}
    noisy = simulate_scan(scene, range_noise=0.02, seed=3, **COARSE)
    p2f = scene.distance_to_object(1, noisy.xyz[noisy.object_id == 1])
    assert 0.003 < p2f.mean() < 0.02  # ≈ E|N(0, 0.02)|·cos(incidence)
    # Intensity: albedo x |cos incidence| within [0, 1]; the ring is the beam index.
    assert (0 <= noisy.intensity).all() and (noisy.intensity <= 1).all()
    el = np.degrees(np.arctan2(exact.xyz[:, 2], np.hypot(exact.xyz[:, 0], exact.xyz[:, 1])))
    np.testing.assert_allclose(el, hdl64_elevations()[exact.ring], atol=1e-4)


def test_scan_is_stored_laser_by_laser_like_kitti():
    scene = procedural_scene(1)
    scan = simulate_scan(scene, top_deg=-2.0, **COARSE)  # every beam sees the ground
    np.testing.assert_array_equal(recover_rings(scan.xyz), scan.ring)
    assert scan.ring.max() == 63 and scan.as_xyzi().shape == (len(scan), 4)


def test_noise_dropout_and_range_limits_are_seeded_and_applied():
    scene = procedural_scene(2)
    a = simulate_scan(scene, dropout=0.3, seed=5, **COARSE)
    b = simulate_scan(scene, dropout=0.3, seed=5, **COARSE)
    full = simulate_scan(scene, seed=5, **COARSE)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    assert 0.6 < len(a) / len(full) < 0.8
    near = simulate_scan(scene, max_range=20.0, **COARSE)
    assert np.linalg.norm(near.xyz, axis=1).max() <= 20.0
    with pytest.raises(ValueError, match="dropout"):
        simulate_scan(scene, dropout=1.0)


def test_procedural_scene_is_seeded_and_places_objects_in_range():
    a, b = procedural_scene(7), procedural_scene(7)
    assert [o.name for o in a.objects] == [o.name for o in b.objects]
    np.testing.assert_array_equal(a.objects[0].vertices, b.objects[0].vertices)
    d = np.array([np.hypot(*o.position[:2]) for o in a.objects])
    assert len(a.objects) >= 10 and (d >= 4.0).all() and (d <= 40.0).all()
    assert {o.name for o in a.objects} <= {"car", "box", "cylinder"}


def test_vehicle_scene_from_the_dev_meshes():
    if not (DATA / "meshes" / "vehicles_scene").is_dir():
        pytest.skip(f"vehicle meshes not found at {DATA / 'meshes' / 'vehicles_scene'}")
    scene = vehicle_scene(0, data=DATA)
    d = np.array([np.hypot(*o.position[:2]) for o in scene.objects])
    assert len(scene.objects) == 12 and (d >= 5).all() and (d <= 60).all()
    assert all(o.name.startswith(("car_", "bus", "truck_", "van_")) for o in scene.objects)
    # Footprints do not overlap (bounding circles apart).
    xy = np.array([o.position[:2] for o in scene.objects])
    r = np.array([np.linalg.norm(np.ptp(o.vertices[:, :2], axis=0)) / 2 for o in scene.objects])
    gap = np.linalg.norm(xy[:, None] - xy[None], axis=-1) - r[:, None] - r[None]
    assert (gap[~np.eye(len(r), dtype=bool)] > 0).all()


def test_explicit_uneven_elevations_replace_the_even_table():
    v, f = box_mesh((2.0, 1.5, 1.8))
    scene = Scene([SceneObject("box", v, f, np.array([8.0, 1.0, -1.73]), 0.2)])
    even = simulate_scan(scene, range_noise=0.0, **COARSE)
    same = simulate_scan(scene, range_noise=0.0, elevations_deg=hdl64_elevations(), **COARSE)
    np.testing.assert_array_equal(even.xyz, same.xyz)
    table = np.array([1.0, -3.0, -4.0, -10.0, -20.0])  # uneven, top first
    scan = simulate_scan(Scene([]), range_noise=0.0, elevations_deg=table, **COARSE)
    assert scan.ring.max() == 4 and len(scan) == 4 * 360  # beam 0 looks up: no ground
    el = np.degrees(np.arctan2(scan.xyz[:, 2], np.hypot(scan.xyz[:, 0], scan.xyz[:, 1])))
    np.testing.assert_allclose(el, table[scan.ring], atol=1e-5)  # float32 xyz
    r = np.linalg.norm(scan.xyz, axis=1)
    np.testing.assert_allclose(r, 1.73 / np.sin(np.radians(-table[scan.ring])), rtol=1e-6)
    with pytest.raises(ValueError, match="decreasing"):
        simulate_scan(Scene([]), elevations_deg=[-1.0, 0.0])
