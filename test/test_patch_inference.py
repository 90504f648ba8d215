"""The patch protocol: coverage, copy ownership, exact sizes, de-normalization."""

import numpy as np
import pytest
import torch

from sspu_ros.runtime.patch_inference import _owners, upsample_with_patches


def _cloud(n=600, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    return (5.0 * v / np.linalg.norm(v, axis=1, keepdims=True) + [10, -3, 2]).astype(np.float32)


def _offset_fn(ratio, delta):
    """Copy j of every point moved by j*delta (in patch-normalized units)."""
    def fn(patches):
        rep = patches.repeat_interleave(ratio, dim=1)
        j = torch.arange(ratio).repeat(patches.shape[1])[None, :, None]
        return rep + j * torch.tensor(delta)
    return fn


def test_owner_is_the_patch_where_the_point_is_closest_to_the_seed():
    idx = torch.tensor([[0, 1, 2], [2, 3, 1], [4, 2, 0]])
    owner, pos = _owners(idx, 6)
    assert owner.tolist() == [0, 0, 1, 1, 2, -1]
    assert pos.tolist() == [0, 1, 0, 1, 0, 0]


@pytest.mark.parametrize("ratio", [2, 4])
def test_identity_generator_gives_each_point_r_times_exactly(ratio):
    x = _cloud()
    out = upsample_with_patches(x, lambda p: p.repeat_interleave(ratio, dim=1), ratio,
                                patch_size=64)
    assert out.shape == (ratio * len(x), 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(len(x), ratio, 3),
                               np.repeat(x[:, None], ratio, axis=1), atol=1e-4)


def test_keep_input_puts_inputs_first_and_drops_the_copy_nearest_each_input():
    x = _cloud()
    out = upsample_with_patches(x, _offset_fn(4, [0.01, 0, 0]), 4, patch_size=64,
                                keep_input=True)
    np.testing.assert_array_equal(out[:600], x)
    gen = out[600:].reshape(600, 3, 3)
    dx = gen[..., 0] - x[:, None, 0]  # copies 1..3 kept (copy 0 sits on the input)
    assert (dx > 0).all()
    assert np.all(np.diff(dx, axis=1) > 0)


def test_fps_merge_has_exact_size_and_stays_on_the_points():
    from scipy.spatial import cKDTree

    x = _cloud()
    for keep in (False, True):
        out = upsample_with_patches(x, _offset_fn(4, [0.0, 0.0, 0.0]), 4, patch_size=64,
                                    merge="fps", keep_input=keep)
        assert out.shape == (2400, 3)
        assert cKDTree(x).query(out)[0].max() < 1e-4  # every output is a copy of an input


def test_bad_input():
    with pytest.raises(ValueError, match="merge"):
        upsample_with_patches(_cloud(), lambda p: p, 1, merge="nope")
    with pytest.raises(ValueError, match="N >= 2"):
        upsample_with_patches(np.zeros((1, 3), np.float32), lambda p: p, 4)
