"""Classical upsampling baselines (no learning), used as references in the benchmarks and
as the built-in ``midpoint`` model until trained models ship."""

from __future__ import annotations

import numpy as np

from ..geometry.candidate_selection import fps_extend_numpy as fps_extend
from ..geometry.knn_numpy import NeighborIndex, nearest_neighbors
from ..runtime.midpoint import _drop_self

# --------------------------------------------------------------------------- helpers


def _check_cloud(xyz: np.ndarray, ratio: int, min_points: int) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got shape {xyz.shape}")
    if ratio < 2:
        raise ValueError(f"ratio must be >= 2, got {ratio}")
    if xyz.shape[0] < min_points:
        raise ValueError(f"need at least {min_points} points, got {xyz.shape[0]}")
    if not np.isfinite(xyz).all():
        raise ValueError("the cloud has NaN/Inf coordinates")
    return xyz.astype(np.float64)


def _normalize(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(N, 3) -> unit-sphere copy, centroid (3,), radius."""
    c = pts.mean(axis=0)
    r = max(float(np.linalg.norm(pts - c, axis=1).max()), 1e-12)
    return (pts - c) / r, c, r


def _local_frames(nb: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted PCA frames of neighbourhoods.

    Args:
        nb: (M, K, 3) neighbourhoods; weights: (M, K) non-negative.
    Returns:
        centroids (M, 3) and frames (M, 3, 3) whose columns are the two tangent
        directions then the normal (smallest-variance direction).
    """
    w = weights / np.maximum(weights.sum(1, keepdims=True), 1e-300)
    centroid = (w[..., None] * nb).sum(1)
    d = nb - centroid[:, None]
    cov = np.einsum("mk,mki,mkj->mij", w, d, d)
    _, vec = np.linalg.eigh(cov)  # ascending eigenvalues: column 0 is the normal
    return centroid, vec[:, :, [2, 1, 0]]


def mls_quadric_project(points: np.ndarray, cloud: np.ndarray, *, k: int = 16,
                        max_shift: float | None = None) -> np.ndarray:
    """Project points onto moving-least-squares quadric fits of a cloud's surface.

    For each point: its ``k`` nearest cloud points, weighted by a Gaussian of their
    distance (bandwidth: the distance to the k-th neighbour / 2), give a local frame by
    weighted PCA and a height function ``h(u, v) = a u² + b uv + c v² + d u + e v + f``
    fitted by weighted least squares (ridge 1e-9); the point moves along the local normal
    onto the fitted height. The move is clipped to ``max_shift`` (default: the median
    spacing of the cloud), so a poor fit at a sharp edge cannot throw a point off.

    Args:
        points: (M, 3) points to project; cloud: (N, 3), N >= 6.
    Returns:
        (M, 3) float64 projected points.
    """
    cloud = np.asarray(cloud, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    k = min(k, cloud.shape[0])
    if k < 6:
        raise ValueError(f"a quadric fit needs >= 6 neighbours, the cloud has {cloud.shape[0]}")
    tree = NeighborIndex(cloud)
    dist, idx = tree.query(points, k=k)  # (M, k)
    if max_shift is None:
        max_shift = float(np.median(tree.query(cloud, k=2)[0][:, 1]))
    h = np.maximum(dist[:, -1:] / 2, 1e-12)
    weights = np.exp(-((dist / h) ** 2))  # (M, k)
    nb = cloud[idx]  # (M, k, 3)
    centroid, frame = _local_frames(nb, weights)
    local = np.einsum("mki,mij->mkj", nb - centroid[:, None], frame)  # (M, k, 3): u, v, h
    q = np.einsum("mi,mij->mj", points - centroid, frame)  # (M, 3)

    def design(u, v):
        return np.stack([u * u, u * v, v * v, u, v, np.ones_like(u)], axis=-1)

    a = design(local[..., 0], local[..., 1])  # (M, k, 6)
    aw = a * weights[..., None]
    lhs = np.einsum("mki,mkj->mij", aw, a) + 1e-9 * np.eye(6)
    rhs = np.einsum("mki,mk->mi", aw, local[..., 2])
    coef = np.linalg.solve(lhs, rhs[..., None])[..., 0]  # (M, 6)
    height = (design(q[:, 0], q[:, 1]) * coef).sum(1)
    shift = np.clip(height - q[:, 2], -max_shift, max_shift)
    return points + shift[:, None] * frame[:, :, 2]


# --------------------------------------------------------------------------- MLS baseline


def mls_upsample(xyz: np.ndarray, ratio: int = 4, *, candidates_k: int = 6,
                 fit_k: int = 16) -> np.ndarray:
    """Midpoints projected onto MLS quadric fits, then resampled evenly (classical).

    1. Candidates: the midpoints of every point with each of its ``candidates_k`` nearest
       neighbours (each pair once): more candidates than needed, covering every gap.
    2. Each candidate is projected onto the MLS quadric surface of its ``fit_k`` nearest
       input points (:func:`mls_quadric_project`): midpoints of chords of a curved
       surface lie inside it; the projection puts them back on it.
    3. (r-1)·N of the projected candidates are chosen by farthest point sampling that
       starts from the input points (:func:`fps_extend`), filling the largest gaps first:
       an even density, as edge-aware resampling (EAR) and LOP aim for.

    The computation runs on the unit-sphere-normalized cloud (scale-free parameters).

    Args:
        xyz: (N, 3) finite points, N >= max(ratio, 6).
    Returns:
        (r·N, 3) float32: the N input points first (in order), then the generated ones.
    """
    pts = _check_cloud(xyz, ratio, max(ratio, 6))
    unit, centre, radius = _normalize(pts)
    n = unit.shape[0]
    k = min(candidates_k, n - 1)
    _, idx = nearest_neighbors(unit, unit, k=k + 1)
    nbr = _drop_self(idx, k + 1)  # (N, k)
    i = np.repeat(np.arange(n), k)
    j = nbr.ravel()
    pairs = np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], 1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    cand = 0.5 * (unit[pairs[:, 0]] + unit[pairs[:, 1]])
    need = (ratio - 1) * n
    if cand.shape[0] < need:  # tiny clouds: add jittered copies of the midpoints
        rng = np.random.default_rng(0)
        extra = cand[rng.integers(cand.shape[0], size=need - cand.shape[0])]
        cand = np.concatenate([cand, extra + 1e-4 * rng.standard_normal(extra.shape)])
    cand = mls_quadric_project(cand, unit, k=fit_k)
    chosen = cand[fps_extend(unit, cand, need)]
    return np.concatenate([pts, chosen * radius + centre]).astype(np.float32)


# --------------------------------------------------------------------------- Poisson baseline


def open3d_available() -> str | None:
    """None when open3d imports, else the reason it does not (for skipped baselines)."""
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: a system library it links is missing
        hint = (" (open3d needs the system library libusb-1.0-0: apt-get install "
                "libusb-1.0-0)" if "libusb" in str(e) else " (pip install -e '.[eval]')")
        return f"open3d not importable: {e}{hint}"
    return None


def poisson_upsample(xyz: np.ndarray, ratio: int = 4, *, depth: int = 8,
                     normal_k: int = 10, density_quantile: float = 0.05,
                     max_gap: float = 2.0, candidates: int = 4,
                     seed: int = 0) -> np.ndarray:
    """Screened Poisson surface reconstruction (Open3D) + even sampling of the mesh.

    Normals: PCA of the ``normal_k`` nearest neighbours, oriented consistently by
    Open3D's tangent-plane propagation (a minimum spanning tree over the kNN graph);
    on 2048-point inputs a larger graph (k=16) let the propagation jump across thin parts
    and flip whole regions (up to 30% of the normals against the reference meshes of the
    dev split, <= 1% of most shapes with k=10), which turns the Poisson surface into
    doubled sheets.
    The mesh vertices with the lowest ``density_quantile`` of Poisson densities (where the
    implicit surface was extrapolated far from any input point) and the triangles that
    use them are removed, and so are the vertices farther than ``max_gap`` times the
    median nearest-neighbour spacing from every input point (Poisson closes thin or open
    shapes with bubbles of surface no input point supports). The N input points are kept
    and (r-1)·N points are added: ``candidates``·(r-1)·N points drawn uniformly by area on
    the cropped mesh, of which (r-1)·N are chosen by farthest point sampling that starts
    from the input points (even density); samples farther than ``max_gap`` spacings from
    every input point are dropped before that (triangles reach past the vertex crop).
    Open3D's reconstruction is multithreaded: results vary slightly from run to run.

    Args:
        xyz: (N, 3) finite points, N >= max(ratio, normal_k).
    Returns:
        (r·N, 3) float32: the N input points first, then the points on the mesh.
    """
    import open3d as o3d

    from ..geometry.surface_sampling import sample_triangles

    pts = _check_cloud(xyz, ratio, max(ratio, normal_k))
    unit, centre, radius = _normalize(pts)
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(unit))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(normal_k))
    pcd.orient_normals_consistent_tangent_plane(normal_k)
    mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
        pcd, depth=depth)
    density = np.asarray(density)
    verts = np.asarray(mesh.vertices)
    tree = NeighborIndex(unit)
    spacing = float(np.median(tree.query(unit, k=2)[0][:, 1]))
    far = tree.query(verts)[0] > max_gap * spacing
    mesh.remove_vertices_by_mask((density < np.quantile(density, density_quantile)) | far)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    need = (ratio - 1) * unit.shape[0]
    if faces.shape[0] == 0:
        raise ValueError("Poisson reconstruction produced no surface")
    rng = np.random.default_rng(seed)
    cand, _ = sample_triangles(verts[faces], candidates * need, rng)
    near = tree.query(cand)[0] <= max_gap * spacing
    if near.sum() >= need:  # crop the samples too: triangles can span past the vertex crop
        cand = cand[near]
    chosen = cand[fps_extend(unit, cand, need)]
    return np.concatenate([pts, chosen * radius + centre]).astype(np.float32)
