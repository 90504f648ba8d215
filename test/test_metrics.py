"""Evaluation metrics: CD/HD conventions and exact point-to-mesh distances."""

import numpy as np
import pytest

from sspu_ros.evaluation.metrics import chamfer_hausdorff, normalize_unit_sphere_np
from sspu_ros.geometry.mesh_distance import MeshDistance, closest_points_on_triangles

TRI = np.array([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]])


@pytest.mark.parametrize("p, q", [
    ([0.5, 0.5, 3.0], [0.5, 0.5, 0.0]),    # above the face
    ([-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]),  # vertex A region
    ([3.0, -1.0, 1.0], [2.0, 0.0, 0.0]),   # vertex B region
    ([-1.0, 3.0, 0.0], [0.0, 2.0, 0.0]),   # vertex C region
    ([1.0, -2.0, 0.0], [1.0, 0.0, 0.0]),   # edge AB
    ([-2.0, 1.0, 5.0], [0.0, 1.0, 0.0]),   # edge AC
    ([2.0, 2.0, 0.0], [1.0, 1.0, 0.0]),    # edge BC
])
def test_closest_point_by_hand(p, q):
    a, b, c = TRI
    got = closest_points_on_triangles(np.array([p]), a[None], b[None], c[None])[0]
    np.testing.assert_allclose(got, q, atol=1e-12)


def test_closest_point_never_beaten_by_dense_samples():
    rng = np.random.default_rng(0)
    a, b, c, p = rng.normal(size=(4, 2000, 3))
    q = closest_points_on_triangles(p, a, b, c)
    d = np.linalg.norm(p - q, axis=1)
    u, v = np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 60))
    keep = u + v <= 1
    u, v = u[keep], v[keep]
    samples = a[:, None] + u[None, :, None] * (b - a)[:, None] + v[None, :, None] * (c - a)[:, None]
    brute = np.linalg.norm(samples - p[:, None], axis=2).min(axis=1)
    assert (d <= brute + 1e-12).all()          # never farther than any point of the triangle
    assert (brute - d).max() < 0.05             # and close to the sampled optimum
    # q lies on the triangle: barycentric coordinates in [0, 1]
    m = np.stack([b - a, c - a], axis=2)
    lam = np.linalg.lstsq(m[0], (q - a)[0], rcond=None)[0]
    assert lam.min() >= -1e-9 and lam.sum() <= 1 + 1e-9


def test_mesh_distance_equals_all_triangles_on_a_closed_mesh():
    # octahedron: 8 faces; points around it at several scales
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(500, 3)) * rng.uniform(0.1, 2.0, size=(500, 1))
    tri = v[f]
    exact = np.stack([np.linalg.norm(pts - closest_points_on_triangles(
        pts, *(np.repeat(t[None], len(pts), 0) for t in tri[i])), axis=1)
        for i in range(len(f))]).min(axis=0)
    got = MeshDistance(v, f, k=8)(pts)
    np.testing.assert_allclose(got, exact, atol=1e-12)
    # points on the face x + y + z = 1 (first octant) have distance 0
    on = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(MeshDistance(v, f)(on), 0.0, atol=1e-12)


def test_cd_hd_by_brute_force_on_a_real_shape(data_dir):
    from sspu_ros.io.cloud_files import read_cloud
    from sspu_ros.runtime.midpoint import midpoint_upsample

    inp = sorted((data_dir / "pugan-dev" / "input").glob("*.xyz"))[0]
    x = read_cloud(inp).xyz
    gt = read_cloud(data_dir / "pugan-dev" / "gt" / inp.name).xyz
    pred = midpoint_upsample(x, 4)
    p, g = normalize_unit_sphere_np(pred), normalize_unit_sphere_np(gt)
    d2 = np.full((len(p), len(g)), np.inf)
    for s in range(0, len(p), 1024):  # brute force, no KD-tree
        d2[s:s + 1024] = ((p[s:s + 1024, None] - g[None]) ** 2).sum(-1)
    cd = d2.min(1).mean() + d2.min(0).mean()
    hd = d2.min(1).max() + d2.min(0).max()
    got_cd, got_hd = chamfer_hausdorff(pred, gt)
    assert got_cd == pytest.approx(cd, rel=1e-9) and got_hd == pytest.approx(hd, rel=1e-9)
    # the guide's normalization: own centroid at 0, own max radius 1
    assert np.linalg.norm(p, axis=1).max() == pytest.approx(1.0)
