"""A ray-casting simulator of a spinning multi-beam LiDAR, and scenes to scan.

Sensor at the origin (x forward, y left, z up); the ground is the plane
``z = ground_z`` (-1.73 m: the KITTI HDL-64E's mounting height). Defaults follow the
Velodyne HDL-64E: 64 beams with elevations evenly spaced from +2° to -24.8°, one column
every 0.18° of azimuth (2000 columns: the spacing measured in the KITTI scans, ≈2000
points per ring; the data sheet's finest 0.08° is allowed but makes scans 2.25× larger
and slower), range noise σ = 2 cm, max range 120 m; the tests use 1–2° steps.

Ray casting without a BVH: every triangle is projected to its azimuth / elevation
bounding box as seen from the sensor (triangles wider than 2° are subdivided first, so
that the box is tight and the elevation bulge of straight edges stays far below the
0.05° padding), the rays of the regular beam × azimuth grid inside that box become
(ray, triangle) candidate pairs, and a vectorized Möller–Trumbore test keeps the nearest
hit per ray. The cost is proportional to the rays that actually fall on each triangle's
box, not to rays × triangles. The ground plane is intersected analytically.

Points come out ring by ring (top beam first), each ring sweeping the azimuth
counter-clockwise from the front, as in KITTI ``.bin`` files, with an intensity
(albedo × |cos incidence|), the ring index and the object id (0 = ground, k >= 1 =
``scene.objects[k - 1]``), so densified object points can be scored against the exact
meshes (:meth:`Scene.distance_to_object`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CloudFileError
from ..io.cloud_files import read_mesh

__all__ = [
    "SceneObject",
    "Scene",
    "SimScan",
    "box_mesh",
    "cylinder_mesh",
    "hdl64_elevations",
    "load_vehicle_meshes",
    "procedural_scene",
    "ray_triangle_intersect",
    "simulate_scan",
    "vehicle_scene",
]

SENSOR_HEIGHT = 1.73
VEHICLE_PREFIXES = ("car_", "bus", "truck_", "van_")
_PAD_RAD = math.radians(0.05)
_MAX_SPAN_RAD = math.radians(2.0)
_MAX_LEVELS = 7
_PAIRS_PER_CHUNK = 2_000_000


# ------------------------------------------------------------------------------ meshes


def box_mesh(size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Closed box with its base centred on the origin: (8, 3) vertices, (12, 3) faces
    (outward normals). ``size`` = (length along x, width along y, height along z)."""
    lx, ly, lz = (float(s) for s in size)
    v = np.array([[x, y, z] for z in (0.0, lz) for y in (-ly / 2, ly / 2)
                  for x in (-lx / 2, lx / 2)])
    f = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6],  # bottom, top
                  [0, 1, 4], [1, 5, 4], [2, 6, 3], [3, 6, 7],  # -y, +y
                  [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]])  # -x, +x
    return v, f


def cylinder_mesh(radius: float, height: float, segments: int = 24
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Closed vertical cylinder (a ``segments``-gon prism) with its base centred on the
    origin: (2·S + 2, 3) vertices, (4·S, 3) faces."""
    a = np.arange(segments) * 2 * np.pi / segments
    ring = np.column_stack([radius * np.cos(a), radius * np.sin(a)])
    v = np.concatenate([np.column_stack([ring, np.zeros(segments)]),
                        np.column_stack([ring, np.full(segments, height)]),
                        [[0.0, 0.0, 0.0], [0.0, 0.0, height]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    s = segments
    f = np.concatenate([np.column_stack([i, j, i + s]), np.column_stack([j, j + s, i + s]),
                        np.column_stack([np.full(s, 2 * s), j, i]),
                        np.column_stack([np.full(s, 2 * s + 1), i + s, j + s])])
    return v, f


def _merge(*meshes: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    verts, faces, n = [], [], 0
    for v, f in meshes:
        verts.append(v)
        faces.append(f + n)
        n += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def _car_mesh(length: float, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """A simple car-like shape: a body box on 0.25 m clearance and a cabin box on top."""
    body_h = 0.5 * height
    body = box_mesh((length, width, body_h - 0.25))
    body = (body[0] + [0.0, 0.0, 0.25], body[1])
    cabin = box_mesh((0.55 * length, 0.9 * width, height - body_h))
    cabin = (cabin[0] + [-0.08 * length, 0.0, body_h], cabin[1])
    return _merge(body, cabin)


# ------------------------------------------------------------------------------ scenes


@dataclass
class SceneObject:
    """A mesh placed in the sensor frame.

    Attributes:
        name: what it is ('car_suv', 'box', ...).
        vertices: (V, 3) float64 mesh vertices in the object's own frame (z up, base at 0).
        faces: (F, 3) int64 triangles.
        position: (3,) float64 where the object's origin goes (sensor frame).
        yaw: rotation about +z, radians.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    position: np.ndarray
    yaw: float = 0.0

    def rotation(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def world_vertices(self) -> np.ndarray:
        """(V, 3) vertices in the sensor frame."""
        return np.asarray(self.vertices, np.float64) @ self.rotation().T + self.position

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(P, 3) sensor-frame points -> (P, 3) in the object's own frame."""
        return (np.asarray(points, np.float64) - self.position) @ self.rotation()


@dataclass
class Scene:
    """Objects on a ground plane ``z = ground_z`` (None: no ground).

    Object k (>= 1) of scans is ``objects[k - 1]``; id 0 is the ground.
    ``distance_cache`` holds the point-to-mesh distance structures, keyed by the mesh
    arrays' identity: scenes built from the same mesh arrays may share one dict.
    """

    objects: list[SceneObject]
    ground_z: float | None = -SENSOR_HEIGHT
    distance_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, 3, 3) float64 triangles in the sensor frame and (T,) int64 object ids."""
        if not self.objects:
            return np.zeros((0, 3, 3)), np.zeros(0, np.int64)
        tris = [o.world_vertices()[np.asarray(o.faces)] for o in self.objects]
        ids = [np.full(len(t), k + 1, np.int64) for k, t in enumerate(tris)]
        return np.concatenate(tris), np.concatenate(ids)

    def distance_to_object(self, object_id: int, points: np.ndarray) -> np.ndarray:
        """(P, 3) sensor-frame points -> (P,) distance to object ``object_id``'s surface.

        Exact point-to-triangle distances
        (:class:`sspu_ros.geometry.mesh_distance.MeshDistance`, built once per mesh in the
        object's own frame and shared by objects with the same mesh).
        """
        from ..geometry.mesh_distance import MeshDistance

        if not 1 <= object_id <= len(self.objects):
            raise ValueError(f"object id {object_id} not in 1..{len(self.objects)}")
        obj = self.objects[object_id - 1]
        key = (id(obj.vertices), id(obj.faces))
        if key not in self.distance_cache:
            v = np.asarray(obj.vertices, np.float64)
            f = np.asarray(obj.faces)
            tri = v[f]
            area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                        axis=1).sum()
            # ~300k surface samples per mesh whatever its size (spacing ~1 cm on a car).
            self.distance_cache[key] = MeshDistance(v, f,
                                                    samples_per_area=3e5 / max(area, 1e-6))
        return self.distance_cache[key](obj.to_local(points))


def load_vehicle_meshes(data: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Vehicle meshes (cars, bus, trucks, vans) of ``data/meshes/vehicles_scene`` (or of
    the folder ``data`` itself): name -> ((V, 3) vertices, (F, 3) faces)."""
    root = Path(data)
    folder = next((d for d in (root / "meshes" / "vehicles_scene", root / "vehicles_scene",
                               root) if d.is_dir() and any(d.glob("*.ply"))), None)
    if folder is None:
        raise CloudFileError(f"{root}: no meshes/vehicles_scene/*.ply (the dev data's "
                             "vehicle meshes) found")
    files = sorted(p for p in folder.glob("*.ply") if p.stem.startswith(VEHICLE_PREFIXES))
    if not files:
        raise CloudFileError(f"{folder}: no vehicle meshes ({', '.join(VEHICLE_PREFIXES)}*.ply)")
    return {p.stem: read_mesh(p) for p in files}


def _place(rng: np.random.Generator, footprints: list[float], *, min_distance: float,
           max_distance: float, tries: int = 200) -> list[tuple[float, float, float]]:
    """Non-overlapping (x, y, yaw) for objects with the given footprint radii."""
    placed: list[tuple[float, float, float]] = []
    radii: list[float] = []
    for radius in footprints:
        for _ in range(tries):
            d = rng.uniform(min_distance, max_distance)
            a = rng.uniform(-np.pi, np.pi)
            x, y = d * math.cos(a), d * math.sin(a)
            if d < radius + 1.5:
                continue
            if all(math.hypot(x - px, y - py) > radius + r + 0.5
                   for (px, py, _), r in zip(placed, radii, strict=True)):
                placed.append((x, y, float(rng.uniform(-np.pi, np.pi))))
                radii.append(radius)
                break
    return placed


def vehicle_scene(seed: int = 0, *, meshes: dict | None = None, data: str | Path | None = None,
                  n_vehicles: int = 12, min_distance: float = 5.0,
                  max_distance: float = 60.0) -> Scene:
    """Vehicles at ``min_distance``–``max_distance`` m (random azimuth and yaw, seeded,
    no overlaps) on the ground plane. Meshes from :func:`load_vehicle_meshes` (pass
    ``meshes`` to reuse them, or ``data``)."""
    if meshes is None:
        if data is None:
            raise ValueError("vehicle_scene needs meshes= or data=")
        meshes = load_vehicle_meshes(data)
    rng = np.random.default_rng(seed)
    names = sorted(meshes)
    chosen = [names[i] for i in rng.integers(0, len(names), n_vehicles)]
    radii = [float(np.linalg.norm(np.ptp(meshes[n][0][:, :2], axis=0)) / 2) for n in chosen]
    poses = _place(rng, radii, min_distance=min_distance, max_distance=max_distance)
    objects = [SceneObject(n, meshes[n][0], meshes[n][1],
                           np.array([x, y, -SENSOR_HEIGHT]), yaw)
               for n, (x, y, yaw) in zip(chosen, poses, strict=False)]
    return Scene(objects)


def procedural_scene(seed: int = 0, *, n_objects: int = 16, min_distance: float = 4.0,
                     max_distance: float = 40.0) -> Scene:
    """A scene the project makes itself (no external data): boxes, cylinders (poles,
    barrels) and simple car-like shapes at ``min_distance``–``max_distance`` m, random
    positions and yaws (seeded), on the ground plane."""
    rng = np.random.default_rng(seed)
    shapes: list[tuple[str, tuple[np.ndarray, np.ndarray]]] = []
    for kind in rng.choice(["car", "car", "box", "cylinder"], size=n_objects):
        if kind == "car":
            length = rng.uniform(3.8, 5.0)
            mesh = _car_mesh(length, rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.8))
        elif kind == "box":
            mesh = box_mesh(tuple(rng.uniform([0.5, 0.5, 0.5], [3.0, 2.0, 2.5])))
        else:
            mesh = cylinder_mesh(rng.uniform(0.15, 0.6), rng.uniform(0.8, 4.0))
        shapes.append((str(kind), mesh))
    radii = [float(np.linalg.norm(np.ptp(m[0][:, :2], axis=0)) / 2) for _, m in shapes]
    poses = _place(rng, radii, min_distance=min_distance, max_distance=max_distance)
    objects = [SceneObject(kind, m[0], m[1], np.array([x, y, -SENSOR_HEIGHT]), yaw)
               for (kind, m), (x, y, yaw) in zip(shapes, poses, strict=False)]
    return Scene(objects)


# ----------------------------------------------------------------------- ray casting


def hdl64_elevations(beams: int = 64, top_deg: float = 2.0,
                     bottom_deg: float = -24.8) -> np.ndarray:
    """(beams,) elevations in degrees, evenly spaced, top beam first."""
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    return np.linspace(top_deg, bottom_deg, beams) if beams > 1 else np.array([top_deg])


def ray_triangle_intersect(directions: np.ndarray, v0: np.ndarray, v1: np.ndarray,
                           v2: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Möller–Trumbore for rays from the origin, paired row by row with triangles.

    Args:
        directions: (M, 3) ray directions (any length; t is in units of it).
        v0, v1, v2: (M, 3) triangle corners.

    Returns:
        (M,) float64 ray parameter t of the hit (point = t·direction), inf on a miss
        (parallel, outside the triangle, or t <= 0). Both faces count.
    """
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(directions, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > eps
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = -v0
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = np.einsum("ij,ij->i", directions, q) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return np.where(hit, t, np.inf)


def _angles(tri: np.ndarray) -> tuple[np.ndarray, ...]:
    """(T, 3, 3) -> azimuth lo/hi (unwrapped about vertex 0), elevation lo/hi, and whether
    the triangle winds around the z axis (its azimuth box is then the full circle)."""
    az = np.arctan2(tri[..., 1], tri[..., 0])  # (T, 3)
    rel = np.angle(np.exp(1j * (az - az[:, :1])))
    lo, hi = az[:, 0] + rel.min(axis=1), az[:, 0] + rel.max(axis=1)
    el = np.arctan2(tri[..., 2], np.hypot(tri[..., 0], tri[..., 1]))
    # A triangle crossing the z axis has vertex azimuths spread over more than pi.
    around = (hi - lo) > np.pi - 1e-9
    return lo, hi, el.min(axis=1), el.max(axis=1), around


def _subdivide(tri: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split triangles spanning more than 2° (azimuth or elevation) into 4, repeatedly."""
    done_t, done_o = [], []
    for level in range(_MAX_LEVELS + 1):
        lo, hi, elo, ehi, around = _angles(tri)
        big = ((hi - lo > _MAX_SPAN_RAD) | (ehi - elo > _MAX_SPAN_RAD)) & ~around
        if level == _MAX_LEVELS or not big.any():
            done_t.append(tri)
            done_o.append(owner)
            break
        done_t.append(tri[~big])
        done_o.append(owner[~big])
        a, b, c = tri[big, 0], tri[big, 1], tri[big, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        tri = np.concatenate([np.stack(x, axis=1) for x in
                              ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
        owner = np.tile(owner[big], 4)
    return np.concatenate(done_t), np.concatenate(done_o)


@dataclass
class SimScan:
    """A simulated scan.

    Attributes:
        xyz: (N, 3) float32 points (sensor frame).
        intensity: (N,) float32 in [0, 1].
        ring: (N,) int64 beam index (0 = top beam).
        object_id: (N,) int64: 0 ground, k >= 1 the scene's object k.
        elevations_deg: (B,) the beams' elevations.
        column: (N,) int64 azimuth column (azimuth = column · 360° / columns).
        columns: number of azimuth columns of the scan.
    """

    xyz: np.ndarray
    intensity: np.ndarray
    ring: np.ndarray
    object_id: np.ndarray
    elevations_deg: np.ndarray
    column: np.ndarray
    columns: int

    def __len__(self) -> int:
        return len(self.xyz)

    def select(self, mask: np.ndarray) -> SimScan:
        """The points where ``mask`` (a bool mask or indices) holds."""
        return SimScan(self.xyz[mask], self.intensity[mask], self.ring[mask],
                       self.object_id[mask], self.elevations_deg, self.column[mask],
                       self.columns)

    def as_xyzi(self) -> np.ndarray:
        """(N, 4) float32 x, y, z, intensity (the KITTI ``.bin`` layout)."""
        return np.column_stack([self.xyz, self.intensity]).astype(np.float32)


def simulate_scan(scene: Scene, *, beams: int = 64, top_deg: float = 2.0,
                  bottom_deg: float = -24.8, azimuth_step_deg: float = 0.18,
                  range_noise: float = 0.02, max_range: float = 120.0,
                  min_range: float = 0.9, dropout: float = 0.0, seed: int = 0,
                  elevations_deg: np.ndarray | None = None) -> SimScan:
    """Ray-cast one revolution of a spinning multi-beam LiDAR at the origin.

    Args:
        scene: objects and ground plane.
        beams, top_deg, bottom_deg: evenly spaced beam elevations (HDL-64E default).
        azimuth_step_deg: azimuth between columns (0.18°: KITTI's 10 Hz spacing).
        range_noise: Gaussian range noise sigma, metres.
        max_range, min_range: returns outside these ranges are dropped.
        dropout: probability that a return is lost.
        seed: seed of the noise and dropouts.
        elevations_deg: (B,) explicit beam elevations, degrees, top beam first (e.g. a
            real sensor's uneven table); overrides ``beams`` / ``top_deg`` / ``bottom_deg``.

    Returns:
        the returns ring by ring, azimuth increasing from the front (KITTI order).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if azimuth_step_deg <= 0 or range_noise < 0 or max_range <= min_range:
        raise ValueError("need azimuth_step_deg > 0, range_noise >= 0, max_range > min_range")
    if elevations_deg is None:
        elev = hdl64_elevations(beams, top_deg, bottom_deg)
    else:
        elev = np.asarray(elevations_deg, np.float64).reshape(-1)
        if elev.size < 1 or np.any(np.diff(elev) >= 0):
            raise ValueError("elevations_deg must be strictly decreasing (top beam first)")
    n_cols = int(round(360.0 / azimuth_step_deg))
    step = 2 * np.pi / n_cols
    az = np.arange(n_cols) * step
    el = np.radians(elev)
    dirs = np.stack(np.broadcast_arrays(np.cos(el)[:, None] * np.cos(az)[None],
                                        np.cos(el)[:, None] * np.sin(az)[None],
                                        np.sin(el)[:, None]), axis=-1).reshape(-1, 3)
    n_rays = len(dirs)
    best_t = np.full(n_rays, np.inf)
    best_obj = np.full(n_rays, -1, np.int64)
    normal = np.zeros((n_rays, 3))

    tri, owner = scene.triangles()
    if len(tri):
        tri, owner = _subdivide(tri, owner)
        _cast(tri, owner, dirs, el, n_cols, step, best_t, best_obj, normal)
    if scene.ground_z is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(dirs[:, 2] * scene.ground_z > 0, scene.ground_z / dirs[:, 2],
                                np.inf)
        ground = t_ground < best_t
        best_t[ground] = t_ground[ground]
        best_obj[ground] = 0
        normal[ground] = [0.0, 0.0, 1.0]

    rng = np.random.default_rng(seed)
    noisy = best_t + rng.normal(0.0, range_noise, n_rays) if range_noise > 0 else best_t
    keep = np.isfinite(best_t) & (noisy >= min_range) & (noisy <= max_range)
    if dropout > 0:
        keep &= rng.random(n_rays) >= dropout
    idx = np.flatnonzero(keep)  # ring-major, azimuth increasing: KITTI order
    cos_inc = np.abs(np.einsum("ij,ij->i", normal[idx], dirs[idx]))
    albedo = np.where(best_obj[idx] == 0, 0.25, 0.6)
    return SimScan(
        xyz=(dirs[idx] * noisy[idx, None]).astype(np.float32),
        intensity=(albedo * cos_inc).astype(np.float32),
        ring=(idx // n_cols).astype(np.int64),
        object_id=best_obj[idx],
        elevations_deg=elev,
        column=(idx % n_cols).astype(np.int64),
        columns=n_cols,
    )


def _cast(tri, owner, dirs, el, n_cols, step, best_t, best_obj, normal) -> None:
    """Nearest triangle hit per ray, updating best_t / best_obj / normal in place."""
    n_beams = len(el)
    az_lo, az_hi, el_lo, el_hi, around = _angles(tri)
    el_lo = np.where(around, -np.pi / 2, el_lo - _PAD_RAD)
    el_hi = np.where(around, np.pi / 2, el_hi + _PAD_RAD)
    asc = el[::-1]  # beam elevations ascending
    i0 = np.searchsorted(asc, el_lo, "left")
    i1 = np.searchsorted(asc, el_hi, "right")
    n_r = i1 - i0
    row0 = n_beams - i1  # first (top) beam inside the box
    c_lo = np.where(around, 0, np.ceil(az_lo / step - 1e-9)).astype(np.int64)
    c_hi = np.where(around, n_cols - 1, np.floor(az_hi / step + 1e-9)).astype(np.int64)
    n_c = np.clip(c_hi - c_lo + 1, 0, n_cols)
    count = n_r * n_c
    live = np.flatnonzero(count > 0)
    if live.size == 0:
        return
    e1_all = tri[:, 1] - tri[:, 0]
    e2_all = tri[:, 2] - tri[:, 0]
    cum = np.cumsum(count[live])
    start = 0
    while start < len(live):  # chunks of about _PAIRS_PER_CHUNK (ray, triangle) pairs
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + _PAIRS_PER_CHUNK, "right")), start + 1)
        sel = live[start:stop]
        start = stop
        cnt = count[sel]
        t_idx = np.repeat(sel, cnt)
        local = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        nc = n_c[t_idx]
        ray = (row0[t_idx] + local // nc) * n_cols + np.mod(c_lo[t_idx] + local % nc, n_cols)
        t = ray_triangle_intersect(dirs[ray], tri[t_idx, 0], tri[t_idx, 1], tri[t_idx, 2])
        hit = np.isfinite(t)
        ray, t, t_idx = ray[hit], t[hit], t_idx[hit]
        if ray.size == 0:
            continue
        order = np.lexsort((t, ray))
        first = np.ones(order.size, bool)
        first[1:] = ray[order][1:] != ray[order][:-1]
        pick = order[first]
        ray, t, t_idx = ray[pick], t[pick], t_idx[pick]
        better = t < best_t[ray]
        ray, t, t_idx = ray[better], t[better], t_idx[better]
        best_t[ray] = t
        best_obj[ray] = owner[t_idx]
        n = np.cross(e1_all[t_idx], e2_all[t_idx])
        normal[ray] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
