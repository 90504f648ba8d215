"""Tests of sspu_ros.io.kitti: calibration, labels, LiDAR boxes, and the real dev frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sspu_ros.errors import CloudFileError
from sspu_ros.io.kitti import (
    KittiCalib,
    KittiObject,
    box_corners,
    boxes_to_lidar,
    points_in_boxes,
    read_calib,
    read_labels,
    read_raw_calib,
    read_velodyne,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KITTI = DATA / "kitti"
# (folder, frame) pairs with velodyne + calib + label_2
REAL_FRAMES = [("object", f) for f in ("000000", "000001", "000002", "000003", "000010")] + [
    ("object_fov", "000134")
]

# LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd): the ideal KITTI permutation.
PERM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _calib(rotation: np.ndarray, translation=(0.0, 0.0, 0.0), r0=None) -> KittiCalib:
    return KittiCalib(
        P2=np.hstack([np.diag([700.0, 700.0, 1.0]), np.zeros((3, 1))]),
        R0_rect=np.eye(3) if r0 is None else r0,
        Tr_velo_to_cam=np.hstack([rotation, np.reshape(translation, (3, 1))]),
    )


def _obj(h, w, length, loc, ry, kind="Car") -> KittiObject:
    return KittiObject(
        type=kind,
        truncated=0.0,
        occluded=0,
        alpha=0.0,
        bbox=np.zeros(4),
        dimensions=np.array([h, w, length], float),
        location=np.array(loc, float),
        rotation_y=ry,
        score=None,
    )


def _camera_corners(obj: KittiObject) -> np.ndarray:
    """(8, 3) rectified-camera corners straight from the label, in box_corners' order."""
    h, w, length = obj.dimensions
    ry = obj.rotation_y
    heading = np.array([math.cos(ry), 0.0, -math.sin(ry)])
    up = np.array([0.0, -1.0, 0.0])
    left = np.cross(up, heading)
    centre = obj.location + up * h / 2
    signs = [(1, 1, -1), (1, -1, -1), (-1, -1, -1), (-1, 1, -1)]
    signs += [(a, b, 1) for a, b, _ in signs]
    return np.array(
        [centre + a * heading * length / 2 + b * left * w / 2 + c * up * h / 2 for a, b, c in signs]
    )


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------
# hand-computed geometry
# --------------------------------------------------------------------------------------


def test_boxes_to_lidar_hand_computed():
    calib = _calib(PERM)
    objs = [_obj(1.5, 1.6, 4.0, (1.0, 1.7, 10.0), 0.0), _obj(2.0, 1.0, 3.0, (0, 2, 5), math.pi / 2)]
    boxes = boxes_to_lidar(objs, calib)
    # cam (1, 1.7, 10) -> velo (10, -1, -1.7) bottom; centre 0.75 higher; facing camera
    # x (right) = LiDAR -y: yaw -pi/2.
    np.testing.assert_allclose(boxes[0], [10, -1, -0.95, 4.0, 1.6, 1.5, -math.pi / 2], atol=1e-12)
    # ry = pi/2 faces the camera (-z_cam = -x_velo): yaw = -pi (wrapped into [-pi, pi)).
    np.testing.assert_allclose(boxes[1], [5, 0, -1.0, 3.0, 1.0, 2.0, -math.pi], atol=1e-12)
    assert boxes.shape == (2, 7) and boxes.dtype == np.float64
    assert boxes_to_lidar([], calib).shape == (0, 7)


@pytest.mark.parametrize("mount_yaw", [0.0, 0.3, -2.0])
def test_yaw_derived_from_calibration(mount_yaw):
    """A LiDAR mounted turned by mount_yaw: yaw = -ry - pi/2 - mount_yaw, corners agree."""
    r0 = _rot_y(0.05)  # a rectification about the vertical keeps "up" exact
    calib = _calib(PERM @ _rot_z(mount_yaw), (0.3, -0.1, 0.2), r0)
    rng = np.random.default_rng(7)
    objs = [
        _obj(*rng.uniform(1, 4, 3), rng.uniform(-10, 10, 3), float(ry))
        for ry in rng.uniform(-np.pi, np.pi, 6)
    ]
    boxes = boxes_to_lidar(objs, calib)
    # R0 turns the reference camera by +0.05 about its y (down) axis, which is -0.05
    # about LiDAR z; a label heading in the rectified frame is thus 0.05 more in LiDAR.
    expected = _wrap([-o.rotation_y - np.pi / 2 - mount_yaw + 0.05 for o in objs])
    np.testing.assert_allclose(_wrap(boxes[:, 6] - expected), 0, atol=1e-9)
    corners = box_corners(boxes)
    for obj, box_c in zip(objs, corners, strict=True):
        np.testing.assert_allclose(calib.velo_to_rect(box_c), _camera_corners(obj), atol=1e-9)


def test_calibration_without_z_up_is_rejected():
    calib = _calib(np.eye(3))  # camera y (down) would be LiDAR y: no z-up box exists
    with pytest.raises(ValueError, match="not to \\+z"):
        boxes_to_lidar([_obj(1, 1, 1, (0, 0, 5), 0.0)], calib)


def test_box_corner_order():
    corners = box_corners(np.array([[0, 0, 0, 4, 2, 1, 0.0]]))
    assert corners.shape == (1, 8, 3)
    np.testing.assert_allclose(
        corners[0],
        [[2, 1, -0.5], [2, -1, -0.5], [-2, -1, -0.5], [-2, 1, -0.5],
         [2, 1, 0.5], [2, -1, 0.5], [-2, -1, 0.5], [-2, 1, 0.5]],
    )  # fmt: skip
    turned = box_corners(np.array([1, 2, 3, 4, 2, 1, math.pi / 2]))[0]
    np.testing.assert_allclose(turned[0], [1 - 1, 2 + 2, 2.5], atol=1e-12)  # front-left
    np.testing.assert_allclose(turned[6], [1 + 1, 2 - 2, 3.5], atol=1e-12)  # rear-right top


def test_points_in_rotated_box_edges():
    box = np.array([[5.0, 3.0, 1.0, 4.0, 2.0, 1.5, math.pi / 6]])
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)

    def world(along, across, up):
        return [5 + along * c - across * s, 3 + along * s + across * c, 1 + up]

    eps = 1e-6
    pts = np.array(
        [
            world(0, 0, 0),
            world(2 - eps, 1 - eps, 0.75 - eps),  # just inside a corner
            world(2 + 1e-3, 0, 0),  # just past the front
            world(0, 1 + 1e-3, 0),  # just past the left side
            world(0, 0, 0.75 + 1e-3),  # just above the top
            world(-2 + eps, -1 + eps, -0.75 + eps),  # just inside the opposite corner
            world(2.05, 0, 0),  # inside only with margin 0.1
            # inside the axis-aligned bounding square but outside the rotated box
            [5 + 2 * c + 0.9, 3 + 2 * s - 0.5, 1.0],
        ]
    )
    np.testing.assert_array_equal(points_in_boxes(pts, box), [0, 0, -1, -1, -1, 0, -1, -1])
    assert points_in_boxes(pts, box, margin=0.1)[6] == 0
    assert points_in_boxes(pts, box, margin=-0.1)[1] == -1


def test_points_in_boxes_matches_brute_force():
    rng = np.random.default_rng(3)
    boxes = np.column_stack(
        [
            rng.uniform(-10, 10, (12, 3)),
            rng.uniform(0.5, 5, (12, 3)),
            rng.uniform(-np.pi, np.pi, 12),
        ]
    )
    pts = rng.uniform(-12, 12, (20_000, 3)).astype(np.float32)
    got = points_in_boxes(pts, boxes)
    d = pts[:, None, :].astype(np.float64) - boxes[None, :, :3]  # (N, K, 3)
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    along = d[..., 0] * cos + d[..., 1] * sin
    across = -d[..., 0] * sin + d[..., 1] * cos
    inside = (
        (np.abs(along) <= boxes[:, 3] / 2)
        & (np.abs(across) <= boxes[:, 4] / 2)
        & (np.abs(d[..., 2]) <= boxes[:, 5] / 2)
    )
    expected = np.where(inside.any(1), inside.argmax(1), -1)
    np.testing.assert_array_equal(got, expected)
    assert (got >= 0).sum() > 100  # not vacuous
    assert points_in_boxes(np.zeros((0, 3)), boxes).shape == (0,)
    assert (points_in_boxes(pts, np.zeros((0, 7))) == -1).all()


def test_velo_rect_round_trip():
    rotation, translation, r0 = PERM @ _rot_z(0.2), np.array([0.1, -0.2, 0.3]), _rot_y(0.01)
    calib = _calib(rotation, translation, r0)
    pts = np.random.default_rng(0).normal(size=(100, 3)) * 30
    rect = calib.velo_to_rect(pts)
    np.testing.assert_allclose(rect, (r0 @ (rotation @ pts.T + translation[:, None])).T)
    np.testing.assert_allclose(calib.rect_to_velo(rect), pts, atol=1e-10)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def test_read_labels_and_errors(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text(
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "\n"
        "Pedestrian 0.10 1 0.2 1 2 3 4 1.8 0.5 0.9 1 1.6 9 0.1 0.87\n"
    )
    objs = read_labels(path)
    assert [o.type for o in objs] == ["Car", "Pedestrian"]
    car = objs[0]
    np.testing.assert_allclose(car.dimensions, [1.65, 1.67, 3.64])
    np.testing.assert_allclose(car.location, [-0.65, 1.71, 46.70])
    assert car.rotation_y == -1.59 and car.score is None and car.occluded == 0
    assert objs[1].score == pytest.approx(0.87) and objs[1].truncated == pytest.approx(0.1)
    assert len(read_labels(path, skip_dontcare=False)) == 3
    assert [o.type for o in read_labels(path, classes={"Pedestrian"})] == ["Pedestrian"]
    path.write_text("Car 0 0 0 1 2 3\n")
    with pytest.raises(CloudFileError, match=r"000001\.txt: line 1 has 7 values"):
        read_labels(path)
    with pytest.raises(CloudFileError, match="no such label file"):
        read_labels(tmp_path / "nope.txt")


def test_read_calib_errors(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(CloudFileError, match=r"calib\.txt: P2 has 3 values, expected 12"):
        read_calib(path)
    path.write_text("P2: " + " ".join(["1"] * 12) + "\nR0_rect: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(CloudFileError, match=r"calib\.txt: missing Tr_velo_to_cam"):
        read_calib(path)


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"KITTI dev data missing (expected beside the repo): {', '.join(missing)}")


def test_read_real_calib_and_raw_calib():
    obj_calib = KITTI / "object" / "calib" / "000000.txt"
    raw_dir = KITTI / "raw_2011_09_26_drive_0001" / "calib"
    _need(obj_calib, raw_dir)
    calib = read_calib(obj_calib)
    assert calib.P2[0, 0] == pytest.approx(707.0493)
    np.testing.assert_allclose(calib.Tr_velo_to_cam[:, :3], PERM, atol=0.01)
    raw = read_raw_calib(raw_dir)
    assert raw.Tr_velo_to_cam[0, 0] == pytest.approx(7.533745e-03)
    assert raw.Tr_velo_to_cam[2, 3] == pytest.approx(-2.717806e-01)
    assert raw.R0_rect[0, 1] == pytest.approx(9.837760e-03)
    assert raw.P2.shape == (3, 4) and raw.P2[0, 0] == pytest.approx(7.215377e02)
    np.testing.assert_array_equal(read_calib(raw_dir).P2, raw.P2)
    same = read_calib(raw_dir / "calib_velo_to_cam.txt")
    np.testing.assert_array_equal(same.Tr_velo_to_cam, raw.Tr_velo_to_cam)
    # LiDAR point 10 m ahead lands ~10 m in front of the camera, near the image centre
    rect = raw.velo_to_rect(np.array([[10.0, 0.0, 0.0]]))
    assert rect[0, 2] == pytest.approx(10.0, abs=0.5)
    u, v = raw.rect_to_image(rect)[0]
    assert 500 < u < 750 and 100 < v < 250
    pts = np.random.default_rng(1).normal(size=(50, 3)) * 20
    np.testing.assert_allclose(raw.rect_to_velo(raw.velo_to_rect(pts)), pts, atol=1e-9)


# --------------------------------------------------------------------------------------
# real frames
# --------------------------------------------------------------------------------------


def _frame(folder: str, frame: str):
    base = KITTI / folder
    paths = [base / "velodyne" / f"{frame}.bin", base / "calib" / f"{frame}.txt"]
    paths.append(base / "label_2" / f"{frame}.txt")
    _need(*paths)
    return read_velodyne(paths[0]), read_calib(paths[1]), read_labels(paths[2])


def _inside_camera_box(rect: np.ndarray, obj: KittiObject) -> np.ndarray:
    """(N,) bool: points inside the label's box, computed in the camera frame."""
    h, w, length = obj.dimensions
    d = rect - obj.location
    c, s = math.cos(obj.rotation_y), math.sin(obj.rotation_y)
    along = c * d[:, 0] - s * d[:, 2]
    across = s * d[:, 0] + c * d[:, 2]
    return (
        (np.abs(along) <= length / 2) & (np.abs(across) <= w / 2) & (d[:, 1] <= 0) & (d[:, 1] >= -h)
    )


def test_real_frames_car_boxes():
    """Every labelled car within 30 m holds points, sits on the ground, matches the label."""
    counts = {}
    for folder, frame in REAL_FRAMES:
        scan, calib, objects = _frame(folder, frame)
        assert scan.dtype == np.float32 and scan.shape[1] == 4
        xyz = scan[:, :3]
        boxes = boxes_to_lidar(objects, calib)
        owner = points_in_boxes(xyz, boxes)
        rect = calib.velo_to_rect(xyz)
        for k, (obj, box) in enumerate(zip(objects, boxes, strict=True)):
            # the LiDAR-frame yaw is the KITTI convention for this near-permutation calib
            assert abs(_wrap(box[6] + obj.rotation_y + np.pi / 2)) < 0.01
            # membership agrees with the label's own (camera-frame) box up to the ~0.5 deg
            # tilt between camera "up" and LiDAR z: <= 2.5 cm at the corners
            theirs = _inside_camera_box(rect, obj)
            shrunk = points_in_boxes(xyz, box[None], margin=-0.05) == 0
            grown = points_in_boxes(xyz, box[None], margin=0.05) == 0
            assert not np.any(shrunk & ~theirs) and not np.any(theirs & ~grown), (frame, k)
            if obj.type != "Car" or np.hypot(box[0], box[1]) > 30:
                continue
            inside = xyz[owner == k]
            counts[f"{frame}/{k}"] = len(inside)
            assert len(inside) >= 30, (frame, k, len(inside))
            bottom, top = box[2] - box[5] / 2, box[2] + box[5] / 2
            assert inside[:, 2].min() >= bottom - 1e-4 and inside[:, 2].max() <= top + 1e-4
            # local ground: points within 2 m of the footprint (any height), not in the box
            ring = box.copy()
            ring[3:5] += 4.0
            ring[5] = 100.0
            near = (points_in_boxes(xyz, ring[None]) == 0) & (owner != k)
            ground = np.percentile(xyz[near, 2], 5)
            assert abs(ground - bottom) < 0.3, (frame, k, ground, bottom)
    # 000003: one car, 000010: seven within 30 m, 000134: one
    assert len(counts) >= 9, counts


def test_read_velodyne_matches_raw_bytes():
    scan_path = KITTI / "object" / "velodyne" / "000010.bin"
    _need(scan_path)
    scan = read_velodyne(scan_path)
    raw = np.fromfile(scan_path, dtype="<f4").reshape(-1, 4)
    assert scan.dtype == np.float32 and scan.shape == raw.shape
    assert scan.tobytes() == raw.tobytes()
