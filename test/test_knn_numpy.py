"""The numpy kNN helper (sspu_ros.geometry.knn_numpy): hand-checked neighbours, the
cKDTree shape conventions, the distance bound, and agreement with brute force."""

import numpy as np
import pytest

from sspu_ros.geometry.knn_numpy import NeighborIndex, nearest_neighbors

LINE = np.array([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]])


def test_hand_made_line():
    d, i = nearest_neighbors(LINE, np.array([[0.9, 0, 0], [6.0, 0, 0]]), k=2)
    assert i.tolist() == [[1, 0], [3, 2]]
    np.testing.assert_allclose(d, [[0.1, 0.9], [1.0, 3.0]])


def test_k1_gives_flat_arrays_and_k_above_one_gives_columns():
    d, i = nearest_neighbors(LINE, LINE, k=1)
    assert d.shape == i.shape == (4,) and i.tolist() == [0, 1, 2, 3] and not d.any()
    d, i = nearest_neighbors(LINE, LINE, k=3)
    assert d.shape == i.shape == (4, 3) and i[:, 0].tolist() == [0, 1, 2, 3]


def test_max_distance_leaves_missing_slots_as_inf_and_n():
    d, i = nearest_neighbors(LINE, np.array([[2.9, 0, 0]]), k=3, max_distance=2.5)
    assert i.tolist() == [[2, 1, 4]]  # 0 is 2.9 away: beyond the bound
    assert np.isinf(d[0, 2]) and d[0, 0] == pytest.approx(0.1)


def test_more_neighbours_than_points():
    d, i = nearest_neighbors(LINE[:2], LINE[:1], k=3)
    assert i.tolist() == [[0, 1, 2]] and np.isinf(d[0, 2])


def test_index_is_reusable_and_rejects_bad_input():
    idx = NeighborIndex(LINE)
    assert idx.n == 4 and idx.query(LINE[2:3])[1].tolist() == [2]
    with pytest.raises(ValueError, match="k must be >= 1"):
        idx.query(LINE, k=0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        NeighborIndex(np.zeros(5))


def test_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    ref, q = rng.random((500, 3)), rng.random((60, 3))
    d, i = nearest_neighbors(ref, q, k=5, workers=-1)
    full = np.linalg.norm(q[:, None] - ref[None], axis=2)
    order = np.argsort(full, axis=1)[:, :5]
    assert (i == order).all()
    np.testing.assert_allclose(d, np.take_along_axis(full, order, 1))
