"""Tests for sspu_ros.geometry.knn: hand-computable cases first, then brute-force comparisons."""

import io
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from sspu_ros.geometry import knn as geometry_knn
from sspu_ros.geometry import sampling as geometry_sampling
from sspu_ros.geometry.knn import gather_points, knn, square_distance
from sspu_ros.geometry.patches import (
    denormalize,
    extract_patches,
    normalize_unit_sphere,
    seed_count,
)
from sspu_ros.geometry.sampling import ball_query, farthest_point_sample

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FPS_IMPLEMENTATIONS = {
    "public": lambda xyz, s, start: farthest_point_sample(xyz, s),
    "numpy": geometry_sampling._fps_numpy,
    "torch": geometry_sampling._fps_torch,
}


def _line_points(dtype=torch.float32):
    """(1, 4, 3): x = 0, 1, 3, 7 on the x axis."""
    x = torch.tensor([0.0, 1.0, 3.0, 7.0], dtype=dtype)
    return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=-1)[None]


def _grid_5x5():
    """(1, 25, 3) unit grid in z=0, row-major: index = 5 * row + col, xy = (col, row)."""
    row, col = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    return torch.stack([col, row, torch.zeros_like(row)], dim=-1).reshape(1, 25, 3)


def _fps_reference(xyz: np.ndarray, n_samples: int, start: int = 0) -> np.ndarray:
    """Plain FPS on (N, C): each step recomputes the distance to the whole selected set
    (O(S^2 N), no running minimum); ties to the lowest unselected index."""
    selected = [start]
    for _ in range(n_samples - 1):
        diff = xyz[:, None, :] - xyz[selected][None, :, :]  # (N, s, C)
        dist2 = (diff**2).sum(-1).min(axis=1)
        dist2[selected] = -1.0
        selected.append(int(dist2.argmax()))
    return np.array(selected)


# ---------------------------------------------------------------- square_distance


def test_square_distance_hand_case():
    a = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]])
    b = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]])
    expected = torch.tensor([[[0.0, 25.0, 9.0], [9.0, 12.0, 0.0]]])
    assert torch.allclose(square_distance(a, b), expected, atol=1e-5)


def test_square_distance_matches_direct_far_from_origin_and_is_nonnegative():
    torch.manual_seed(0)
    offset = torch.tensor([1000.0, -500.0, 30.0])  # LiDAR-like: patch far from the origin
    a = torch.rand(2, 40, 3) + offset
    b = torch.rand(2, 50, 3) + offset
    direct = ((a[:, :, None].double() - b[:, None].double()) ** 2).sum(-1)
    got = square_distance(a, b)
    assert got.shape == (2, 40, 50) and got.dtype == torch.float32
    assert (got >= 0).all()
    assert torch.allclose(got.double(), direct, atol=1e-5)  # the mean shift keeps precision
    assert torch.all(square_distance(a, a).diagonal(dim1=1, dim2=2) < 1e-5)


def test_square_distance_gradient_matches_direct():
    torch.manual_seed(1)
    a = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 5, 6, dtype=torch.float64)
    grads = torch.autograd.grad((square_distance(a, b) * weights).sum(), (a, b))
    direct = (((a[:, :, None] - b[:, None]) ** 2).sum(-1) * weights).sum()
    expected = torch.autograd.grad(direct, (a, b))
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-10)


# ---------------------------------------------------------------- knn


def test_knn_line_hand_case():
    pts = _line_points()
    dist2, idx = knn(pts, pts, 2)
    assert idx.tolist() == [[[0, 1], [1, 0], [2, 1], [3, 2]]]
    assert torch.allclose(dist2, torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 4.0], [0.0, 16.0]]]))
    dist2, idx = knn(pts, pts, 2, exclude_self=True)
    assert idx.tolist() == [[[1, 2], [0, 2], [1, 0], [2, 1]]]
    assert torch.allclose(dist2, torch.tensor([[[1.0, 9.0], [1.0, 4.0], [4.0, 9.0], [16.0, 36.0]]]))
    dist2, idx = knn(torch.tensor([[[2.9, 0.0, 0.0]]]), pts, 3)
    assert idx.tolist() == [[[2, 1, 0]]] and dtype_is_int64(idx)


def dtype_is_int64(t: torch.Tensor) -> bool:
    return t.dtype == torch.int64


def test_knn_matches_ckdtree_random():
    torch.manual_seed(2)
    query = torch.rand(3, 200, 3, dtype=torch.float64)
    ref = torch.rand(3, 300, 3, dtype=torch.float64)
    dist2, idx = knn(query, ref, 8)
    for b in range(3):
        tree_dist, tree_idx = cKDTree(ref[b].numpy()).query(query[b].numpy(), k=8)
        assert np.array_equal(idx[b].numpy(), tree_idx)
        assert np.allclose(dist2[b].numpy(), tree_dist**2, atol=1e-12)
    assert (dist2[..., 1:] >= dist2[..., :-1]).all()


def test_knn_exclude_self_matches_ckdtree_random():
    torch.manual_seed(3)
    pts = torch.rand(2, 257, 3, dtype=torch.float64)
    dist2, idx = knn(pts, pts, 5, exclude_self=True, chunk_size=50)
    for b in range(2):
        tree_dist, tree_idx = cKDTree(pts[b].numpy()).query(pts[b].numpy(), k=6)
        assert np.array_equal(tree_idx[:, 0], np.arange(257))  # no duplicates here
        assert np.array_equal(idx[b].numpy(), tree_idx[:, 1:])
        assert np.allclose(dist2[b].numpy(), tree_dist[:, 1:] ** 2, atol=1e-12)


def test_knn_chunked_equals_unchunked():
    torch.manual_seed(4)
    query, ref = torch.rand(2, 103, 3), torch.rand(2, 180, 3)
    whole = knn(query, ref, 7, chunk_size=10_000)
    for chunk in (1, 7, 50):
        parts = knn(query, ref, 7, chunk_size=chunk)
        assert torch.equal(parts[1], whole[1])
        assert torch.allclose(parts[0], whole[0], atol=1e-6)  # matmul blocking may round apart
    whole_ex = knn(ref, ref, 4, exclude_self=True)
    parts_ex = knn(ref, ref, 4, exclude_self=True, chunk_size=13)
    assert torch.equal(parts_ex[1], whole_ex[1])


def test_knn_default_chunking_follows_memory_budget(monkeypatch):
    torch.manual_seed(5)
    pts = torch.rand(2, 60, 3)
    whole = knn(pts, pts, 3, exclude_self=True)
    calls = []
    real_block = geometry_knn._knn_block

    def counting_block(query, *args):
        calls.append(query.shape[1])
        return real_block(query, *args)

    # A budget of 10 rows: B * N * 4 bytes per row = 480 bytes.
    monkeypatch.setattr(geometry_knn, "CHUNK_BUDGET_BYTES", 4800)
    monkeypatch.setattr(geometry_knn, "_knn_block", counting_block)
    chunked = knn(pts, pts, 3, exclude_self=True)
    assert calls == [10] * 6
    assert torch.equal(chunked[1], whole[1])


def test_knn_exclude_self_with_duplicate_points():
    # Points 0 and 1 coincide; point 2..6 are five copies of another point (more than k+1).
    pts = torch.tensor(
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]] + [[5.0, 5.0, 5.0]] * 5 + [[0.0, 0.0, 1.0]]
    )[None]
    dist2, idx = knn(pts, pts, 2, exclude_self=True)
    own = torch.arange(8).view(1, 8, 1)
    assert not (idx == own).any()
    assert idx[0, 0].tolist() == [1, 7] and idx[0, 1].tolist() == [0, 7]
    assert torch.all(dist2[0, 2:7] < 1e-5)  # each copy's neighbours are other copies
    assert torch.all((idx[0, 2:7] >= 2) & (idx[0, 2:7] <= 6))
    assert idx[0, 7].tolist() in ([0, 1], [1, 0])


def test_knn_validates_arguments():
    pts = torch.rand(1, 4, 3)
    with pytest.raises(ValueError, match="exceeds"):
        knn(pts, pts, 5)
    with pytest.raises(ValueError, match="exceeds"):
        knn(pts, pts, 4, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        knn(pts[:, :3], pts, 2, exclude_self=True)
    with pytest.raises(ValueError, match="batch size"):
        knn(torch.rand(2, 4, 3), pts, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        knn(pts, pts, 2, chunk_size=0)


def test_knn_onnx_export_matches_torch():
    ort = pytest.importorskip("onnxruntime")

    class KnnModule(torch.nn.Module):
        def forward(self, query, ref):
            dist2, idx = knn(query, ref, 4, chunk_size=1 << 30)
            self_dist2, self_idx = knn(ref, ref, 3, exclude_self=True, chunk_size=1 << 30)
            return dist2, idx, self_dist2, self_idx

    torch.manual_seed(6)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the shape checks
        torch.onnx.export(
            KnnModule(),
            (torch.rand(2, 20, 3), torch.rand(2, 30, 3)),
            buffer,
            dynamo=False,  # the dynamo exporter needs onnxscript, which we do not ship
            input_names=["query", "ref"],
            output_names=["dist2", "idx", "self_dist2", "self_idx"],
            dynamic_axes={"query": {0: "B", 1: "M"}, "ref": {0: "B", 1: "N"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    query, ref = torch.rand(3, 50, 3), torch.rand(3, 70, 3)  # other sizes than exported
    outputs = session.run(None, {"query": query.numpy(), "ref": ref.numpy()})
    expected = KnnModule()(query, ref)
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == tuple(want.shape)
        if want.dtype == torch.int64:
            assert np.array_equal(got, want.numpy())
        else:
            assert np.allclose(got, want.numpy(), atol=1e-6)


# ---------------------------------------------------------------- gather_points


def test_gather_points_any_index_rank_and_values():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    idx = torch.tensor([[[3, 0], [1, 1], [2, 3]], [[0, 0], [0, 2], [3, 1]]])  # (2, 3, 2)
    out = gather_points(x, idx)
    assert out.shape == (2, 3, 2, 3)
    for b in range(2):
        assert torch.equal(out[b], x[b][idx[b]])
    assert torch.equal(gather_points(x, torch.tensor([[2], [1]])), x[[0, 1], [2, 1]][:, None])
    flat = torch.tensor([[0, 1, 2, 3, 3], [1, 1, 1, 0, 2]])
    assert torch.equal(gather_points(x, flat)[1, 2], x[1, 1])


def test_gather_points_gradient_flows():
    torch.manual_seed(7)
    x = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 0, 4], [2, 3, 3]])
    gather_points(x, idx).sum().backward()
    expected = torch.zeros(2, 5, 3, dtype=torch.float64)
    expected[0, 0], expected[0, 4], expected[1, 2], expected[1, 3] = 2, 1, 1, 2
    assert torch.equal(x.grad, expected)
    idx3 = torch.randint(0, 5, (2, 3, 4))
    assert torch.autograd.gradcheck(lambda t: gather_points(t, idx3), (x,))


# ---------------------------------------------------------------- farthest point sampling


@pytest.mark.parametrize("impl", FPS_IMPLEMENTATIONS)
def test_fps_square_with_centre(impl):
    fps = FPS_IMPLEMENTATIONS[impl]
    # Corners of a unit square, then its centre; start at index 0 = corner (0, 0).
    square = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]
    )[None]
    start = torch.zeros(1, dtype=torch.long)
    # Opposite corner first; corners 1 and 3 tie (distance 1): the lower index wins.
    assert fps(square, 5, start).tolist() == [[0, 2, 1, 3, 4]]
    # Centre first: all corners tie at 0.5 -> corner 1; then the other three corners still
    # tie at 0.5 (their distance to the centre) -> corner 2.
    centre_first = square[:, [4, 0, 1, 2, 3]]
    assert fps(centre_first, 3, start).tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("impl", FPS_IMPLEMENTATIONS)
def test_fps_matches_reference_random_float64(impl):
    fps = FPS_IMPLEMENTATIONS[impl]
    rng = np.random.default_rng(8)
    xyz = rng.random((3, 400, 3))
    got = fps(torch.from_numpy(xyz), 60, torch.zeros(3, dtype=torch.long))
    for b in range(3):
        assert np.array_equal(got[b].numpy(), _fps_reference(xyz[b], 60))


def test_fps_numpy_and_torch_paths_agree_float32_with_duplicates():
    torch.manual_seed(9)
    xyz = torch.rand(2, 300, 3)
    xyz[:, 150:] = xyz[:, :150]  # every point twice
    start = torch.tensor([0, 17])
    a = geometry_sampling._fps_numpy(xyz, 300, start)
    b = geometry_sampling._fps_torch(xyz, 300, start)
    assert torch.equal(a, b)
    for row in a:  # all N selected: distinct indices, a permutation
        assert sorted(row.tolist()) == list(range(300))
    assert set(a[0, :150].remainder(150).tolist()) == set(range(150))  # copies come last


def test_fps_start_options_and_errors():
    torch.manual_seed(10)
    xyz = torch.rand(4, 50, 3)
    first = farthest_point_sample(xyz, 10)
    assert first.dtype == torch.int64 and first.shape == (4, 10)
    assert (first[:, 0] == 0).all()
    draws = [
        farthest_point_sample(xyz, 10, start="random", generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0][:, 0], draws[2][:, 0])
    for b in range(4):  # each row is FPS started at that row's random start
        start = draws[0][b : b + 1, 0]
        assert torch.equal(geometry_sampling._fps_torch(xyz[b : b + 1], 10, start)[0], draws[0][b])
    assert farthest_point_sample(xyz, 0).shape == (4, 0)
    assert farthest_point_sample(xyz, 50)[0].sort().values.tolist() == list(range(50))
    with pytest.raises(ValueError, match="n_samples"):
        farthest_point_sample(xyz, 51)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(xyz, 5, start="last")


# ---------------------------------------------------------------- ball query


def test_ball_query_grid_hand_case():
    grid = _grid_5x5()
    query = grid[:, [12, 0, 2]]  # centre, corner, edge middle
    idx, count = ball_query(query, grid, 1.5, 4)  # sqrt(2) < 1.5 < 2: the 3x3 block
    assert count.tolist() == [[9, 4, 6]]  # true counts, not capped at 4
    assert idx[0, 0].tolist() == [6, 7, 8, 11]  # first 4 in reference order
    assert idx[0, 1].tolist() == [0, 1, 5, 6]
    assert idx[0, 2].tolist() == [1, 2, 3, 6]
    idx, count = ball_query(query, grid, 1.5, 8)
    assert idx[0, 1].tolist() == [0, 1, 5, 6, 0, 0, 0, 0]  # padded with the first found
    idx, count = ball_query(query, grid, 1.0, 3)  # strictly inside: the 4-neighbours are out
    assert count.tolist() == [[1, 1, 1]] and idx[0, 0].tolist() == [12, 12, 12]


def test_ball_query_empty_ball_pads_with_nearest_and_n_samples_beyond_n():
    grid = _grid_5x5()
    far = torch.tensor([[[10.0, 9.0, 0.0], [-3.0, 0.2, 0.0]]])
    idx, count = ball_query(far, grid, 0.5, 3)
    assert count.tolist() == [[0, 0]]
    assert idx.tolist() == [[[24, 24, 24], [0, 0, 0]]]
    idx, count = ball_query(grid[:, :1], grid, 100.0, 30)  # all 25 inside, 30 slots
    assert count.tolist() == [[25]]
    assert idx[0, 0].tolist() == list(range(25)) + [0] * 5


def test_ball_query_radius_tensors():
    grid = _grid_5x5().expand(2, -1, -1).contiguous()
    query = grid[:, [12, 0]]
    _, count = ball_query(query, grid, torch.tensor([1.5, 1.1]), 4)  # per cloud
    assert count.tolist() == [[9, 4], [5, 3]]
    _, count = ball_query(query, grid, torch.tensor([[1.5, 2.5], [0.5, 1.1]]), 4, chunk_size=1)
    assert count.tolist() == [[9, 8], [1, 3]]  # per query, chunked
    with pytest.raises(ValueError, match="radius"):
        ball_query(query, grid, torch.ones(3), 4)
    with pytest.raises(ValueError, match="radius"):
        ball_query(query, grid, -1.0, 4)


def test_ball_query_matches_ckdtree_random():
    rng = np.random.default_rng(11)
    ref = rng.random((2, 500, 3))
    query = ref[:, ::5]
    idx, count = ball_query(torch.from_numpy(query), torch.from_numpy(ref), 0.15, 16, chunk_size=30)
    for b in range(2):
        tree = cKDTree(ref[b])
        assert np.array_equal(
            count[b].numpy(), tree.query_ball_point(query[b], 0.15, return_length=True)
        )
        for m, found in enumerate(tree.query_ball_point(query[b], 0.15)):
            found = sorted(found)[:16]
            expected = found + [found[0]] * (16 - len(found))
            assert idx[b, m].tolist() == expected


# ---------------------------------------------------------------- batch / device behaviour


def test_batch_items_are_independent():
    torch.manual_seed(12)
    pts = torch.rand(3, 120, 3) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1)
    fps = farthest_point_sample(pts, 20)
    dist2, idx = knn(pts, pts, 5, exclude_self=True)
    ball_idx, ball_count = ball_query(pts[:, :30], pts, 0.2, 8)
    normed, centroid, radius = normalize_unit_sphere(pts)
    for b in range(3):
        one = pts[b : b + 1]
        assert torch.equal(farthest_point_sample(one, 20), fps[b : b + 1])
        assert torch.equal(knn(one, one, 5, exclude_self=True)[1], idx[b : b + 1])
        one_idx, one_count = ball_query(one[:, :30], one, 0.2, 8)
        assert torch.equal(one_idx, ball_idx[b : b + 1])
        assert torch.equal(one_count, ball_count[b : b + 1])
        assert torch.allclose(normalize_unit_sphere(one)[0], normed[b : b + 1])


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_device_agnostic(device):
    """Outputs live on the input's device; on "meta" any tensor created on a fixed device
    (e.g. CPU) inside the torch code paths would raise a device mismatch."""
    torch.manual_seed(13)
    pts = torch.rand(2, 64, 3).to(device)
    results = [
        square_distance(pts, pts),
        *knn(pts, pts, 4, exclude_self=True, chunk_size=16),
        gather_points(pts, torch.zeros(2, 3, 2, dtype=torch.long, device=device)),
        *ball_query(pts, pts, torch.full((2,), 0.3, device=device), 4, chunk_size=16),
        *normalize_unit_sphere(pts),
    ]
    if device == "meta":
        results.append(geometry_sampling._fps_torch(pts, 8, torch.zeros(2, dtype=torch.long)))
    else:
        results.append(farthest_point_sample(pts, 8, start="random"))
        results.extend(extract_patches(pts[0], 4, 16))
    for result in results:
        assert result.device.type == device


# ---------------------------------------------------------------- normalization, patches


def test_normalize_unit_sphere_and_back():
    pts = torch.tensor([[[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [2.0, 1.0, 1.0], [2.0, 1.5, 1.0]]])
    normed, centroid, radius = normalize_unit_sphere(pts)
    assert torch.allclose(centroid, torch.tensor([[[2.0, 1.125, 1.0]]]))
    assert radius.shape == (1, 1, 1)
    assert torch.allclose(radius, torch.tensor([[[(1 + 0.125**2) ** 0.5]]]))
    assert torch.allclose(normed.norm(dim=-1).max(), torch.tensor(1.0))
    assert torch.allclose(normed.mean(dim=1), torch.zeros(1, 3), atol=1e-6)
    assert torch.allclose(denormalize(normed, centroid, radius), pts, atol=1e-6)
    single = torch.tensor([[[4.0, 5.0, 6.0]]])
    normed, centroid, radius = normalize_unit_sphere(single)
    assert radius.item() == pytest.approx(1e-12) and torch.equal(normed, torch.zeros(1, 1, 3))


def test_extract_patches_are_seed_neighbourhoods():
    torch.manual_seed(14)
    xyz = torch.rand(2048, 3, dtype=torch.float64)
    n_seeds = seed_count(2048)
    patches, idx = extract_patches(xyz, n_seeds, 256)
    assert patches.shape == (24, 256, 3) and idx.shape == (24, 256) and idx.dtype == torch.int64
    assert torch.equal(patches, xyz[idx])
    seeds = farthest_point_sample(xyz[None], 24)[0]
    assert torch.equal(idx[:, 0], seeds)  # each patch starts with its seed
    tree_idx = cKDTree(xyz.numpy()).query(xyz[seeds].numpy(), k=256)[1]
    assert np.array_equal(idx.numpy(), tree_idx)
    small, small_idx = extract_patches(xyz[:100], 3, 256)  # patch larger than the cloud
    assert small.shape == (3, 100, 3) and sorted(small_idx[0].tolist()) == list(range(100))
    with pytest.raises(ValueError, match="n_patches"):
        extract_patches(xyz[:10], 11, 4)


def test_seed_count_protocol():
    assert seed_count(2048) == 24  # PU-GAN / PU-GCN: int(2048 / 256 * 3)
    assert seed_count(8192) == 96
    assert seed_count(2048, patch_size=128, ratio_of_coverage=2) == 32
    assert seed_count(1000) == int(1000 / 256 * 3) == 11
    assert seed_count(10) == 1 and seed_count(0) == 0
    with pytest.raises(ValueError):
        seed_count(100, patch_size=0)
