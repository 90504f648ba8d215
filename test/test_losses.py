"""Tests of sspu_ros.model.losses: hand-computed cases first, then brute-force comparisons."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sspu_ros.model import losses
from sspu_ros.model.losses import (
    SSPULoss,
    auction_assignment,
    chamfer_directions,
    chamfer_distance,
    emd_approx,
    emd_assignment_exact,
    emd_exact,
    hausdorff_loss,
    image_consistent_loss,
    shape_consistent_loss,
    uniform_loss,
)


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def _ball(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n, 3) uniform in the unit ball."""
    x = torch.randn(batch, n, 3, generator=generator)
    radius = torch.rand(batch, n, 1, generator=generator) ** (1.0 / 3.0)
    return x / x.norm(dim=-1, keepdim=True) * radius


def _spacing2(x: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared nearest-neighbour distance within x (brute force)."""
    d2 = (x[:, :, None] - x[:, None]).square().sum(-1)
    d2 = d2 + torch.eye(x.shape[1], dtype=x.dtype) * 1e9
    return d2.amin(-1).mean(-1)


# A = {(0,0,0), (1,0,0)};  B = {(0,0,0), (0,2,0), (1,1,0)}
#   A→B squared NN: 0, 1            mean 1/2, max 1
#   B→A squared NN: 0, 4, 1         mean 5/3, max 4
HAND_A = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
HAND_B = [[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]]


# ----------------------------------------------------------------------------- Chamfer


def test_chamfer_by_hand():
    a = _t([HAND_A, HAND_A])
    b = _t([HAND_B, [[p[0] * 2, p[1] * 2, p[2] * 2] for p in HAND_B]])  # item 2: B scaled ×2
    a_to_b, b_to_a = chamfer_directions(a, b)
    assert a_to_b[0].item() == pytest.approx(0.5)
    assert b_to_a[0].item() == pytest.approx(5.0 / 3.0)
    # Item 2, 2B = {(0,0,0), (0,4,0), (2,2,0)}: A→2B: 0, 1 (to the origin); 2B→A: 0, 16, 5.
    assert a_to_b[1].item() == pytest.approx(0.5)
    assert b_to_a[1].item() == pytest.approx(21.0 / 3.0)
    per_item = chamfer_distance(a, b, reduction="none")
    torch.testing.assert_close(per_item, _t([0.5 + 5.0 / 3.0, 0.5 + 7.0]))
    assert chamfer_distance(a, b).item() == pytest.approx(per_item.mean().item())
    assert chamfer_distance(a, b, reduction="sum").item() == pytest.approx(per_item.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(a, b, reduction="max")


def test_chamfer_matches_brute_force_and_is_differentiable():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 70, 3, generator=gen, requires_grad=True)
    b = torch.randn(3, 50, 3, generator=gen, requires_grad=True)
    d2 = (a[:, :, None] - b[:, None]).square().sum(-1)  # (B, 70, 50)
    reference = d2.amin(2).mean(1) + d2.amin(1).mean(1)
    value = chamfer_distance(a, b, reduction="none")
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    grad_a, grad_b = torch.autograd.grad(value.sum(), (a, b))
    ref_a, ref_b = torch.autograd.grad(reference.sum(), (a, b))
    torch.testing.assert_close(grad_a, ref_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_b, ref_b, rtol=1e-4, atol=1e-6)


def test_clouds_must_be_batched_xyz():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        chamfer_distance(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="batch sizes differ"):
        chamfer_distance(torch.zeros(2, 4, 3), torch.zeros(3, 4, 3))


# --------------------------------------------------------------------------- Hausdorff


def test_hausdorff_by_hand_and_directions():
    a = _t([HAND_A])
    b = _t([HAND_B])
    assert hausdorff_loss(a, b).item() == pytest.approx(1.0 + 4.0)
    assert hausdorff_loss(a, b, direction="a_to_b").item() == pytest.approx(1.0)
    assert hausdorff_loss(a, b, direction="b_to_a").item() == pytest.approx(4.0)
    assert hausdorff_loss(b, a, direction="a_to_b").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="direction"):
        hausdorff_loss(a, b, direction="sideways")


def test_hausdorff_gradient_reaches_only_the_farthest_point():
    a = _t([HAND_A]).requires_grad_(True)
    b = _t([HAND_B])
    hausdorff_loss(a, b, direction="a_to_b").backward()
    # Only a_1 = (1,0,0) is at the max; its NN in B is (0,0,0) or (1,1,0) (a tie at d²=1),
    # either way the gradient of |a_1 − b|² has norm 2.
    assert a.grad[0, 0].abs().sum().item() == 0.0
    assert a.grad[0, 1].norm().item() == pytest.approx(2.0)


# -------------------------------------------------------------------------------- EMD


def test_emd_exact_permutation_is_zero_and_hand_pair():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 64, 3, generator=gen, dtype=torch.float64)
    b = a[:, torch.randperm(64, generator=gen)]
    torch.testing.assert_close(emd_exact(a, b), torch.zeros(2, dtype=torch.float64))
    # a = {0, 1}, b = {0.9, 0.1} on the x axis: crossing costs (0.01 + 0.01)/2 = 0.01,
    # the identity would cost (0.81 + 0.81)/2.
    a2 = _t([[[0.0, 0, 0], [1.0, 0, 0]]])
    b2 = _t([[[0.9, 0, 0], [0.1, 0, 0]]])
    assert emd_exact(a2, b2).item() == pytest.approx(0.01)
    assert emd_assignment_exact(a2, b2).tolist() == [[1, 0]]


def test_emd_exact_matches_enumeration_of_all_bijections():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    d2 = (a[:, :, None] - b[:, None]).square().sum(-1)  # (3, 6, 6)
    best = torch.full((3,), math.inf, dtype=torch.float64)
    for perm in itertools.permutations(range(6)):
        cost = d2[:, torch.arange(6), list(perm)].mean(-1)
        best = torch.minimum(best, cost)
    torch.testing.assert_close(emd_exact(a, b), best)


def test_emd_exact_gradient_is_that_of_the_matched_pairs():
    a = _t([[[0.0, 0, 0], [1.0, 0, 0]]]).requires_grad_(True)
    b = _t([[[0.9, 0, 0], [0.1, 0, 0]]])
    emd_exact(a, b).sum().backward()
    # d/da_i of mean_i |a_i − b_ψ(i)|² = (a_i − b_ψ(i)): (−0.1, 0, 0) and (0.1, 0, 0).
    torch.testing.assert_close(a.grad, _t([[[-0.1, 0, 0], [0.1, 0, 0]]]))


def test_emd_needs_equal_counts():
    with pytest.raises(ValueError, match="equal point counts"):
        emd_exact(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="equal point counts"):
        emd_approx(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3))


def test_emd_approx_hand_cases():
    swapped_a = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    swapped_b = swapped_a.flip(1)
    assert emd_approx(swapped_a, swapped_b).item() == 0.0
    a2 = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    b2 = torch.tensor([[[0.9, 0, 0], [0.1, 0, 0]]])
    assert emd_approx(a2, b2).item() == pytest.approx(0.01, rel=1e-5)
    single = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert emd_approx(single, single + 1).item() == pytest.approx(3.0)


def test_emd_approx_close_to_exact_on_random_and_near_identical_sets():
    """Auction guarantee: mean cost ≤ exact + eps·s² (ε-complementary slackness), and a
    bijection is never below the optimum; measured error on random unit-ball pairs is
    ~0.01-0.3 %, so the 5 % relative bound has a wide margin."""
    gen = torch.Generator().manual_seed(3)
    a = _ball(4, 256, gen)
    b = _ball(4, 256, gen)
    near_b = a[:, torch.randperm(256, generator=gen)] + 0.01 * torch.randn(
        4, 256, 3, generator=gen
    )
    eps = 0.01
    for first, second in [(a, b), (a, near_b)]:
        exact = emd_exact(first, second)
        approx = emd_approx(first, second, eps=eps)
        spacing2 = 0.5 * (_spacing2(first) + _spacing2(second))
        assert torch.all(approx >= exact - 1e-6)
        assert torch.all(approx <= exact + eps * spacing2 + 1e-6)
        assert torch.all((approx - exact) / exact < 0.05)


def test_auction_returns_a_permutation_even_when_the_round_cap_stops_it():
    gen = torch.Generator().manual_seed(4)
    cost = torch.rand(3, 40, 40, generator=gen)
    for max_rounds in (1, 3, 10_000):
        assignment, rounds = auction_assignment(cost, eps=1e-3, max_rounds=max_rounds)
        assert assignment.shape == (3, 40)
        for row in assignment:
            assert sorted(row.tolist()) == list(range(40))
    assert rounds > 3  # the uncapped run needed more rounds than the capped ones allowed


# ------------------------------------------------------------------- shape-consistent


def test_shape_consistent_loss_is_zero_when_fps_recovers_the_input():
    """D = [S; S; S; S]: FPS picks a not-yet-covered position while one exists, so its N
    picks are the N distinct points of S (in another order) and EMD(Ŝ, S) = 0."""
    gen = torch.Generator().manual_seed(5)
    sparse = torch.rand(2, 32, 3, generator=gen)
    dense = sparse.repeat(1, 4, 1)
    assert shape_consistent_loss(dense, sparse, exact=True).item() == 0.0
    assert shape_consistent_loss(dense, sparse).item() == 0.0


def test_shape_consistent_loss_downsamples_with_fps_from_the_first_point():
    """S = corners (±1, ±1, 0). D = a tiny cluster at the centre (index 0 first), then the
    corners. FPS from index 0 takes the centre, then three corners (every corner is at
    squared distance 2 from the centre; the cluster is nearer than any remaining corner).
    Ŝ = {centre, 3 corners}: the best bijection maps the centre to the missing corner,
    EMD = (0 + 0 + 0 + 2) / 4 = 0.5. (Taking D's first N points instead would give ≈ 2.)"""
    corners = [[1.0, 1, 0], [-1.0, 1, 0], [-1.0, -1, 0], [1.0, -1, 0]]
    cluster = [[0.0, 0, 0], [0.01, 0, 0], [0.0, 0.01, 0], [-0.01, 0, 0]]
    dense = _t([cluster + corners])
    sparse = _t([corners])
    assert shape_consistent_loss(dense, sparse, exact=True).item() == pytest.approx(0.5)
    assert shape_consistent_loss(dense, sparse).item() == pytest.approx(0.5)


def test_shape_consistent_loss_of_a_translation_is_its_squared_length():
    """Σ|s_ψ(i) + t − s_i|² = Σ|s_ψ(i) − s_i|² + N|t|² (the cross term sums to 0), so the
    identity is optimal and the loss is |t|² for any t."""
    gen = torch.Generator().manual_seed(6)
    sparse = torch.rand(2, 32, 3, generator=gen, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    dense = (sparse + shift).repeat(1, 4, 1)
    expected = shift.square().sum().item()
    assert shape_consistent_loss(dense, sparse, exact=True).item() == pytest.approx(expected)
    assert shape_consistent_loss(dense, sparse).item() == pytest.approx(expected)


def test_shape_consistent_loss_gradient_reaches_the_sampled_dense_points():
    gen = torch.Generator().manual_seed(7)
    sparse = torch.rand(1, 16, 3, generator=gen)
    dense = (sparse.repeat(1, 4, 1) + 0.01 * torch.randn(1, 64, 3, generator=gen))
    dense.requires_grad_(True)
    shape_consistent_loss(dense, sparse).backward()
    touched = dense.grad.abs().sum(-1) > 0
    assert touched.sum().item() == 16  # exactly the N FPS picks get a gradient
    with pytest.raises(ValueError, match="fewer points"):
        shape_consistent_loss(sparse[:, :8], sparse)


# ------------------------------------------------------------------- image-consistent


def test_image_consistent_loss_by_hand():
    img_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1,2,2,2)
    img_d = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # view 1: ‖diff‖²_F = 1; view 2: 4  ->  (1 + 4) / 2 = 2.5
    assert image_consistent_loss(img_s, img_d).item() == pytest.approx(2.5)
    # batch of two: item 2 identical images (0)  ->  mean 1.25
    both_s = torch.cat([img_s, img_s])
    both_d = torch.cat([img_d, img_s])
    assert image_consistent_loss(both_s, both_d).item() == pytest.approx(1.25)
    img_d.requires_grad_(True)
    image_consistent_loss(img_s, img_d).backward()
    torch.testing.assert_close(img_d.grad, (img_d.detach() - img_s))  # 2·diff / V, V = 2
    with pytest.raises(ValueError, match="shapes differ"):
        image_consistent_loss(img_s, img_s[:, :1])


# ---------------------------------------------------------------------------- uniform


def test_uniform_loss_by_hand():
    """P = 20 -> M = round(0.05·20) = 1 seed (index 0, FPS start "first").
    p = 0.1: r_d = √0.1 ≈ 0.316, n̂ = 2. Inside the ball: (0,0,0), (0.1,0,0), (0,0.2,0);
    the 17 other points are far away. |S| = 3, U_imbalance = (3 − 2)² / 2 = 0.5.
    NN distances inside S: 0.1, 0.1, 0.2; d̂ = √(2π·0.1 / (3√3)).
    """
    inside = [[0.0, 0, 0], [0.1, 0, 0], [0.0, 0.2, 0]]
    far = [[5.0 + i, 0, 0] for i in range(17)]
    dense = _t([inside + far]).requires_grad_(True)
    d_hat = math.sqrt(2 * math.pi * 0.1 / (3 * math.sqrt(3)))
    clutter = (2 * (0.1 - d_hat) ** 2 + (0.2 - d_hat) ** 2) / d_hat
    value = uniform_loss(dense, percentages=(0.1,))
    assert value.item() == pytest.approx(0.5 * clutter, rel=1e-6)
    # Two percentages are averaged; p = 0.001: r_d ≈ 0.032, only the seed is inside
    # (|S| = 1, no neighbour, U_clutter = 0) -> contributes 0.
    assert uniform_loss(dense, percentages=(0.1, 0.001)).item() == pytest.approx(
        0.25 * clutter, rel=1e-6
    )
    value.backward()
    assert dense.grad[0, :3].abs().sum() > 0
    assert dense.grad[0, 3:].abs().sum() == 0


def _square_grid(n_side: int) -> torch.Tensor:
    """(n_side², 3) square grid on z = 0 filling [-0.7, 0.7]² (inside the unit disk)."""
    axis = torch.linspace(-0.7, 0.7, n_side)
    xy = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    return torch.cat([xy, torch.zeros(xy.shape[0], 1)], -1)


def test_uniform_loss_ranks_grid_below_random_below_clumps():
    gen = torch.Generator().manual_seed(8)
    grid = _square_grid(32)  # 1024 points
    centres = grid[torch.randperm(1024, generator=gen)[:8]]  # 8 clumps of 128 points
    clumps = centres.repeat(128, 1) + 0.02 * torch.randn(1024, 3, generator=gen) * torch.tensor(
        [1.0, 1.0, 0.0]
    )
    random = torch.cat([1.4 * torch.rand(1024, 2, generator=gen) - 0.7, torch.zeros(1024, 1)], -1)
    batch = torch.stack([grid, random, clumps]).requires_grad_(True)
    per_cloud = [uniform_loss(batch[i : i + 1]) for i in range(3)]
    grid_value, random_value, clump_value = (v.item() for v in per_cloud)
    # Measured: grid ≈ 0.6, uniform random ≈ 35, clumps ≈ 2.6e4.
    assert all(math.isfinite(v) for v in (grid_value, random_value, clump_value))
    assert 0.0 <= grid_value < 0.1 * random_value
    assert random_value < 0.1 * clump_value
    sum(per_cloud).backward()
    assert torch.isfinite(batch.grad).all()
    assert batch.grad[1].abs().sum() > 0 and batch.grad[2].abs().sum() > 0


# ------------------------------------------------------------------------- joint loss


def _training_like_batch(gen: torch.Generator):
    sparse = _ball(2, 32, gen)
    dense = sparse.repeat(1, 4, 1) + 0.05 * torch.randn(2, 128, 3, generator=gen)
    img_s = torch.rand(2, 3, 8, 8, generator=gen)
    img_d = torch.rand(2, 3, 8, 8, generator=gen)
    return dense.requires_grad_(True), sparse, img_s, img_d.requires_grad_(True)


def test_every_term_sends_a_gradient():
    gen = torch.Generator().manual_seed(9)
    dense, sparse, img_s, img_d = _training_like_batch(gen)
    for term in (
        lambda: shape_consistent_loss(dense, sparse),
        lambda: shape_consistent_loss(dense, sparse, exact=True),
        lambda: hausdorff_loss(dense, sparse, direction="a_to_b"),
        lambda: uniform_loss(dense),
    ):
        (grad,) = torch.autograd.grad(term(), dense)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    (grad,) = torch.autograd.grad(image_consistent_loss(img_s, img_d), img_d)
    assert grad.abs().sum() > 0


def test_joint_loss_is_the_weighted_sum_of_its_terms():
    gen = torch.Generator().manual_seed(10)
    dense, sparse, img_s, img_d = _training_like_batch(gen)
    criterion = SSPULoss(lambda_sc=2.0, lambda_ic=3.0, lambda_hd=5.0, lambda_un=7.0)
    total, terms = criterion(dense, sparse, img_s, img_d)
    assert set(terms) == {"shape_consistent", "image_consistent", "hausdorff", "uniform"}
    expected = (
        2.0 * terms["shape_consistent"]
        + 3.0 * terms["image_consistent"]
        + 5.0 * terms["hausdorff"]
        + 7.0 * terms["uniform"]
    )
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(terms["image_consistent"], image_consistent_loss(img_s, img_d))
    torch.testing.assert_close(
        terms["hausdorff"], hausdorff_loss(dense, sparse, direction="a_to_b")
    )
    total.backward()
    assert dense.grad.abs().sum() > 0 and img_d.grad.abs().sum() > 0
    defaults = SSPULoss()
    assert (defaults.lambda_sc, defaults.lambda_ic, defaults.lambda_hd, defaults.lambda_un) == (
        100.0,
        30.0,
        10.0,
        25.0,
    )


def test_disabled_terms_are_not_computed(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a disabled term was computed")

    monkeypatch.setattr(losses, "shape_consistent_loss", must_not_run)
    monkeypatch.setattr(losses, "image_consistent_loss", must_not_run)
    gen = torch.Generator().manual_seed(11)
    dense, sparse, _, _ = _training_like_batch(gen)
    criterion = SSPULoss(use_sc=False, use_ic=False, lambda_hd=1.0, lambda_un=0.5)
    total, terms = criterion(dense, sparse)  # no images needed without Lic
    assert set(terms) == {"hausdorff", "uniform"}
    torch.testing.assert_close(total, terms["hausdorff"] + 0.5 * terms["uniform"])


def test_image_term_without_images_says_what_to_do():
    gen = torch.Generator().manual_seed(12)
    dense, sparse, _, _ = _training_like_batch(gen)
    with pytest.raises(ValueError, match="use_ic=False"):
        SSPULoss()(dense, sparse)


def test_image_loss_per_pixel_is_the_frobenius_norm_over_the_pixel_count():
    a = torch.zeros(2, 3, 4, 5)
    b = torch.zeros(2, 3, 4, 5)
    b[0, 1, 2, 3] = 1.0  # one differing pixel in one view of one item
    total = image_consistent_loss(a, b)  # mean over B·V of the per-view sums
    assert float(total) == pytest.approx(1.0 / 6.0)
    assert float(image_consistent_loss(a, b, per_pixel=True)) == pytest.approx(1.0 / 6.0 / 20.0)


def test_uniform_loss_seed_mean_is_the_seed_sum_over_the_seed_count():
    torch.manual_seed(0)
    dense = torch.rand(2, 400, 3) * 2 - 1
    total = uniform_loss(dense, percentages=(0.01,))
    mean = uniform_loss(dense, percentages=(0.01,), seed_reduction="mean")
    assert float(mean) == pytest.approx(float(total) / 20.0, rel=1e-5)  # M = 5 % of 400
    with pytest.raises(ValueError, match="seed_reduction"):
        uniform_loss(dense, seed_reduction="max")


def test_shape_consistent_point_sum_is_n_times_the_mean():
    torch.manual_seed(0)
    sparse = torch.rand(2, 16, 3)
    dense = sparse.repeat(1, 4, 1) + 0.05 * torch.randn(2, 64, 3)
    mean = shape_consistent_loss(dense, sparse, exact=True)
    total = shape_consistent_loss(dense, sparse, exact=True, point_sum=True)
    assert float(mean) > 0
    assert float(total) == pytest.approx(16 * float(mean), rel=1e-6)
