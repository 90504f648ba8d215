"""Self-supervised training data: patches of *input* points only, never ground truth.

Sources (by path, auto-detected):
- meshes (``.off``, ``.obj``-free ``.ply`` with faces): points sampled on the surface by
  area (uniform) or with PU-GAN-style non-uniform density, then patches;
- point-cloud files (``.xyz .txt .pts .ply .pcd .npy``): patches of the cloud;
- LiDAR scans (KITTI ``.bin``) and rosbag2 / ROS 1 bags (a PointCloud2 topic): ground
  removed, patches of the non-ground points (objects, poles, walls ...);
- a folder: every supported file inside it (recursively).

Every patch is ``patch_size`` nearest points of a seed, normalized to the unit sphere:
the same normalization as at inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CloudFileError
from ..geometry.knn_numpy import nearest_neighbors
from ..geometry.surface_sampling import sample_triangles
from ..io.cloud_files import read_cloud, read_mesh

MESH_EXTENSIONS = (".off",)
CLOUD_EXTENSIONS = (".xyz", ".txt", ".pts", ".ply", ".pcd", ".npy")
SCAN_EXTENSIONS = (".bin",)
BAG_EXTENSIONS = (".db3", ".mcap", ".bag")


@dataclass
class PatchOptions:
    patch_size: int = 256
    patches_per_shape: int = 64        # per mesh / point-cloud file
    patches_per_scan: int = 32         # per LiDAR scan
    mesh_points: int = 2048            # input points sampled from a mesh
    nonuniform: bool = False           # PU-GAN-style non-uniform sampling on meshes
    max_range: float = 40.0            # LiDAR: horizontal range kept, metres
    ground_cell: float = 1.0           # LiDAR: grid cell of the ground estimate, metres
    ground_height: float = 0.25        # LiDAR: points this close above the cell's lowest are ground
    max_patch_radius: float = 4.0      # LiDAR: patches wider than this (metres) are skipped
    bag_topic: str | None = None       # PointCloud2 topic in bags (None: the first one)
    bag_every: int = 5                 # use every n-th scan of a bag


# --------------------------------------------------------------------------- sampling


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator,
                *, nonuniform: bool = False) -> np.ndarray:
    """Points on a triangle mesh.

    Args:
        vertices: (V, 3); faces: (F, 3) int.
        nonuniform: PU-GAN-style uneven density: sample 4n points uniformly by area, then
            keep n with probability rising towards a random centre (Gaussian, sigma = 0.3
            of the shape radius, plus a uniform floor of 20%).

    Returns:
        (n, 3) float32.
    """
    tri = vertices[faces].astype(np.float64)  # (F, 3, 3)
    m = 4 * n if nonuniform else n
    try:
        pts, _ = sample_triangles(tri, m, rng)
    except ValueError:
        raise CloudFileError("mesh has no area") from None
    if nonuniform:
        centre = pts[rng.integers(m)]
        scale = np.linalg.norm(pts - pts.mean(0), axis=1).max()
        d2 = ((pts - centre) ** 2).sum(1) / (0.3 * scale) ** 2
        w = 0.2 + np.exp(-0.5 * d2)
        pts = pts[rng.choice(m, size=n, replace=False, p=w / w.sum())]
    return pts.astype(np.float32)


def normalize_patches(patches: np.ndarray) -> np.ndarray:
    """(P, K, 3) -> (P, K, 3) float32, each patch centred and scaled into the unit sphere."""
    c = patches - patches.mean(axis=1, keepdims=True)
    r = np.linalg.norm(c, axis=2).max(axis=1)[:, None, None]
    return (c / np.maximum(r, 1e-12)).astype(np.float32)


def cloud_patches(xyz: np.ndarray, n_patches: int, patch_size: int,
                  rng: np.random.Generator, *, max_radius: float | None = None) -> np.ndarray:
    """Patches of one cloud: random seeds, each with its ``patch_size`` nearest points.

    Returns:
        (P, patch_size, 3) float32, *not* normalized (P <= n_patches; patches whose radius
        exceeds ``max_radius`` are dropped).
    """
    if len(xyz) < patch_size:
        return np.empty((0, patch_size, 3), np.float32)
    seeds = xyz[rng.choice(len(xyz), size=min(n_patches, len(xyz)), replace=False)]
    _, idx = nearest_neighbors(xyz, seeds, k=patch_size)
    patches = xyz[idx]
    if max_radius is not None:
        radius = np.linalg.norm(patches - patches.mean(1, keepdims=True), axis=2).max(1)
        patches = patches[radius <= max_radius]
    return patches.astype(np.float32)


def remove_ground(xyz: np.ndarray, cell: float = 1.0, height: float = 0.25) -> np.ndarray:
    """(N, 3) LiDAR points -> (N,) bool, True for non-ground points.

    A point is ground when it lies within ``height`` of the lowest point of its
    ``cell`` × ``cell`` m grid cell (vectorized; no plane fit, so slopes are fine)."""
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    _, cell_id = np.unique(ij, axis=0, return_inverse=True)
    cell_id = cell_id.ravel()
    lowest = np.full(cell_id.max() + 1 if len(cell_id) else 0, np.inf)
    np.minimum.at(lowest, cell_id, xyz[:, 2])
    return xyz[:, 2] > lowest[cell_id] + height


def lidar_patches(xyz: np.ndarray, opts: PatchOptions, rng: np.random.Generator) -> np.ndarray:
    """Patches of the non-ground points of one LiDAR scan (sensor frame), (P, K, 3)."""
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    xyz = xyz[(xyz[:, :2] ** 2).sum(1) <= opts.max_range ** 2]
    xyz = xyz[remove_ground(xyz, opts.ground_cell, opts.ground_height)]
    return cloud_patches(xyz, opts.patches_per_scan, opts.patch_size, rng,
                         max_radius=opts.max_patch_radius)


# --------------------------------------------------------------------------- sources


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the supported files inside them (sorted, recursive)."""
    exts = MESH_EXTENSIONS + CLOUD_EXTENSIONS + SCAN_EXTENSIONS + BAG_EXTENSIONS
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in exts)
            # a rosbag2 folder holds metadata.yaml + .db3/.mcap: treat the folder as the bag
            if (p / "metadata.yaml").is_file():
                out.append(p)
                continue
            if not files:
                raise CloudFileError(f"{p}: no supported files ({', '.join(exts)}) inside")
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise CloudFileError(f"{p}: no such file or folder")
    return out


def _bag_scans(path: Path, topic: str | None, every: int) -> Iterator[np.ndarray]:
    """(N, 3) float32 xyz of every ``every``-th PointCloud2 message of ``topic`` in a bag."""
    from ..io.bags import read_pointclouds

    for item in read_pointclouds(path, topic, every=every):
        yield item.cloud.xyz


def source_patches(path: Path, opts: PatchOptions, rng: np.random.Generator) -> np.ndarray:
    """All patches of one source, normalized, (P, K, 3) float32."""
    ext = path.suffix.lower()
    if path.is_dir() or ext in BAG_EXTENSIONS:
        chunks = [lidar_patches(xyz, opts, rng)
                  for xyz in _bag_scans(path, opts.bag_topic, opts.bag_every)]
        raw = np.concatenate(chunks) if chunks else np.empty((0, opts.patch_size, 3))
    elif ext in SCAN_EXTENSIONS:
        raw = lidar_patches(read_cloud(path).xyz, opts, rng)
    elif ext in MESH_EXTENSIONS or (ext == ".ply" and _ply_has_faces(path)):
        v, f = read_mesh(path)
        pts = sample_mesh(v, f, opts.mesh_points, rng, nonuniform=opts.nonuniform)
        raw = cloud_patches(pts, opts.patches_per_shape, opts.patch_size, rng)
    elif ext in CLOUD_EXTENSIONS:
        cloud, _ = read_cloud(path).finite()
        raw = cloud_patches(cloud.xyz, opts.patches_per_shape, opts.patch_size, rng)
    else:
        raise CloudFileError(f"{path}: unsupported training source")
    return normalize_patches(raw) if len(raw) else np.empty((0, opts.patch_size, 3), np.float32)


def _ply_has_faces(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    end = head.find(b"end_header")
    return b"element face" in head[: end if end >= 0 else None]


def build_patch_bank(paths: Iterable[str | Path], opts: PatchOptions, *, seed: int = 0,
                     progress: bool = False) -> np.ndarray:
    """Patches of every source, (P, K, 3) float32 normalized; raises if there are none."""
    files = discover(paths)
    rng = np.random.default_rng(seed)
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="patches", unit="src", leave=False)
    banks = [source_patches(p, opts, rng) for p in it]
    bank = np.concatenate(banks) if banks else np.empty((0, opts.patch_size, 3), np.float32)
    if len(bank) == 0:
        raise CloudFileError(
            "no training patches: every source had fewer than patch_size="
            f"{opts.patch_size} usable points ({', '.join(map(str, files[:5]))} ...)")
    return bank


# --------------------------------------------------------------------------- augmentation


def augment(patches, *, rotate: str = "so3", scale: tuple[float, float] = (0.8, 1.2),
            jitter: float = 0.0, generator=None):
    """Random rotation ('so3', 'z' or 'none'), isotropic scaling and Gaussian jitter.

    Args:
        patches: (B, K, 3) torch tensor.
    Returns:
        (B, K, 3) tensor, same device/dtype.
    """
    import torch

    b = patches.shape[0]
    dev, dt = patches.device, patches.dtype
    if rotate == "so3":
        q = torch.randn(b, 4, generator=generator).to(dev, dt)
        q = q / q.norm(dim=1, keepdim=True)
        w, x, y, z = q.unbind(1)
        rot = torch.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).view(b, 3, 3)
        patches = patches @ rot.transpose(1, 2)
    elif rotate == "z":
        a = (torch.rand(b, generator=generator) * 2 * torch.pi).to(dev, dt)
        c, s = torch.cos(a), torch.sin(a)
        zero, one = torch.zeros_like(a), torch.ones_like(a)
        rot = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], 1).view(b, 3, 3)
        patches = patches @ rot.transpose(1, 2)
    elif rotate != "none":
        raise ValueError(f"rotate must be 'so3', 'z' or 'none', got {rotate!r}")
    lo, hi = scale
    if (lo, hi) != (1.0, 1.0):
        s = (torch.rand(b, 1, 1, generator=generator) * (hi - lo) + lo).to(dev, dt)
        patches = patches * s
    if jitter > 0:
        patches = patches + jitter * torch.randn(patches.shape, generator=generator).to(dev, dt)
    return patches
