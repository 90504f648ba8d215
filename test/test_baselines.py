import numpy as np
import pytest

from sspu_ros.baselines import midpoint_upsample
from sspu_ros.sample_data import torus_knot_surface


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
