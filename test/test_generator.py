"""The SSPU-Net generator: shapes, Eq. (1), residual head, ablation, equivariance,
gradients, FLOP accounting and ONNX parity."""

import numpy as np
import pytest
import torch

from sspu_ros.model.feature_extraction import DenseEdgeBlock
from sspu_ros.model.generator import (
    GeneratorConfig,
    build_generator,
    count_flops,
    count_macs,
    count_parameters,
    export_onnx,
)
from sspu_ros.model.neighbor_expansion import (
    ExpandedSelfAttention,
    NeighborExpansionUnit,
    grid_codes,
    neighbor_interpolation,
)


def small_config(**overrides) -> GeneratorConfig:
    """A narrow generator so the tests stay fast; same structure as the default."""
    base = dict(
        channels=16,
        lift_channels=8,
        growth_rate=8,
        layers_per_block=2,
        n_blocks=2,
        compression_channels=8,
        knn_k=8,
        weight_hidden=8,
        head_hidden=8,
    )
    base.update(overrides)
    return GeneratorConfig(**base)


def unit_sphere_patch(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Random (batch, n, 3) points inside the unit sphere."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, n, 3, generator=gen)
    return xyz / xyz.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def unshrink_offset_head(model) -> None:
    """Undo the x0.01 start of the offset head so offsets are O(1) and comparisons bite."""
    with torch.no_grad():
        model.offset_head[-1].weight.mul_(100.0)
        model.offset_head[-1].bias.normal_()


# --- shapes and validation -------------------------------------------------------------


@pytest.mark.parametrize("ratio", [2, 4])
@pytest.mark.parametrize("n_points", [256, 37])
def test_output_shape(ratio, n_points):
    torch.manual_seed(0)
    model = build_generator(small_config(ratio=ratio, knn_k=16))
    out = model(unit_sphere_patch(2, n_points))
    assert out.shape == (2, ratio * n_points, 3)
    assert torch.isfinite(out).all()


def test_default_config_is_paper_sized_and_runs():
    cfg = GeneratorConfig()
    assert (cfg.ratio, cfg.knn_k, cfg.growth_rate, cfg.attention) == (4, 16, 24, "global")
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_generator(cfg)(unit_sphere_patch(1, 256))
    assert out.shape == (1, 1024, 3)


@pytest.mark.parametrize("ratio", [3, 5])
def test_other_ratios(ratio):
    torch.manual_seed(0)
    out = build_generator(small_config(ratio=ratio, attention="local"))(unit_sphere_patch(1, 20))
    assert out.shape == (1, ratio * 20, 3)


def test_too_few_points_is_a_clear_error():
    model = build_generator(small_config(knn_k=16))
    assert model.cfg.min_points() == 16
    model(unit_sphere_patch(1, 16))  # exactly enough
    with pytest.raises(ValueError, match="15 points .* at least 16"):
        model(unit_sphere_patch(1, 15))
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.zeros(1, 20, 2))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(ratio=1),
        dict(ratio=2.5),
        dict(attention="full"),
        dict(expansion="copy"),
        dict(channels=0),
    ],
)
def test_bad_config_is_rejected(overrides):
    with pytest.raises(ValueError):
        GeneratorConfig(**overrides)


# --- building blocks ---------------------------------------------------------------------


def test_grid_codes_are_distinct_per_copy():
    corners = grid_codes(4, 0.2)
    expected = torch.tensor([[-0.2, -0.2], [0.2, -0.2], [-0.2, 0.2], [0.2, 0.2]])
    torch.testing.assert_close(corners, expected)
    for ratio in (2, 3, 5, 6, 8, 16):
        codes = grid_codes(ratio)
        assert codes.shape == (ratio, 2)
        assert torch.unique(codes, dim=0).shape[0] == ratio


@pytest.mark.parametrize("n_layers", [1, 3])
def test_dense_edge_block_matches_loop_over_points(n_layers):
    """Brute force: per point, kNN by sorting distances, per-edge MLP on the concatenated
    edge features (ReLU on all layers but the last, layer 0 always), max over neighbours."""
    torch.manual_seed(0)
    block = DenseEdgeBlock(in_channels=3, growth_rate=4, n_layers=n_layers, k=5)
    assert block.out_channels == 3 + n_layers * 4
    feats = torch.randn(2, 9, 3)
    with torch.no_grad():
        out = block(feats)
        for b in range(2):
            for i in range(9):
                order = torch.argsort((feats[b] - feats[b, i]).pow(2).sum(-1))[:5]
                centre = feats[b, i].expand(5, 3)
                edge = torch.cat([centre, feats[b, order] - centre], dim=-1)
                hidden = torch.cat([torch.relu(block.layers[0](edge)), centre], dim=-1)
                for layer_idx in range(1, n_layers):
                    new = block.layers[layer_idx](hidden)
                    if layer_idx < n_layers - 1:
                        new = torch.relu(new)
                    hidden = torch.cat([new, hidden], dim=-1)
                torch.testing.assert_close(out[b, i], hidden.amax(dim=0))


def test_eq1_by_hand_three_points():
    """h_j = sigmoid(alpha_j) x_i + sigmoid(beta_j) x_j on numbers worked out by hand."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]]])  # (1, 3, 2)
    neighbor_idx = torch.tensor([[[0, 1], [1, 2], [2, 1]]])  # each point: itself, a neighbour
    neighbors = x[0, neighbor_idx[0]].unsqueeze(0)  # (1, 3, 2, 2)
    logit3 = float(np.log(3.0))  # sigmoid(ln 3) = 0.75; sigmoid(0) = 0.5; sigmoid(-ln 3) = 0.25
    logits = torch.tensor(
        [
            [
                [[0.0, 0.0], [logit3, -logit3]],
                [[logit3, logit3], [-logit3, 0.0]],
                [[0.0, logit3], [logit3, logit3]],
            ]
        ]
    )  # (1, 3, 2, 2)
    h = neighbor_interpolation(x, neighbors, logits)
    expected = torch.tensor(
        [
            [
                [[1.0, 0.0], [0.75 * 1 + 0.25 * 0, 0.75 * 0 + 0.25 * 2]],  # i=0: j=0, j=1
                [[0.0, 3.0], [0.25 * 0 + 0.5 * 4, 0.25 * 2 + 0.5 * 4]],  # i=1: j=1, j=2
                [
                    [0.5 * 4 + 0.75 * 4, 0.5 * 4 + 0.75 * 4],
                    [0.75 * 4 + 0.75 * 0, 0.75 * 4 + 0.75 * 2],
                ],
            ]
        ]
    )
    torch.testing.assert_close(h, expected)


def test_neu_with_zero_weight_mlp_gives_exact_midpoints():
    """sigma(alpha) = sigma(beta) = 1/2: h_j = (x_i + x_j) / 2 for the given neighbours."""
    torch.manual_seed(0)
    unit = NeighborExpansionUnit(channels=5, ratio=3)
    with torch.no_grad():
        unit.weight_mlp[-1].weight.zero_()
        unit.weight_mlp[-1].bias.zero_()
    feats = torch.randn(2, 7, 5)
    neighbor_idx = torch.randint(0, 7, (2, 7, 3))
    expanded = unit.expand(feats, neighbor_idx)
    for b in range(2):
        for i in range(7):
            for j in range(3):
                midpoint = (feats[b, i] + feats[b, neighbor_idx[b, i, j]]) / 2
                assert torch.equal(expanded[b, i, j], midpoint)


def test_neu_neighbourhood_is_xyz_knn_with_self_first():
    xyz = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0], [15.0, 0, 0]]])
    model = build_generator(small_config(ratio=2, knn_k=2, attention="local", attention_seeds=3))
    neighbor_idx, seed_idx = model.neighborhoods(xyz)
    assert neighbor_idx.tolist() == [[[0, 1], [1, 0], [2, 1], [3, 2], [4, 3]]]
    assert seed_idx.tolist() == [[[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1], [4, 3, 2]]]
    model = build_generator(small_config(ratio=2, knn_k=2, neu_include_self=False))
    neighbor_idx, seed_idx = model.neighborhoods(xyz)
    assert neighbor_idx.tolist() == [[[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]]
    assert seed_idx is None


def test_local_attention_over_all_points_equals_global():
    torch.manual_seed(0)
    local = ExpandedSelfAttention(10, "local")
    glob = ExpandedSelfAttention(10, "global")
    glob.load_state_dict(local.state_dict())
    expanded = torch.randn(2, 6, 3, 10)  # (B, N, r, C)
    everyone = torch.stack([torch.randperm(6) for _ in range(12)]).reshape(2, 6, 6)
    torch.testing.assert_close(local(expanded, everyone), glob(expanded), atol=1e-6, rtol=1e-5)


# --- whole generator -----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [2, 4])
def test_zero_offset_head_returns_repeated_input(ratio):
    torch.manual_seed(0)
    model = build_generator(small_config(ratio=ratio))
    with torch.no_grad():
        model.offset_head[-1].weight.zero_()
        model.offset_head[-1].bias.zero_()
    xyz = unit_sphere_patch(2, 30)
    out = model(xyz)
    assert torch.equal(out, xyz.repeat_interleave(ratio, dim=1))
    # and the untrained generator starts close to it (small offset head) but not on it
    fresh = build_generator(small_config(ratio=ratio))
    offsets = fresh(xyz) - xyz.repeat_interleave(ratio, dim=1)
    assert 0 < offsets.abs().max() < 0.05


def test_interpolate_base_starts_at_point_and_midpoints_to_its_neighbours():
    """coord_base='interpolate' with a zero offset head: copy 0 of every point is the point
    (up to the exp(-interp_prior) leak) and copy j the midpoint to its j-th nearest neighbour
    - the midpoint baseline, computed here by brute force."""
    torch.manual_seed(0)
    model = build_generator(small_config(coord_base="interpolate", interp_prior=30.0))
    with torch.no_grad():
        model.offset_head[-1].weight.zero_()
        model.mix_head[-1].weight.zero_()
    xyz = unit_sphere_patch(2, 30)
    out = model(xyz).reshape(2, 30, 4, 3)
    d2 = (xyz[:, :, None] - xyz[:, None]).square().sum(-1)  # (B, N, N)
    order = d2.argsort(dim=-1)[..., :4]  # self first, then the 3 nearest
    for b in range(2):
        nb = xyz[b][order[b]]  # (N, 4, 3)
        torch.testing.assert_close(out[b, :, 0], xyz[b], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[b, :, 1:], 0.5 * (xyz[b][:, None] + nb[:, 1:]),
                                   atol=1e-6, rtol=0)
    # the mixing weights are learned: a trained mix head moves copies off the midpoints
    with torch.no_grad():
        model.mix_head[-1].bias.copy_(torch.tensor([0.0, 40.0, 0.0, 0.0]))
    moved = model(xyz).reshape(2, 30, 4, 3)
    assert (moved[:, :, 2:] - out[:, :, 2:]).abs().max() > 1e-2


def test_duplicate_ablation():
    torch.manual_seed(0)
    model = build_generator(small_config(expansion="duplicate"))
    assert model.neu1.weight_mlp is None
    assert count_parameters(model) < count_parameters(build_generator(small_config()))
    feats = torch.randn(1, 5, 16)
    copies = model.neu1.expand(feats, torch.zeros(1, 5, 4, dtype=torch.long))
    assert torch.equal(copies, feats.unsqueeze(2).expand(-1, -1, 4, -1))
    xyz = unit_sphere_patch(2, 24)
    unshrink_offset_head(model)
    dense = model(xyz).reshape(2, 24, 4, 3)
    assert (dense[:, :, 1:] - dense[:, :, :1]).abs().amax() > 1e-3  # grid code separates copies
    # without the grid code nothing tells duplicated copies apart: they coincide
    no_code = build_generator(small_config(expansion="duplicate", grid_code=False))
    unshrink_offset_head(no_code)
    dense = no_code(xyz).reshape(2, 24, 4, 3)
    torch.testing.assert_close(dense[:, :, 1:], dense[:, :, :1].expand(-1, -1, 3, -1))


def test_up_down_up_wiring():
    """NEU2 gets down(NEU1(X)) - X; the offset head gets NEU1(X) + NEU2(...)."""
    torch.manual_seed(0)
    model = build_generator(small_config())
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0], output)

        return hook

    for name in ("extractor", "neu1", "down", "neu2", "offset_head"):
        getattr(model, name).register_forward_hook(keep(name))
    model(unit_sphere_patch(1, 20))
    features, up1 = seen["extractor"][1], seen["neu1"][1]
    assert seen["neu1"][0] is features
    assert up1.shape == (1, 20, 4, 16)
    torch.testing.assert_close(seen["down"][0], up1.reshape(1, 20, 64))
    torch.testing.assert_close(seen["neu2"][0], seen["down"][1] - features)
    torch.testing.assert_close(seen["offset_head"][0], up1 + seen["neu2"][1])


@pytest.mark.parametrize("attention", ["global", "local"])
def test_permuting_input_permutes_output_blocks(attention):
    """Output i*r + j is copy j of input i: a permutation of the input permutes the r-blocks."""
    torch.manual_seed(0)
    model = build_generator(small_config(attention=attention))
    unshrink_offset_head(model)
    xyz = unit_sphere_patch(2, 40)
    perm = torch.randperm(40)
    with torch.no_grad():
        out = model(xyz).reshape(2, 40, 4, 3)
        out_permuted = model(xyz[:, perm]).reshape(2, 40, 4, 3)
    torch.testing.assert_close(out_permuted, out[:, perm], atol=1e-5, rtol=1e-5)


def test_patches_in_a_batch_are_independent():
    torch.manual_seed(0)
    model = build_generator(small_config())
    unshrink_offset_head(model)
    xyz = unit_sphere_patch(3, 32)
    with torch.no_grad():
        together = model(xyz)
        alone = torch.cat([model(xyz[b : b + 1]) for b in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides", [dict(), dict(attention="local"), dict(ratio=2, neu_include_self=False),
                  dict(coord_base="interpolate")]
)
def test_gradient_reaches_every_parameter(overrides):
    torch.manual_seed(0)
    model = build_generator(small_config(**overrides))
    xyz = unit_sphere_patch(2, 32)
    model(xyz).square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


# --- accounting --------------------------------------------------------------------------


def test_count_parameters_by_hand():
    block = DenseEdgeBlock(in_channels=2, growth_rate=3, n_layers=2, k=4)
    assert count_parameters(block) == (4 * 3 + 3) + (5 * 3 + 3)


def test_attention_macs_match_hand_count():
    """global - no attention = the two attention blocks: q,k,v projections + QK^T + AV."""
    cfg = small_config()
    global_macs = count_macs(build_generator(cfg), 64)
    none_macs = count_macs(build_generator(small_config(attention="none")), 64)
    m, c = 4 * 64, 16 + 2  # expanded points rN, channels with the grid code
    d = c // 4
    per_unit = m * c * (2 * d + c) + m * m * (d + c)
    assert global_macs - none_macs == 2 * per_unit
    assert count_flops(build_generator(cfg), 64) == 2 * global_macs
    local_macs = count_macs(build_generator(small_config(attention="local")), 64)
    assert local_macs - none_macs == 2 * (m * c * (2 * d + c) + m * 4 * 4 * (d + c))


# --- ONNX ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg", [GeneratorConfig(), GeneratorConfig.light(),
            GeneratorConfig.light(coord_base="interpolate")], ids=["default", "light", "interp"]
)
def test_onnx_export_matches_torch(cfg, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_generator(cfg).eval()
    unshrink_offset_head(model)
    path = export_onnx(model, tmp_path / "generator.onnx", n_points=256)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # exported at batch 2: the batch axis is dynamic
        xyz = unit_sphere_patch(batch, 256, seed=batch)
        with torch.no_grad():
            expected = model(xyz).numpy()
        (got,) = session.run(None, {"xyz": xyz.numpy()})
        assert got.shape == (batch, 1024, 3)
        offsets = expected - np.repeat(xyz.numpy(), 4, axis=1)
        assert np.abs(offsets).max() > 0.1  # the comparison is about the network, not the input
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
