import numpy as np
import pytest

from sspu_ros.runtime.midpoint import midpoint_upsample
from sspu_ros.simulation.sample_surface import torus_knot_surface


def test_midpoints_of_a_hand_made_line():
    # points on a line at 0, 1, 3, 7: nearest neighbours are known by hand
    x = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]], np.float32)
    out = midpoint_upsample(x, ratio=2)
    assert out.shape == (8, 3)
    np.testing.assert_array_equal(out[:4], x)
    np.testing.assert_allclose(out[4:, 0], [0.5, 0.5, 2.0, 5.0])


def test_ratio_four_uses_three_nearest_and_keeps_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    out = midpoint_upsample(x, 4)
    assert out.shape == (200, 3)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :3]
    expect = 0.5 * (x[:, None] + x[nn])
    got = out[50:].reshape(50, 3, 3)
    np.testing.assert_allclose(np.sort(got, axis=1), np.sort(expect, axis=1), atol=1e-6)


def test_duplicate_points_never_pair_with_themselves():
    x = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    out = midpoint_upsample(x, 2)
    assert out.shape == (8, 3)  # shape holds even when kNN ties put another index first


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least ratio"):
        midpoint_upsample(np.zeros((3, 3), np.float32), 4)
    with pytest.raises(ValueError, match="shape"):
        midpoint_upsample(np.zeros((10, 2), np.float32), 4)


def test_sample_is_deterministic_and_normalised():
    a, b = torus_knot_surface(2048, seed=0), torus_knot_surface(2048, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2048, 3) and a.dtype == np.float32
    assert np.linalg.norm(a, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(a.mean(axis=0)).max() < 1e-5
    assert not np.array_equal(a, torus_knot_surface(2048, seed=1))


def test_midpoint_sources_name_the_two_points_of_each_midpoint():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    dense, src = midpoint_upsample(x, 3, return_sources=True)
    assert src.shape == (80, 2) and src.dtype == np.int64
    np.testing.assert_array_equal(src[:, 0], np.repeat(np.arange(40), 2))
    np.testing.assert_allclose(dense[40:], 0.5 * (x[src[:, 0]] + x[src[:, 1]]), atol=1e-6)
    assert (src[:, 0] != src[:, 1]).all()


# --------------------------------------------------------------------------- fps / MLS / Poisson

from sspu_ros.evaluation.baselines import (  # noqa: E402
    fps_extend,
    mls_quadric_project,
    mls_upsample,
    open3d_available,
    poisson_upsample,
)


def _sphere(n, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_fps_extend_on_a_line_by_hand():
    fixed = np.zeros((1, 3))
    cand = np.array([[1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]], float)
    # 10 is farthest from {0}; then from {0, 10}: 1 -> 1, 2 -> 2, 3 -> 3: pick 3
    np.testing.assert_array_equal(fps_extend(fixed, cand, 2), [3, 2])
    # without fixed points every candidate starts at infinity: the first (index 0) wins,
    # then the farthest from it (10), then 3 (min(2, 7) = 2 beats 2 -> min(1, 8) = 1)
    np.testing.assert_array_equal(fps_extend(np.zeros((0, 3)), cand, 3), [0, 3, 2])
    assert fps_extend(fixed, cand, 0).shape == (0,)
    with pytest.raises(ValueError, match="n must be"):
        fps_extend(fixed, cand, 5)


def test_mls_projection_is_exact_on_a_plane():
    rng = np.random.default_rng(3)
    uv = rng.uniform(-1, 1, size=(400, 2))
    a, b = np.array([1.0, 0.0, 0.3]), np.array([0.0, 1.0, -0.2])
    normal = np.cross(a, b) / np.linalg.norm(np.cross(a, b))
    cloud = uv[:, :1] * a + uv[:, 1:] * b
    off = 0.5 * (cloud[:50] + cloud[50:100]) + 0.01 * normal  # 0.01 off the plane
    out = mls_quadric_project(off, cloud, max_shift=1.0)
    np.testing.assert_allclose(out @ normal, 0.0, atol=1e-9)
    # the clip bounds the move along the normal
    clipped = mls_quadric_project(off, cloud, max_shift=0.004)
    np.testing.assert_allclose(clipped @ normal, 0.006, atol=1e-9)


def test_mls_projection_puts_chord_midpoints_back_on_a_sphere():
    from scipy.spatial import cKDTree

    cloud = _sphere(2000).astype(np.float64)
    _, idx = cKDTree(cloud).query(cloud, 4)
    mid = 0.5 * (cloud + cloud[idx[:, 3]])  # inside the sphere by ~d^2/8
    before = np.abs(np.linalg.norm(mid, axis=1) - 1).mean()
    after = np.abs(np.linalg.norm(mls_quadric_project(mid, cloud), axis=1) - 1).mean()
    assert after < 0.1 * before


def test_mls_upsample_keeps_inputs_and_stays_on_the_surface():
    x = _sphere(1024)
    out = mls_upsample(x, 4)
    assert out.shape == (4096, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:1024], x)
    r = np.linalg.norm(out[1024:], axis=1)
    mid = midpoint_upsample(x, 4)[1024:]
    assert np.abs(r - 1).max() < 0.01
    assert np.abs(r - 1).mean() < 0.2 * np.abs(np.linalg.norm(mid, axis=1) - 1).mean()
    # no generated point duplicates an input (FPS from the inputs fills gaps first)
    from scipy.spatial import cKDTree

    assert cKDTree(x).query(out[1024:])[0].min() > 1e-4
    with pytest.raises(ValueError, match="at least"):
        mls_upsample(x[:5], 4)
    with pytest.raises(ValueError, match="NaN"):
        mls_upsample(np.full((10, 3), np.nan, np.float32), 4)


def test_mls_upsample_scale_and_translation_equivariant():
    x = _sphere(300, seed=4)
    a = mls_upsample(x, 3)
    b = mls_upsample(x * 7.0 + np.float32(100.0), 3)
    np.testing.assert_allclose(b, a * 7.0 + 100.0, atol=2e-3)


@pytest.mark.skipif(open3d_available() is not None, reason=str(open3d_available()))
def test_poisson_upsample_samples_the_reconstructed_sphere():
    x = _sphere(1500, seed=5)
    out = poisson_upsample(x * 2.0, 4, depth=6)
    assert out.shape == (6000, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:1500], x * 2.0)
    r = np.linalg.norm(out[1500:], axis=1)
    assert np.abs(r - 2.0).mean() < 0.03 and np.abs(r - 2.0).max() < 0.15
