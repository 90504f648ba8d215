"""Over-complete generator (model.candidates) and the bounded normal shift
(model.normal_shift): local normals, candidate selection by hand, the generator's start
state, the bound of the shift, ONNX export and the upsampler interface."""

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_SETS

from sspu_ros.geometry.candidate_selection import (
    fps_extend_numpy,
    fps_extend_torch,
    fps_in_reach,
    select_fps,
    select_per_point,
)
from sspu_ros.geometry.knn import knn
from sspu_ros.model.generator import GeneratorConfig, build_generator, local_normals


def small(**overrides) -> GeneratorConfig:
    base = dict(channels=16, lift_channels=8, growth_rate=8, layers_per_block=2, n_blocks=2,
                compression_channels=8, knn_k=8, weight_hidden=8, head_hidden=8,
                coord_base="interpolate", offsets=False, candidates=7)
    base.update(overrides)
    return GeneratorConfig(**base)


def patch(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


# --- local normals -----------------------------------------------------------------------


@pytest.mark.parametrize("normal", [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.3, -0.5, 0.8)])
def test_local_normals_of_a_plane(normal):
    n = torch.tensor(normal) / torch.tensor(normal).norm()
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(1, 200, 3, generator=g)
    pts = pts - (pts @ n)[..., None] * n  # onto the plane through 0 with normal n
    _, idx = knn(pts, pts, 12)
    got = local_normals(pts, idx)
    assert torch.allclose((got @ n).abs(), torch.ones(1, 200), atol=1e-5)


def test_local_normals_of_a_sphere_are_radial():
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(1, 2000, 3, generator=g)
    pts = pts / pts.norm(dim=-1, keepdim=True)
    _, idx = knn(pts, pts, 10)
    got = local_normals(pts, idx)
    assert (got * pts).sum(-1).abs().min() > 0.99  # PCA of a sampled cap: nearly radial
    nb = pts[0][idx[0]]  # (N, k, 3): the exact smallest-eigenvalue direction
    d = nb - nb.mean(1, keepdim=True)
    exact = torch.linalg.eigh(d.transpose(1, 2) @ d).eigenvectors[..., 0]
    assert (got[0] * exact).sum(-1).abs().min() > 0.9999


# --- selection, by hand ---------------------------------------------------------------------


def test_fps_extend_torch_by_hand():
    fixed = torch.tensor([[[0.0, 0, 0]]])
    cand = torch.tensor([[[1.0, 0, 0], [3.0, 0, 0], [2.0, 0, 0]]])
    # 3 is farthest from 0; then 1 and 2 are both at squared distance 1: the lower index
    assert fps_extend_torch(fixed, cand, 2).tolist() == [[1, 0]]
    assert fps_extend_torch(fixed, cand, 0).shape == (1, 0)
    with pytest.raises(ValueError):
        fps_extend_torch(fixed, cand, 4)


def test_fps_extend_torch_matches_numpy_fps_extend():
    g = np.random.default_rng(0)
    fixed, cand = g.random((2, 30, 3)), g.random((2, 200, 3))
    got = fps_extend_torch(torch.from_numpy(fixed), torch.from_numpy(cand), 50)
    for b in range(2):
        assert got[b].tolist() == fps_extend_numpy(fixed[b], cand[b], 50).tolist()


def _fps_extend_brute(fixed, cand, n):
    """Reference: every pick the candidate farthest (lowest index on ties) from the fixed
    points and the picks so far, by full distance matrices."""
    chosen = []
    for _ in range(n):
        ref = np.concatenate([fixed, cand[chosen]]) if len(fixed) or chosen else None
        d = (np.full(len(cand), np.inf) if ref is None else
             ((cand[:, None] - ref[None]) ** 2).sum(-1).min(1))
        d[chosen] = -1.0
        chosen.append(int(d.argmax()))
    return chosen


def test_fps_extend_numpy_matches_brute_force():
    rng = np.random.default_rng(1)
    fixed, cand = rng.random((40, 3)), rng.random((200, 3))
    assert fps_extend_numpy(fixed, cand, 60).tolist() == _fps_extend_brute(fixed, cand, 60)
    assert fps_extend_numpy(np.zeros((0, 3)), cand, 5).tolist() == \
        _fps_extend_brute(np.zeros((0, 3)), cand, 5)


def test_fps_extend_numpy_by_hand():
    fixed1 = np.zeros((1, 3))
    cand1 = np.array([[1.0, 0, 0], [3.0, 0, 0], [2.0, 0, 0]])
    assert fps_extend_numpy(fixed1, cand1, 2).tolist() == [1, 0]


def test_select_fps_keeps_inputs_and_drops_candidate_zero():
    xyz = torch.tensor([[[0.0, 0, 0], [4.0, 0, 0]]])
    # c = 3 per point: the point, then two candidates
    cand = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0],
                          [4.0, 0, 0], [3.0, 0, 0], [5.0, 0, 0]]])
    out = select_fps(xyz, cand, 2)  # 2 picks among (1, 2, 3, 5)
    # 2 is farthest from {0, 4} (4), then 5 (1) ties with 1 and 3 at 1: lowest index (1)
    assert out.tolist() == [[[0.0, 0, 0], [4.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0]]]


def test_select_per_point_by_hand_avoids_a_shared_candidate():
    """Points 0 and 2 both propose x = 1; point 0 takes it first (farthest of its own), so
    point 2 takes its other candidate; layout: copy-major, the point first."""
    xyz = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0]]])
    cand = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0],
                          [2.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]])
    out = select_per_point(xyz, cand, 2)
    assert out.tolist() == [[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]]]


def test_select_per_point_prefers_candidates_in_reach():
    """Points 0 and 1 are 1 apart (nearest-neighbour distance 1). Point 0 proposes x = 0.5
    (reach 0.5) and y = 3 (reach 3, farther from everything): with max_reach 2 it takes
    the one in reach. Both of point 1's candidates are out of reach (3 and 9): it takes the
    first (index order), not the farthest. Without a bound both take the farthest."""
    xyz = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    cand = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0], [0.0, 3, 0],
                          [1.0, 0, 0], [4.0, 0, 0], [1.0, -9, 0]]])
    bounded = select_per_point(xyz, cand, 2, max_reach=2.0)
    assert bounded.tolist() == [[[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [4.0, 0, 0]]]
    free = select_per_point(xyz, cand, 2, max_reach=None)
    assert free.tolist() == [[[0.0, 0, 0], [0.0, 3, 0], [1.0, 0, 0], [1.0, -9, 0]]]


def test_reach_ignores_duplicate_points():
    """A point with a duplicate (distance 0) measures reach against its nearest *other*
    point: the same choices as without the duplicate."""
    xyz = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]]])
    cand = torch.tensor([[[0.0, 0, 0], [0.0, 3, 0], [0.5, 0, 0],
                          [1.0, 0, 0], [1.0, 9, 0], [1.5, 0, 0],
                          [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0]]])
    out = select_per_point(xyz, cand, 2, max_reach=2.0)
    assert out[0, :4].tolist() == [[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [1.5, 0, 0]]
    fixed = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]])
    # both in reach (0.5, 1.5): FPS takes the farther; a spacing of 0 would put both out
    # of reach and take the nearer
    pick = fps_in_reach(fixed, np.array([[0.5, 0, 0], [0.0, 1.5, 0]]), np.array([0, 0]), 1)
    assert pick.tolist() == [1]


def test_fps_in_reach_by_hand():
    """Candidates in reach (<= 2 nearest-neighbour distances from their point) by FPS
    first; when too few, the others nearest first by reach; None = plain FPS."""
    fixed = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    cand = np.array([[0.5, 0, 0], [0.0, 5, 0], [1.0, 3, 0], [1.0, 0.6, 0]])
    parent = np.array([0, 0, 1, 1])  # reach 0.5, 5, 3, 0.6
    assert fps_in_reach(fixed, cand, parent, 2).tolist() == [3, 0]  # 0.6 from fixed first
    assert fps_in_reach(fixed, cand, parent, 3).tolist() == [0, 3, 2]  # then reach 3
    assert (fps_in_reach(fixed, cand, parent, 3, max_reach=None).tolist()
            == fps_extend_numpy(fixed, cand, 3).tolist() == [1, 2, 3])


def test_select_per_point_gradient_reaches_chosen_candidates():
    xyz = patch(2, 20)
    cand = xyz.repeat_interleave(5, dim=1) + 0.01 * patch(2, 100, seed=3)
    cand.requires_grad_(True)
    out = select_per_point(xyz, cand, 4)
    assert out.shape == (2, 80, 3)
    assert torch.equal(out.reshape(2, 20, 4, 3)[:, :, 0], xyz)
    out.sum().backward()
    assert int((cand.grad.abs().sum(-1) > 0).sum()) == 2 * 20 * 3


# --- the generator -------------------------------------------------------------------------


def test_over_complete_generator_starts_as_point_plus_midpoints():
    torch.manual_seed(0)
    model = build_generator(small(interp_prior=30.0)).eval()
    with torch.no_grad():
        model.mix_head[-1].weight.zero_()
    xyz = patch(2, 40)
    with torch.no_grad():
        out = model(xyz).reshape(2, 40, 7, 3)
        dense = model.upsample(xyz)
    _, idx = knn(xyz, xyz, 7)
    nb = xyz[torch.arange(2)[:, None, None], idx]
    assert torch.equal(out[:, :, 0], xyz)  # candidate 0 is exactly the point
    torch.testing.assert_close(out[:, :, 1:], 0.5 * (xyz[:, :, None] + nb[:, :, 1:]),
                               atol=1e-6, rtol=0)
    assert dense.shape == (2, 160, 3) and torch.equal(dense[:, :40], xyz)


def test_normal_shift_is_along_the_normal_and_bounded():
    """On a plane z = 0 every copy moves along z only, by at most normal_shift x spacing."""
    torch.manual_seed(0)
    bound = 0.5
    model = build_generator(small(normal_shift=bound, interp_prior=30.0)).eval()
    with torch.no_grad():
        model.mix_head[-1].weight.zero_()
        model.shift_head[-1].weight.mul_(1000.0)  # saturate the tanh
        model.shift_head[-1].bias.normal_()
    g = torch.Generator().manual_seed(1)
    xyz = torch.rand(1, 64, 3, generator=g) * 2 - 1
    xyz[..., 2] = 0
    with torch.no_grad():
        out = model(xyz).reshape(1, 64, 7, 3)
    _, idx = knn(xyz, xyz, 7)
    nb = xyz[torch.zeros(1, 1, 1, dtype=torch.long), idx]
    mid = 0.5 * (xyz[:, :, None] + nb)
    spacing = (nb[:, :, 1:] - xyz[:, :, None]).norm(dim=-1).mean(-1)  # (1, 64)
    torch.testing.assert_close(out[..., :2][:, :, 1:], mid[..., :2][:, :, 1:],
                               atol=1e-6, rtol=0)
    dz = out[..., 2][:, :, 1:].abs()
    assert (dz <= bound * spacing[..., None] + 1e-6).all()
    assert dz.max() > 0.5 * bound * spacing.min()  # it does move


def test_bad_candidate_configs_are_rejected():
    with pytest.raises(ValueError, match="candidates"):
        small(candidates=3)
    with pytest.raises(ValueError, match="interpolate"):
        small(coord_base="repeat", offsets=True)
    with pytest.raises(ValueError, match="normal_shift"):
        small(normal_shift=-1.0)


def test_over_complete_generator_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sspu_ros.model.generator import export_onnx

    torch.manual_seed(0)
    model = build_generator(GeneratorConfig.light(
        coord_base="interpolate", offsets=False, candidates=7, normal_shift=0.5)).eval()
    with torch.no_grad():
        model.shift_head[-1].weight.mul_(100.0)
    path = export_onnx(model, tmp_path / "c.onnx", n_points=64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xyz = patch(3, 64, seed=5)
    with torch.no_grad():
        expected = model(xyz).numpy()
    (got,) = session.run(None, {"xyz": xyz.numpy()})
    assert got.shape == (3, 7 * 64, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --- training and the upsampler interface ----------------------------------------------------


@pytest.fixture(scope="module")
def candidate_checkpoint(tmp_path_factory):
    from sspu_ros.cli.main import main
    from sspu_ros.io.cloud_files import write_cloud
    from sspu_ros.simulation.sample_surface import torus_knot_surface

    d = tmp_path_factory.mktemp("cand")
    write_cloud(d / "shape.xyz", torus_knot_surface(256))
    assert main(["train", "--data", str(d / "shape.xyz"), "--out", str(d / "run"),
                 "--steps", "1", "--no-progress", *TINY_TRAIN_SETS,
                 "--set=model.coord_base=interpolate", "--set=model.offsets=false",
                 "--set=model.candidates=6", "--set=model.normal_shift=0.5"]) == 0
    return d / "run" / "checkpoint.pt"


def test_upsampler_of_an_over_complete_checkpoint(candidate_checkpoint, tmp_path):
    from sspu_ros.runtime.export import export_checkpoint
    from sspu_ros.runtime.loading import load_upsampler
    from sspu_ros.simulation.sample_surface import torus_knot_surface

    torch_up = load_upsampler(str(candidate_checkpoint), None)
    assert torch_up.ratio == 4 and torch_up.copies == 6
    x = torus_knot_surface(500, seed=3).astype(np.float32)
    dense, sources = torch_up.upsample_with_sources(x)
    assert dense.shape == (2000, 3) and sources.shape == (1500, 1)
    np.testing.assert_array_equal(dense[:500], x)
    # every generated point lies near the point it was made from
    gap = np.linalg.norm(dense[500:] - x[sources[:, 0]], axis=1)
    spacing = np.median(np.linalg.norm(x[1:] - x[:-1], axis=1))
    assert gap.max() < 20 * spacing
    patches = torch.from_numpy(x[:64])[None].numpy()
    per_patch = torch_up.upsample_patches(patches)
    assert per_patch.shape == (1, 256, 3)
    np.testing.assert_array_equal(per_patch.reshape(64, 4, 3)[:, 0], x[:64])

    r = export_checkpoint(candidate_checkpoint, tmp_path / "c.onnx")
    assert r["max_abs_diff"] <= 1e-4
    ort_up = load_upsampler(str(tmp_path / "c.onnx"), None)
    assert ort_up.copies == 6
    torch_up.patch_size = ort_up.patch_size
    np.testing.assert_allclose(ort_up.upsample(x), torch_up.upsample(x), atol=1e-4)
    np.testing.assert_allclose(ort_up.upsample_patches(patches), per_patch, atol=1e-4)


# --- Phong tessellation ------------------------------------------------------------------


def test_phong_moves_a_chord_midpoint_by_hand():
    """Two points of the unit circle at +-30 deg with radial normals: the midpoint
    (cos t, 0, 0) moves outward by alpha * sin(t)^2 * cos(t) (computed by hand)."""
    model = build_generator(small(candidates=0, ratio=2, phong=0.5))
    t = np.pi / 6
    pts = torch.tensor([[[np.cos(t), np.sin(t), 0.0], [np.cos(t), -np.sin(t), 0.0]]],
                       dtype=torch.float32)
    normals = pts.clone()  # radial, unit
    idx = torch.tensor([[[0, 1], [1, 0]]])  # self first, then the other point
    neighbors = pts[0][idx]  # (1, 2, 2, 3)
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).expand(1, 2, 2, 2)
    base = weights @ neighbors  # copy 0 = the point, copy 1 = the midpoint
    out = model._phong(base, neighbors, idx, weights, normals)
    expected_x = np.cos(t) + 0.5 * np.sin(t) ** 2 * np.cos(t)
    torch.testing.assert_close(out[0, :, 1], torch.tensor([[expected_x, 0, 0]] * 2,
                                                           dtype=torch.float32))
    torch.testing.assert_close(out[0, :, 0], pts[0])  # the point is on its own plane


def test_phong_keeps_a_plane_and_brings_sphere_midpoints_closer():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    plane = torch.rand(1, 128, 3, generator=g) * 2 - 1
    plane[..., 2] = 0.3 * plane[..., 0] - 0.2 * plane[..., 1]
    sphere = torch.randn(1, 512, 3, generator=g)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    flat = build_generator(small(interp_prior=30.0)).eval()
    curved = build_generator(small(interp_prior=30.0, phong=0.5)).eval()
    curved.load_state_dict(flat.state_dict())
    with torch.no_grad():
        flat.mix_head[-1].weight.zero_()
        curved.mix_head[-1].weight.zero_()
        torch.testing.assert_close(curved(plane), flat(plane), atol=1e-5, rtol=0)
        err_flat = (flat(sphere).norm(dim=-1) - 1).abs().mean()
        err_curved = (curved(sphere).norm(dim=-1) - 1).abs().mean()
    assert err_curved < 0.35 * err_flat  # measured 0.0008 vs 0.0030 (copies 0 included)


def test_zoom_out_term_trains_and_adapts(tmp_path):
    """loss.zoom > 0: r-times larger training patches, the FPS of data.patch_size points is
    the input, the Chamfer distance to the whole patch is logged as 'zoom'; --adapt builds
    its bank the same way."""
    import csv

    from sspu_ros.cli.main import main
    from sspu_ros.io.cloud_files import write_cloud
    from sspu_ros.simulation.sample_surface import torus_knot_surface
    from sspu_ros.training.adapt import adapt_generator

    write_cloud(tmp_path / "shape.xyz", torus_knot_surface(512))
    sets = [s for s in TINY_TRAIN_SETS if "patch_size" not in s]
    assert main(["train", "--data", str(tmp_path / "shape.xyz"), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--no-progress", *sets, "--set=data.patch_size=32",
                 "--set=run.log_every=1", "--set=model.coord_base=interpolate",
                 "--set=model.offsets=false", "--set=model.candidates=6",
                 "--set=model.phong=0.75", "--set=model.normal_shift=0.5",
                 "--set=model.learn_mix=false", "--set=loss.zoom=1000"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert "zoom" in rows[0] and float(rows[-1]["zoom"]) > 0
    model, info = adapt_generator(tmp_path / "run" / "checkpoint.pt",
                                  torus_knot_surface(300, seed=2), 1, batch_size=2)
    assert info["steps"] == 1 and model.copies == 6


@pytest.mark.parametrize("merge", ["owner", "fps"])
def test_whole_cloud_merge_of_candidates(merge):
    """upsample_with_patches with candidates > ratio: inputs first, (r-1)N chosen points,
    each with the input point it was made from (near it)."""
    from sspu_ros.runtime.patch_inference import upsample_with_patches
    from sspu_ros.simulation.sample_surface import torus_knot_surface

    torch.manual_seed(0)
    model = build_generator(small(knn_k=16)).eval()
    x = torus_knot_surface(300, seed=1).astype(np.float32)
    y, parents = upsample_with_patches(x, model, 4, patch_size=64, candidates=7, merge=merge,
                                       keep_input=True, return_parents=True)
    assert y.shape == (1200, 3) and parents.shape == (900,)
    np.testing.assert_array_equal(y[:300], x)
    spacing = np.median(np.linalg.norm(x[1:] - x[:-1], axis=1))
    assert np.linalg.norm(y[300:] - x[parents], axis=1).max() < 10 * spacing
    with pytest.raises(ValueError, match="return_parents"):
        upsample_with_patches(x, model, 7, patch_size=64, return_parents=True)
