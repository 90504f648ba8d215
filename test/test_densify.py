"""Scan densification core: crop, nearest-first cap, sources in scan indices."""

import numpy as np

from sspu_ros.config import load_config
from sspu_ros.densify import crop_mask, densify_points
from sspu_ros.upsampler import load_upsampler


def test_crop_cap_and_sources_index_the_scan():
    rng = np.random.default_rng(0)
    near = np.c_[rng.uniform(2, 4, (50, 2)), rng.uniform(-1, 1, 50)]
    far = np.c_[rng.uniform(30, 40, (50, 2)), rng.uniform(-1, 1, 50)]
    high = np.c_[rng.uniform(2, 4, (10, 2)), np.full(10, 9.0)]  # above crop.max_z
    xyz = np.vstack([far, near, high]).astype(np.float32)
    params = load_config(overrides={"max_points": 60})
    assert crop_mask(xyz, params).sum() == 100
    r = densify_points(xyz, load_upsampler("midpoint", 4), params)
    assert (r.n_selected, r.n_capped, r.n_cropped_out) == (60, 40, 10)
    assert r.generated.shape == (180, 3) and r.sources.shape == (180, 2)
    # the cap keeps the nearest: all 50 near points are densified, only 10 of the far ones
    assert set(np.unique(r.sources[:, 0])) >= set(range(50, 100))
    np.testing.assert_allclose(r.generated, 0.5 * (xyz[r.sources[:, 0]] + xyz[r.sources[:, 1]]),
                               atol=1e-5)
