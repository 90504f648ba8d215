"""Ground removal and clustering of scans (sspu_ros.densify.segmentation)."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from sspu_ros.densify import segmentation as seg
from sspu_ros.densify.segmentation import (
    cluster_boxes,
    cluster_points,
    ground_mask,
    plausible_objects,
)

KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti" / "object"


def _tilted_ground_and_box():
    g = np.stack(np.meshgrid(np.arange(-20, 20, 0.5), np.arange(-20, 20, 0.5)), -1)
    g = g.reshape(-1, 2)
    ground = np.c_[g, 0.02 * g[:, 0] - 0.01 * g[:, 1] - 1.7]
    b = np.stack(np.meshgrid(np.arange(5, 9, 0.1), np.arange(-1, 1, 0.1),
                             np.arange(0.4, 1.6, 0.1)), -1).reshape(-1, 3)
    box = b + [0, 0, -1.7 + 0.02 * 7]  # 0.4..1.6 m above the (tilted) ground
    return np.vstack([ground, box]).astype(np.float32), len(ground)


def test_ground_mask_tilted_plane_exact():
    xyz, n_ground = _tilted_ground_and_box()
    mask, plane = ground_mask(xyz, return_plane=True)
    np.testing.assert_allclose(plane, [0.02, -0.01, -1.7], atol=1e-3)
    assert mask[:n_ground].all() and not mask[n_ground:].any()


def test_ground_mask_cell_covered_by_object_uses_plane():
    # a 4x4 m block whose lowest points are 0.35 m up covers whole 2 m cells: those cells
    # have no ground point, their minimum is off the plane, so the plane decides
    xyz, n_ground = _tilted_ground_and_box()
    g = np.stack(np.meshgrid(np.arange(-10, -6, 0.2), np.arange(-10, -6, 0.2)), -1)
    block = np.c_[g.reshape(-1, 2), np.full(g.shape[0] * g.shape[1], -1.7 + 0.35)]
    keep = ~((xyz[:, 0] >= -10) & (xyz[:, 0] < -6) & (xyz[:, 1] >= -10) & (xyz[:, 1] < -6))
    pts = np.vstack([xyz[keep], block]).astype(np.float32)
    mask = ground_mask(pts, max_deviation=0.3, height_threshold=0.25)
    assert not mask[-block.shape[0]:].any()


def test_ground_mask_empty():
    assert ground_mask(np.zeros((0, 3), np.float32)).shape == (0,)


def test_cluster_points_exact():
    xyz = np.array([[0, 0, 0], [0.3, 0, 0], [0.6, 0.1, 0],  # chain, links < 0.4
                    [2.0, 0, 0],                            # alone
                    [5, 5, 1], [5, 5.35, 1]], np.float32)   # pair
    labels, k = cluster_points(xyz, 0.4)
    assert k == 3
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5]
    assert len({labels[0], labels[3], labels[4]}) == 3


def _check_single_linkage_bounds(xyz, tol, labels):
    d = cdist(xyz, xyz)
    # closer than tol: always the same cluster
    i, j = np.nonzero(d < tol)
    assert (labels[i] == labels[j]).all()
    # same cluster: joined by a chain of links no longer than the voxel diagonal x2
    _, coarse = connected_components(d <= 2 * np.sqrt(3) * tol + 1e-6, directed=False)
    for c in np.unique(labels):
        assert np.unique(coarse[labels == c]).size == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-3, 3, width=32)] * 3), min_size=1, max_size=60),
       st.sampled_from([0.2, 0.5, 1.0]))
def test_cluster_points_single_linkage_property(points, tol):
    xyz = np.array(points, dtype=np.float32)
    labels, k = cluster_points(xyz, tol)
    assert labels.min() >= 0 and labels.max() == k - 1 and np.unique(labels).size == k
    _check_single_linkage_bounds(xyz.astype(np.float64), tol, labels)


def test_cluster_points_dense_and_sorted_paths_agree(monkeypatch):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-10, 10, (2000, 3)).astype(np.float32)
    a, ka = cluster_points(xyz, 0.8)
    monkeypatch.setattr(seg, "MAX_DENSE_CELLS", 0)
    b, kb = cluster_points(xyz, 0.8)
    assert ka == kb
    # same partition: the label pairs are a bijection
    assert np.unique(np.c_[a, b], axis=0).shape[0] == ka


def test_cluster_points_rejects_bad_input():
    with pytest.raises(ValueError, match="tolerance"):
        cluster_points(np.zeros((3, 3)), 0.0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cluster_points(np.zeros((3, 2)), 0.5)
    labels, k = cluster_points(np.zeros((0, 3)), 0.5)
    assert labels.shape == (0,) and k == 0


def test_cluster_boxes_and_plausible_objects():
    xyz = np.array([[0, 0, 0], [4, 1, 1.5], [10, 10, 0], [10, 30, 2], [50, 50, 0]], float)
    labels = np.array([0, 0, 1, 1, 2])
    stats = cluster_boxes(xyz, labels, 3)
    np.testing.assert_array_equal(stats.count, [2, 2, 1])
    np.testing.assert_allclose(stats.extent, [[4, 1, 1.5], [0, 20, 2], [0, 0, 0]])
    np.testing.assert_allclose(stats.centroid[0], [2, 0.5, 0.75])
    np.testing.assert_array_equal(stats.start, [0, 2, 4])
    np.testing.assert_array_equal(stats.order, [0, 1, 2, 3, 4])
    ok = plausible_objects(stats, min_points=2, max_extent=12, max_height=4.5, min_height=0.1)
    np.testing.assert_array_equal(ok, [True, False, False])  # too long / too few and flat


def test_footprint_is_orientation_free_and_exact_for_a_filled_rectangle():
    # a 4 m x 1 m rectangle filled on a fine grid, rotated by 0 and 30 degrees
    g = np.stack(np.meshgrid(np.linspace(-2, 2, 401), np.linspace(-0.5, 0.5, 101)), -1)
    g = g.reshape(-1, 2)
    a = np.deg2rad(30)
    rot = g @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    xyz = np.r_[np.c_[g, np.zeros(len(g))], np.c_[rot + 50, np.ones(len(g))]]
    labels = np.repeat([0, 1], len(g))
    stats = cluster_boxes(xyz.astype(np.float32), labels, 2)
    # sides of the equal-moment rectangle: sqrt(12 var) -> 4 (1 + 1/400) ~ 4.01, 1.02
    np.testing.assert_allclose(stats.length, 4 * np.sqrt(1 + 2 / 400), rtol=2e-3)
    np.testing.assert_allclose(stats.width, np.sqrt(1 + 2 / 100), rtol=2e-3)
    assert stats.extent[1, 0] > 3.9 and stats.extent[1, 1] > 2.5  # the AABB is not


def test_plausible_objects_geometric_tests_each_reject_one_cluster():
    # 0 car, 1 flat curb, 2 hedge blob (wide), 3 canopy (floating), 4 low clutter,
    # 5 tall building part; ground at z = -1.7 everywhere
    boxes = [((0, 0, -1.6), (4.0, 1.8, 1.5)), ((10, 0, -1.6), (6.0, 0.3, 0.15)),
             ((20, 0, -1.6), (5.0, 4.5, 1.5)), ((30, 0, 0.3), (3.0, 3.0, 1.0)),
             ((40, 0, -1.6), (1.0, 1.0, 0.35)), ((50, 0, -1.6), (3.0, 1.0, 6.0))]
    rng = np.random.default_rng(0)
    pts = [lo + rng.uniform(0, 1, (200, 3)) * np.r_[size[:2], size[2]] - np.r_[size[:2], 0] / 2
           for lo, size in boxes]
    xyz = np.vstack(pts).astype(np.float32)
    labels = np.repeat(np.arange(6), 200)
    stats = cluster_boxes(xyz, labels, 6)
    kw = dict(min_points=5, max_extent=12, max_width=3.0, max_height=4.5, min_height=0.3,
              min_top=0.5, max_base_height=1.5)
    ok = plausible_objects(stats, np.full(6, -1.7), **kw)
    np.testing.assert_array_equal(ok, [True, False, False, False, False, False])
    # without ground the top/base tests are off: the canopy and the low clutter pass
    np.testing.assert_array_equal(plausible_objects(stats, None, **kw),
                                  [True, False, False, True, True, False])


@pytest.mark.skipif(not (KITTI / "velodyne" / "000010.bin").is_file(),
                    reason=f"KITTI dev data not found at {KITTI} (../shared/data layout)")
def test_kitti_ground_plane_below_sensor_and_cars_not_ground():
    from sspu_ros.io.kitti import (
        boxes_to_lidar,
        points_in_boxes,
        read_calib,
        read_labels,
        read_velodyne,
    )

    xyz = read_velodyne(KITTI / "velodyne" / "000010.bin")[:, :3]
    mask, plane = ground_mask(xyz, return_plane=True)
    assert -2.0 < plane[2] < -1.3 and abs(plane[0]) < 0.05 and abs(plane[1]) < 0.05
    objs = read_labels(KITTI / "label_2" / "000010.txt")
    inside = points_in_boxes(xyz, boxes_to_lidar(objs, read_calib(KITTI / "calib" / "000010.txt")))
    # most points of the labelled objects survive ground removal
    assert (~mask[inside >= 0]).mean() > 0.75
