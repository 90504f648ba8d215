"""KITTI calibration and label files, and 3-D box geometry in the LiDAR frame.

Frames:

- LiDAR (Velodyne): x forward, y left, z up.
- Reference camera: x right, y down, z forward; ``Tr_velo_to_cam`` maps LiDAR into it.
- Rectified camera: ``R0_rect`` applied after ``Tr_velo_to_cam``. KITTI labels live here.

LiDAR boxes are (K, 7) float64 rows ``x, y, z, l, w, h, yaw``: the box *centre*, length
along the heading, width across it, height along +z, and yaw the heading angle about +z
(0 = along +x, counter-clockwise positive). This is the layout OpenPCDet / mmdet3d use.

Parse errors raise :class:`sspu_ros.errors.CloudFileError` (a ``ValueError``) with
the file path in the message, the same exception type as every other file reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CloudFileError
from .cloud_files import read_cloud

__all__ = [
    "KittiCalib",
    "KittiObject",
    "box_corners",
    "boxes_to_lidar",
    "points_in_boxes",
    "read_calib",
    "read_labels",
    "read_raw_calib",
    "read_velodyne",
]

# Unit corner offsets (multiplied by l, w, h): bottom face first, then the top face,
# each starting at front-left and going front-right, rear-right, rear-left.
_CORNER_SIGNS = 0.5 * np.array(
    [
        [1, 1, -1],
        [1, -1, -1],
        [-1, -1, -1],
        [-1, 1, -1],
        [1, 1, 1],
        [1, -1, 1],
        [-1, -1, 1],
        [-1, 1, 1],
    ],
    dtype=np.float64,
)


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


@dataclass
class KittiCalib:
    """Camera-2 projection and the LiDAR -> rectified camera transform of one frame.

    Attributes:
        P2: (3, 4) projection of rectified camera coordinates into image 2 pixels.
        R0_rect: (3, 3) rectifying rotation (reference camera -> rectified camera).
        Tr_velo_to_cam: (3, 4) rigid transform LiDAR -> reference camera.
    """

    P2: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray

    def __post_init__(self) -> None:
        for name, shape in (("P2", (3, 4)), ("R0_rect", (3, 3)), ("Tr_velo_to_cam", (3, 4))):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"KittiCalib.{name} must have shape {shape}, got {value.shape}")
            setattr(self, name, value)

    @property
    def velo_to_rect_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous LiDAR -> rectified camera transform."""
        m = np.eye(4)
        m[:3, :3] = self.R0_rect @ self.Tr_velo_to_cam[:, :3]
        m[:3, 3] = self.R0_rect @ self.Tr_velo_to_cam[:, 3]
        return m

    @property
    def rect_to_velo_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous rectified camera -> LiDAR transform (exact inverse)."""
        return np.linalg.inv(self.velo_to_rect_matrix)

    def velo_to_rect(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) LiDAR points -> (N, 3) float64 rectified camera points."""
        return _apply(self.velo_to_rect_matrix, xyz)

    def rect_to_velo(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) rectified camera points -> (N, 3) float64 LiDAR points."""
        return _apply(self.rect_to_velo_matrix, xyz)

    def rect_to_image(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) rectified camera points -> (N, 2) pixel coordinates in image 2.

        Points behind the camera (z <= 0) give meaningless pixels; filter them first.
        """
        pts = _as_points(xyz)
        uvw = pts @ self.P2[:, :3].T + self.P2[:, 3]
        return uvw[:, :2] / uvw[:, 2:3]


def _as_points(xyz: np.ndarray) -> np.ndarray:
    pts = np.asarray(xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {pts.shape}")
    return pts


def _apply(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(4, 4) homogeneous transform applied to (N, 3) points -> (N, 3) float64."""
    pts = _as_points(xyz)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def _read_key_values(path: Path) -> dict[str, np.ndarray]:
    """``key: v1 v2 ...`` lines -> key -> float64 vector (non-numeric lines are skipped)."""
    if not path.is_file():
        raise CloudFileError(f"{path}: no such calibration file")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CloudFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    values: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            parts = line.split(None, 1)  # tolerate 'KEY v1 v2 ...' without a colon
            if len(parts) != 2:
                continue
            key, rest = parts
        try:
            values[key.strip()] = np.array(rest.split(), dtype=np.float64)
        except ValueError:
            continue  # e.g. 'calib_time: 15-Mar-2012 11:37:16'
    return values


def _matrix(values: dict[str, np.ndarray], keys: Sequence[str], shape, path: Path) -> np.ndarray:
    for key in keys:
        if key in values:
            vec = values[key]
            if vec.size != shape[0] * shape[1]:
                raise CloudFileError(
                    f"{path}: {key} has {vec.size} values, expected {shape[0] * shape[1]}"
                )
            return vec.reshape(shape)
    raise CloudFileError(f"{path}: missing {' / '.join(keys)}")


def read_calib(path: str | os.PathLike) -> KittiCalib:
    """Read a KITTI calibration.

    Args:
        path: an object-benchmark calib file (``P2: ...``, ``R0_rect: ...``,
            ``Tr_velo_to_cam: ...``), or a raw-drive calib directory (see
            :func:`read_raw_calib`) or one of its two files.
    """
    p = Path(path)
    if p.is_dir():
        return read_raw_calib(p)
    if p.name in ("calib_velo_to_cam.txt", "calib_cam_to_cam.txt"):
        return read_raw_calib(p.parent)
    values = _read_key_values(p)
    return KittiCalib(
        P2=_matrix(values, ("P2", "P_rect_02"), (3, 4), p),
        R0_rect=_matrix(values, ("R0_rect", "R_rect", "R_rect_00"), (3, 3), p),
        Tr_velo_to_cam=_matrix(values, ("Tr_velo_to_cam", "Tr_velo_cam"), (3, 4), p),
    )


def read_raw_calib(calib_dir: str | os.PathLike) -> KittiCalib:
    """Read the calibration of a KITTI raw drive.

    Args:
        calib_dir: folder with ``calib_velo_to_cam.txt`` (``R``, ``T``) and
            ``calib_cam_to_cam.txt`` (``R_rect_00``, ``P_rect_02``).
    """
    d = Path(calib_dir)
    velo = _read_key_values(d / "calib_velo_to_cam.txt")
    cam = _read_key_values(d / "calib_cam_to_cam.txt")
    rotation = _matrix(velo, ("R",), (3, 3), d / "calib_velo_to_cam.txt")
    translation = _matrix(velo, ("T",), (3, 1), d / "calib_velo_to_cam.txt")
    return KittiCalib(
        P2=_matrix(cam, ("P_rect_02",), (3, 4), d / "calib_cam_to_cam.txt"),
        R0_rect=_matrix(cam, ("R_rect_00",), (3, 3), d / "calib_cam_to_cam.txt"),
        Tr_velo_to_cam=np.hstack([rotation, translation]),
    )


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


@dataclass
class KittiObject:
    """One line of a KITTI ``label_2`` file.

    Attributes:
        type: class name ('Car', 'Pedestrian', 'Cyclist', 'Van', ..., 'DontCare').
        truncated: 0 (fully visible in the image) .. 1 (leaving the image).
        occluded: 0 visible, 1 partly, 2 largely occluded, 3 unknown.
        alpha: observation angle [-pi, pi].
        bbox: (4,) image box left, top, right, bottom in pixels.
        dimensions: (3,) height, width, length in metres.
        location: (3,) bottom-face centre in rectified camera coordinates, metres.
        rotation_y: rotation about the camera y axis (down) [-pi, pi].
        score: detection confidence (result files only), else None.
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: np.ndarray
    dimensions: np.ndarray
    location: np.ndarray
    rotation_y: float
    score: float | None = None


def read_labels(
    path: str | os.PathLike,
    *,
    classes: Iterable[str] | None = None,
    skip_dontcare: bool = True,
) -> list[KittiObject]:
    """Read a KITTI label (or detection result) file.

    Args:
        path: ``label_2/NNNNNN.txt``; 15 values per line, a 16th is the score.
        classes: keep only these types (exact KITTI spelling, e.g. ``{'Car', 'Van'}``).
        skip_dontcare: drop ``DontCare`` regions.
    """
    p = Path(path)
    if not p.is_file():
        raise CloudFileError(f"{p}: no such label file")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CloudFileError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    keep = None if classes is None else set(classes)
    objects: list[KittiObject] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) not in (15, 16):
            raise CloudFileError(f"{p}: line {lineno} has {len(words)} values, expected 15 or 16")
        kind = words[0]
        if (skip_dontcare and kind == "DontCare") or (keep is not None and kind not in keep):
            continue
        try:
            nums = [float(w) for w in words[1:]]
        except ValueError as exc:
            raise CloudFileError(f"{p}: line {lineno}: {exc}") from exc
        objects.append(
            KittiObject(
                type=kind,
                truncated=nums[0],
                occluded=int(nums[1]),
                alpha=nums[2],
                bbox=np.array(nums[3:7]),
                dimensions=np.array(nums[7:10]),
                location=np.array(nums[10:13]),
                rotation_y=nums[13],
                score=nums[14] if len(nums) == 15 else None,
            )
        )
    return objects


def read_velodyne(path: str | os.PathLike) -> np.ndarray:
    """Read a scan as (N, 4) float32 x, y, z, reflectance (zeros when the file has none).

    ``.bin`` values are returned bit-exact; any other :mod:`sspu_ros.io.cloud_files` format
    is accepted too.
    """
    cloud = read_cloud(path)
    out = np.zeros((len(cloud), 4), dtype=np.float32)
    out[:, :3] = cloud.xyz
    intensity = cloud.intensity
    if intensity is not None:
        out[:, 3] = intensity
    return out


# --------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------


def boxes_to_lidar(objects: Sequence[KittiObject], calib: KittiCalib) -> np.ndarray:
    """KITTI camera-frame boxes -> (K, 7) float64 LiDAR boxes x, y, z, l, w, h, yaw.

    The centre is the label's bottom centre raised by h/2 along camera "up" (-y), then
    moved to the LiDAR frame. The yaw is the direction of the label's length axis,
    ``(cos ry, 0, -sin ry)`` in the camera frame, rotated into the LiDAR frame by the
    calibration and measured about +z; with the usual KITTI axis permutation this
    gives ``yaw = -rotation_y - pi/2``. Wrapped to [-pi, pi).

    Raises:
        ValueError: when the calibration does not map camera "up" to LiDAR +z (within
            about 25 degrees): a z-up 7-DoF box cannot describe the label then.
    """
    if len(objects) == 0:
        return np.zeros((0, 7), dtype=np.float64)
    dims = np.array([o.dimensions for o in objects], dtype=np.float64).reshape(-1, 3)
    loc = np.array([o.location for o in objects], dtype=np.float64).reshape(-1, 3)
    ry = np.array([o.rotation_y for o in objects], dtype=np.float64)
    h, w, length = dims[:, 0], dims[:, 1], dims[:, 2]
    centre_rect = loc.copy()
    centre_rect[:, 1] -= h / 2.0
    centre = calib.rect_to_velo(centre_rect)
    rotation = calib.rect_to_velo_matrix[:3, :3]
    up = rotation @ np.array([0.0, -1.0, 0.0])
    if up[2] < 0.9 * np.linalg.norm(up):
        raise ValueError(
            f"calibration maps camera up to {np.round(up, 3).tolist()} in the LiDAR frame, "
            "not to +z; LiDAR boxes are z-up"
        )
    heading_rect = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1)
    heading = heading_rect @ rotation.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    yaw = (yaw + np.pi) % (2.0 * np.pi) - np.pi
    return np.column_stack([centre, length, w, h, yaw])


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.shape[0] == 7:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 7:
        raise ValueError(f"expected boxes of shape (K, 7), got {b.shape}")
    return b


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(K, 7) boxes -> (K, 8, 3) corners.

    Order: bottom face (z - h/2) then top face (z + h/2); on each face front-left,
    front-right, rear-right, rear-left, where front is the +heading side and left is
    +90 degrees from it. Corners 0-3 and 4-7 are therefore clockwise seen from above.
    """
    b = _as_boxes(boxes)
    local = _CORNER_SIGNS[None, :, :] * b[:, None, 3:6]  # (K, 8, 3)
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]


def points_in_boxes(xyz: np.ndarray, boxes: np.ndarray, *, margin: float = 0.0) -> np.ndarray:
    """Index of the box containing each point.

    Args:
        xyz: (N, 3) points (LiDAR frame).
        boxes: (K, 7) boxes x, y, z, l, w, h, yaw.
        margin: grow every box by this much on each side (metres; may be negative).

    Returns:
        (N,) int64: the lowest index of a box holding the point (faces inclusive), or -1.
    """
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {pts.shape}")
    b = _as_boxes(boxes)
    result = np.full(pts.shape[0], -1, dtype=np.int64)
    if pts.shape[0] == 0:
        return result
    px = pts[:, 0].astype(np.float64)
    py = pts[:, 1].astype(np.float64)
    pz = pts[:, 2].astype(np.float64)
    for k in range(b.shape[0]):
        cx, cy, cz, length, width, height, yaw = b[k]
        half_l, half_w, half_h = length / 2 + margin, width / 2 + margin, height / 2 + margin
        if half_l < 0 or half_w < 0 or half_h < 0:
            continue
        radius = np.hypot(half_l, half_w)
        # Bounding-square prefilter of the bounding circle (cheap, exact superset).
        near = np.flatnonzero(
            (np.abs(px - cx) <= radius) & (np.abs(py - cy) <= radius) & (np.abs(pz - cz) <= half_h)
        )
        if near.size == 0:
            continue
        dx, dy = px[near] - cx, py[near] - cy
        c, s = np.cos(yaw), np.sin(yaw)
        along = dx * c + dy * s
        across = -dx * s + dy * c
        inside = near[(np.abs(along) <= half_l) & (np.abs(across) <= half_w)]
        free = inside[result[inside] < 0]
        result[free] = k
    return result
