"""Tests of the differentiable rendering unit (sspu_ros.model.rendering): cameras, per-point
triangles (paper Eq. 2-4 and the camera-facing variant), the local spacing, and the
windowed soft rasterizer against a dense reference and hand-computed cases."""

import math

import pytest
import torch

from sspu_ros.model.rendering import (
    Cameras,
    _closest_edge,
    _log_one_minus_coverage,
    _rasterize_soft_dense,
    _triangle_windows,
    _window_groups,
    benchmark_render,
    blur_radius,
    local_spacing,
    look_at_cameras,
    make_cameras,
    point_triangles,
    project_points,
    rasterize_soft,
    render_silhouettes,
)

F64 = torch.float64


def _grid_plane(n_side: int, half: float = 0.6) -> torch.Tensor:
    """(1, n_side^2, 3) regular grid on the plane x = 0 (faces a camera on the x axis)."""
    g = torch.linspace(-half, half, n_side, dtype=F64)
    y, z = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([torch.zeros_like(y), y, z], dim=-1).reshape(1, -1, 3)


def _camera_on_x(distance: float = 2.5) -> Cameras:
    return look_at_cameras(torch.tensor([[distance, 0.0, 0.0]], dtype=F64))


def _centroid_uv(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2) intensity-weighted centre (u, v) in image coordinates."""
    h, w = images.shape[-2:]
    u = -1.0 + (2.0 * torch.arange(w, dtype=images.dtype) + 1.0) / w
    v = -1.0 + (2.0 * torch.arange(h, dtype=images.dtype) + 1.0) / h
    mass = images.sum((-2, -1))
    return torch.stack([(images * u).sum((-2, -1)) / mass,
                        (images * v[:, None]).sum((-2, -1)) / mass], dim=-1)


# --------------------------------------------------------------------------- cameras


def test_make_cameras_look_at_origin_with_z_up():
    cams = make_cameras(8, radius=2.5, elevations_deg=(-30.0, 30.0), dtype=F64)
    assert cams.centers.shape == (8, 3) and cams.rotations.shape == (8, 3, 3)
    torch.testing.assert_close(cams.centers.norm(dim=-1), torch.full((8,), 2.5, dtype=F64))
    # alternating elevations, azimuths spread by 45 degrees
    elevation = torch.rad2deg(torch.asin(cams.centers[:, 2] / 2.5))
    torch.testing.assert_close(elevation, torch.tensor([-30.0, 30.0] * 4, dtype=F64))
    azimuth = torch.rad2deg(torch.atan2(cams.centers[:, 1], cams.centers[:, 0])) % 360
    torch.testing.assert_close(azimuth, torch.arange(8, dtype=F64) * 45.0)
    eye = torch.eye(3, dtype=F64).expand(8, 3, 3)
    torch.testing.assert_close(cams.rotations @ cams.rotations.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(cams.rotations), torch.ones(8, dtype=F64))
    # the origin is straight ahead at depth 2.5, world up projects upwards (v < 0)
    origin = torch.zeros(1, 8, 1, 3, dtype=F64)
    uv, depth = project_points(origin, cams)
    torch.testing.assert_close(uv, torch.zeros_like(uv))
    torch.testing.assert_close(depth, torch.full_like(depth, 2.5))
    up_uv, _ = project_points(origin + torch.tensor([0.0, 0.0, 0.3], dtype=F64), cams)
    assert (up_uv[..., 1] < 0).all()
    torch.testing.assert_close(up_uv[..., 0], torch.zeros_like(up_uv[..., 0]))


def test_look_at_handles_view_direction_parallel_to_up():
    cams = look_at_cameras(torch.tensor([[0.0, 0.0, 2.5], [0.0, 0.0, -3.0]], dtype=F64))
    assert torch.isfinite(cams.rotations).all()
    torch.testing.assert_close(torch.linalg.det(cams.rotations), torch.ones(2, dtype=F64))
    forward = cams.rotations[:, 2]
    torch.testing.assert_close(forward, torch.tensor([[0.0, 0, -1], [0, 0, 1]], dtype=F64))


def test_project_points_by_hand():
    """Camera at (2.5, 0, 0) looking down -x with up = z: image right is world +y."""
    cams = _camera_on_x()
    focal = 1.0 / math.tan(math.radians(25.0))
    pts = torch.tensor([[[[0.0, 0.5, 0.0], [0.0, 0.0, 0.5], [0.5, 0.0, -0.4]]]], dtype=F64)
    uv, depth = project_points(pts, cams)
    expected = torch.tensor([[0.5 / 2.5, 0.0], [0.0, -0.5 / 2.5], [0.0, 0.4 / 2.0]],
                            dtype=F64) * focal
    torch.testing.assert_close(uv[0, 0], expected)
    torch.testing.assert_close(depth[0, 0], torch.tensor([2.5, 2.5, 2.0], dtype=F64))


# --------------------------------------------------------------------------- triangles


@pytest.mark.parametrize("mode", ["facing", "paper"])
def test_triangle_vectors_are_unit_and_120_degrees_apart(mode):
    torch.manual_seed(0)
    pts = torch.randn(2, 50, 3, dtype=F64) * 0.5
    size = torch.rand(2, 50, dtype=F64) + 0.1
    cams = make_cameras(8, dtype=F64)
    tri = point_triangles(pts, cams.centers, size, mode)
    assert tri.shape == (2, 8, 50, 3, 3)
    offsets = (tri - pts[:, None, :, None, :]) / size[:, None, :, None, None]
    torch.testing.assert_close(offsets.norm(dim=-1), torch.ones(2, 8, 50, 3, dtype=F64))
    gram = offsets @ offsets.transpose(-1, -2)
    expected = torch.full((3, 3), -0.5, dtype=F64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected.expand_as(gram))
    torch.testing.assert_close(tri.mean(-2), pts[:, None].expand(2, 8, 50, 3))  # centred


def test_paper_mode_follows_eq_2_to_4_and_lies_in_plane_perpendicular_to_x_axis():
    torch.manual_seed(1)
    pts = torch.randn(1, 40, 3, dtype=F64) * 0.5
    cams = make_cameras(8, dtype=F64)
    tri = point_triangles(pts, cams.centers, torch.ones(1, 40, dtype=F64), "paper")
    v1, v2, v3 = (tri - pts[:, None, :, None, :]).unbind(-2)
    s = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    x = pts[:, None] - cams.centers[None, :, None]
    eq2 = torch.linalg.cross(x, s.expand_as(x))
    torch.testing.assert_close(v1, eq2 / eq2.norm(dim=-1, keepdim=True))  # Eq. (2)
    v = torch.linalg.cross(s.expand_as(v1), v1)  # Eq. (3)
    # Eq. (4) for v2: coplanar with v1 and v, 30 degrees from v, 120 degrees from v1
    zeros = torch.zeros_like(v1[..., 0])
    torch.testing.assert_close((torch.linalg.cross(v2, v1) * v).sum(-1), zeros)
    torch.testing.assert_close((v * v2).sum(-1), zeros + math.cos(math.pi / 6))
    torch.testing.assert_close((v1 * v2).sum(-1), zeros - 0.5)
    normal = torch.linalg.cross(v2 - v1, v3 - v1)
    torch.testing.assert_close(normal[..., 1:], torch.zeros_like(normal[..., 1:]))
    assert (normal[..., 0].abs() > 1.0).all()


def test_paper_mode_view_ray_parallel_to_s_has_no_nan():
    cams = _camera_on_x()
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]], dtype=F64, requires_grad=True)
    tri = point_triangles(pts, cams.centers, torch.full((1, 2), 0.1, dtype=F64), "paper")
    assert torch.isfinite(tri).all()
    offsets = (tri - pts.detach()[:, None, :, None, :]) / 0.1
    torch.testing.assert_close(offsets.norm(dim=-1), torch.ones(1, 1, 2, 3, dtype=F64))
    torch.testing.assert_close(offsets[..., 0], torch.zeros(1, 1, 2, 3, dtype=F64))  # ⟂ s
    tri.sum().backward()
    assert torch.isfinite(pts.grad).all()


def test_facing_mode_normal_is_along_the_view_ray():
    torch.manual_seed(2)
    pts = torch.randn(1, 60, 3, dtype=F64) * 0.5
    centers = torch.cat([make_cameras(8, dtype=F64).centers,
                         torch.tensor([[0.0, 0.0, 2.5], [0.1, 0.0, -2.5]], dtype=F64)])
    tri = point_triangles(pts, centers, torch.full((1, 60), 0.05, dtype=F64), "facing")
    normal = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    ray = pts[:, None] - centers[None, :, None]
    cosine = torch.nn.functional.cosine_similarity(normal, ray, dim=-1)
    torch.testing.assert_close(cosine.abs(), torch.ones_like(cosine))


def test_paper_triangles_are_edge_on_for_cameras_perpendicular_to_the_x_axis():
    """Paper triangles have normal s = x axis: face-on from the x axis; edge-on from the
    y axis for points in the plane x = 0, foreshortened by |x̂ · s| elsewhere."""
    torch.manual_seed(3)
    blob = torch.randn(1, 40, 3, dtype=F64) * 0.25
    in_plane = blob * torch.tensor([0.0, 1.0, 1.0], dtype=F64)  # the plane x = 0
    on_y = look_at_cameras(torch.tensor([[0.0, 2.5, 0.0]], dtype=F64))
    on_x = _camera_on_x()

    def coverage(points, cams, mode, **kwargs):
        return render_silhouettes(points, cams, mode=mode, **kwargs).sum()

    facing = coverage(in_plane, on_y, "facing")
    assert facing > 300.0
    assert coverage(in_plane, on_y, "paper") < 0.08 * facing  # lines, blurred by sigma
    sharp = dict(image_size=128, sigma=1e-5)
    assert coverage(in_plane, on_y, "paper", **sharp) < 0.005 * coverage(
        in_plane, on_y, "facing", **sharp)
    assert coverage(in_plane, on_x, "paper") > 0.9 * coverage(in_plane, on_x, "facing")
    # off the plane the triangles are seen at a grazing angle: between the two
    off_plane = coverage(blob, on_y, "paper") / coverage(blob, on_y, "facing")
    assert 0.1 < off_plane < 0.5
    # projected areas: exactly 0 in the plane, |x̂ · s| times the facing area elsewhere
    size = torch.full((1, 40), 0.05, dtype=F64)
    areas = {}
    for mode in ("paper", "facing"):
        tri2d, _ = project_points(point_triangles(blob, on_y.centers, size, mode), on_y)
        edge1, edge2 = tri2d[..., 1, :] - tri2d[..., 0, :], tri2d[..., 2, :] - tri2d[..., 0, :]
        areas[mode] = (edge1[..., 0] * edge2[..., 1] - edge1[..., 1] * edge2[..., 0]).abs()
    ray = blob - on_y.centers
    cosine = (ray[..., 0] / ray.norm(dim=-1))[:, None]
    torch.testing.assert_close(areas["paper"], areas["facing"] * cosine.abs(), rtol=0.1,
                               atol=1e-9)


# --------------------------------------------------------------------------- spacing


def test_local_spacing_by_hand_and_halves_with_four_times_the_points():
    line = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]], dtype=F64)
    torch.testing.assert_close(local_spacing(line, k=1), torch.tensor([[1.0, 1.0, 2.0]], dtype=F64))
    torch.testing.assert_close(local_spacing(line, k=2), torch.tensor([[2.0, 1.5, 2.5]], dtype=F64))
    sparse, dense = _grid_plane(9), _grid_plane(17)  # 81 and 289 points: spacing h and h/2
    s_sparse, s_dense = local_spacing(sparse), local_spacing(dense)
    h = 1.2 / 8
    # interior and edge points have >= 3 neighbours at exactly h; corners differ
    assert torch.isclose(s_sparse.median(), torch.tensor(h, dtype=F64))
    assert torch.isclose(s_dense.median(), torch.tensor(h / 2, dtype=F64))
    torch.testing.assert_close(s_dense.mean() / s_sparse.mean(), torch.tensor(0.5, dtype=F64),
                               atol=0.02, rtol=0)


def test_sparse_and_dense_renderings_of_one_surface_agree():
    directions = torch.tensor([[1.0, 0.3, 0.2], [1.0, -0.5, 0.4], [-1.0, 0.4, -0.3],
                               [-0.8, -0.3, 0.6]], dtype=F64)
    cams = look_at_cameras(2.5 * directions / directions.norm(dim=-1, keepdim=True))
    sparse = render_silhouettes(_grid_plane(12), cams)
    dense = render_silhouettes(_grid_plane(23), cams)  # ~4x the points
    assert (sparse.amax((-2, -1)) > 0.99).all() and sparse.mean() > 0.25
    # they differ mostly along the outline, which the sparse triangles overhang further
    assert (sparse - dense).abs().mean() < 0.06
    # control: the sparse cloud with triangles sized for the dense one has holes
    small = 1.25 * local_spacing(_grid_plane(23)).median()
    tri2d, _ = project_points(point_triangles(
        _grid_plane(12), cams.centers, torch.full((1, 144), float(small), dtype=F64)), cams)
    holes = rasterize_soft(tri2d, 64)
    assert (holes - dense).abs().mean() > 2 * (sparse - dense).abs().mean()


# --------------------------------------------------------------------------- rasterizer


def test_distance_to_a_known_triangle():
    tri = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=F64)
    px = torch.tensor([[[0.25, 0.1, 1.0, -1.0, 0.5, 2.0]]], dtype=F64)
    py = torch.tensor([[[0.25, 0.1, 1.0, 0.5, 0.0, -1.0]]], dtype=F64).transpose(1, 2)
    # evaluate on the diagonal of the (py, px) grid: pairs (px[i], py[i])
    dist2, _, _, _, _, inside = _closest_edge(tri, px, py)
    dist2, inside = dist2[0].diagonal(), inside[0].diagonal()
    torch.testing.assert_close(dist2, torch.tensor([0.0625, 0.01, 0.5, 1.0, 0.0, 2.0], dtype=F64))
    assert inside.tolist() == [True, True, False, False, False, False]
    # the coverage D: sigmoid(+d2/sigma) inside, 0.5 on the edge, sigmoid(-d2/sigma) outside
    sigma = 0.1
    log_bg = _log_one_minus_coverage(tri, px, py, sigma, cut2=math.inf)[0].diagonal()
    coverage = 1.0 - log_bg.exp()
    expected = torch.sigmoid(torch.tensor([0.625, 0.1, -5.0, -10.0, 0.0, -20.0], dtype=F64))
    torch.testing.assert_close(coverage, expected)


def test_single_big_triangle_covers_the_centre_only():
    tri = torch.tensor([[[[[-0.3, -0.3], [0.3, -0.3], [0.0, 0.3]]]]], dtype=F64)
    image = rasterize_soft(tri, 64)[0, 0]
    assert image.shape == (64, 64)
    assert (image[30:34, 30:34] > 0.999).all()
    assert image[:8].max() < 1e-6 and image[:, :8].max() < 1e-6 and image[56:].max() < 1e-6
    # the edge sits at the half level: pixel centre rows around v = -0.3 straddle 0.5
    column = image[:, 32]
    assert column[22] > 0.5 > column[21]  # v(row 21) = -0.328, v(row 22) = -0.297
    assert 0.0 <= image.min() and image.max() <= 1.0


def _random_triangles(b, v, f, image_size, generator, dtype=F64):
    """Mixed sizes, some partly or fully off-image, some degenerate."""
    centre = torch.rand(b, v, f, 1, 2, generator=generator, dtype=dtype) * 2.6 - 1.3
    size = torch.rand(b, v, f, 1, 1, generator=generator, dtype=dtype) * 0.4 + 0.01
    tri = centre + size * torch.randn(b, v, f, 3, 2, generator=generator, dtype=dtype)
    tri[0, 0, 0] = tri[0, 0, 0, :1]  # all three vertices equal
    tri[0, 0, 1, 2] = 0.5 * (tri[0, 0, 1, 0] + tri[0, 0, 1, 1])  # collinear
    return tri


@pytest.mark.parametrize("image_size", [16, (12, 20)])
def test_windowed_rasterizer_matches_dense_reference(image_size):
    gen = torch.Generator().manual_seed(3)
    for sigma in (1e-4, 1e-3, 2e-2):
        tri = _random_triangles(2, 3, 12, image_size, gen)
        windowed = rasterize_soft(tri, image_size, sigma)
        exact_cut = _rasterize_soft_dense(tri, image_size, sigma)
        no_cut = _rasterize_soft_dense(tri, image_size, sigma, eps=None)
        torch.testing.assert_close(windowed, exact_cut, atol=1e-12, rtol=0)
        # skipped pairs each had D < eps: I changes by at most n_triangles * eps
        assert (windowed - no_cut).abs().max() <= 12 * 1e-3


def test_windowed_gradients_match_dense_autograd():
    """Degenerate triangles are left out: there the distance is not differentiable and
    the two implementations pick different (valid) subgradients."""
    gen = torch.Generator().manual_seed(4)
    tri = _random_triangles(2, 2, 10, 16, gen)[:, :, 2:].clone().requires_grad_(True)
    weights = torch.rand(2, 2, 16, 16, generator=gen, dtype=F64)
    (rasterize_soft(tri, 16, 2e-3) * weights).sum().backward()
    grad_windowed = tri.grad.clone()
    tri.grad = None
    (_rasterize_soft_dense(tri, 16, 2e-3) * weights).sum().backward()
    torch.testing.assert_close(grad_windowed, tri.grad, atol=1e-9, rtol=1e-7)
    assert grad_windowed.abs().sum() > 0


def test_gradcheck_rasterizer_and_renderer():
    gen = torch.Generator().manual_seed(5)
    tri = (torch.rand(1, 1, 2, 3, 2, generator=gen, dtype=F64) * 1.6 - 0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: rasterize_soft(t, 8, 3e-2), (tri,), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)
    cams = make_cameras(2, dtype=F64)
    torch.manual_seed(0)
    pts = (0.3 * torch.randn(1, 3, 3, dtype=F64)).requires_grad_(True)
    for mode in ("facing", "paper"):
        def render(p, mode=mode):
            return render_silhouettes(p, cams, image_size=8, sigma=3e-3, knn_k=1,
                                      triangle_scale=2.0, mode=mode)

        assert render(pts).sum() > 1.0
        assert torch.autograd.gradcheck(render, (pts,), eps=1e-6, atol=1e-5, rtol=1e-3,
                                        fast_mode=True)


def test_moving_points_moves_the_silhouette():
    cams = _camera_on_x()  # image u grows with world y, v grows with world -z
    pts = _grid_plane(6, half=0.2)
    base = _centroid_uv(render_silhouettes(pts, cams))[0, 0]
    moved = _centroid_uv(render_silhouettes(pts + torch.tensor([0.0, 0.3, 0.0], dtype=F64),
                                            cams))[0, 0]
    focal = cams.focal
    assert moved[0] - base[0] == pytest.approx(focal * 0.3 / 2.5, abs=0.02)
    assert abs(moved[1] - base[1]) < 0.01
    # the gradient agrees: pushing the points along -z moves the centroid down (v up)
    pts = pts.clone().requires_grad_(True)
    _centroid_uv(render_silhouettes(pts, cams))[0, 0, 1].backward()
    assert pts.grad[..., 2].sum() < 0
    assert pts.grad[..., 2].sum().abs() > 10 * pts.grad[..., 1].sum().abs()


def test_coincident_points_give_finite_gradients():
    torch.manual_seed(6)
    pts = torch.randn(2, 20, 3, dtype=torch.float32) * 0.4
    pts[:, 1] = pts[:, 0]
    pts[:, 2] = pts[:, 0]
    pts[1, 5:9] = pts[1, 4]
    pts.requires_grad_(True)
    cams = make_cameras(4)
    for mode in ("facing", "paper"):
        images = render_silhouettes(pts, cams, mode=mode)
        assert torch.isfinite(images).all()
        images.square().sum().backward()
        assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0
        pts.grad = None


def test_window_groups_cover_each_visible_triangle_once():
    gen = torch.Generator().manual_seed(7)
    tri = _random_triangles(1, 1, 200, 32, gen).reshape(-1, 3, 2)
    first, count = _triangle_windows(tri, 32, 32, blur_radius(1e-3), None)
    groups = _window_groups(count, 32, 32)
    members = torch.cat([m for m, _, _ in groups])
    visible = torch.nonzero((count > 0).all(1)).squeeze(1)
    assert sorted(members.tolist()) == visible.tolist() and 0 < len(visible) < 200
    for m, k_u, k_v in groups:
        assert (count[m, 0] <= k_u).all() and (count[m, 1] <= k_v).all()
        assert (count[m, 0] > k_u / 1.5 - 1).all() or k_u <= 2
    assert ((first >= 0) & (first + count <= 32)).all()


def test_max_window_crops_outlier_triangles_around_their_centroid():
    tri = torch.tensor([[[[[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]]]]], dtype=F64)
    full = rasterize_soft(tri, 32)
    cropped = rasterize_soft(tri, 32, max_window=8)
    covered = torch.nonzero(cropped[0, 0] > 0)
    assert len(covered) == 64 and full[0, 0].gt(0.5).sum() > 200
    # the 8 x 8 window sits around the centroid (0, -0.3) = pixel (row 10.7, col 15.5):
    # rows 7..14, cols 12..19
    assert covered[:, 0].min() == 7 and covered[:, 0].max() == 14
    assert covered[:, 1].min() == 12 and covered[:, 1].max() == 19


def test_render_silhouettes_shapes_devices_and_errors():
    cams = make_cameras(3)
    pts = torch.rand(2, 32, 3) - 0.5
    images = render_silhouettes(pts, cams, image_size=24)
    assert images.shape == (2, 3, 24, 24) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.sum() > 0
    with pytest.raises(ValueError, match="mode"):
        render_silhouettes(pts, cams, mode="tangent")
    with pytest.raises(ValueError, match="backend"):
        render_silhouettes(pts, cams, backend="opengl")
    with pytest.raises(ValueError, match="tri2d"):
        rasterize_soft(torch.zeros(2, 3, 4, 2))
    with pytest.raises(ValueError, match="non-finite"):
        render_silhouettes(pts.index_fill(1, torch.tensor([3]), float("nan")), cams)
    empty = rasterize_soft(torch.full((1, 1, 2, 3, 2), 5.0), 8)  # all off-image
    assert empty.shape == (1, 1, 8, 8) and empty.abs().max() == 0


def test_benchmark_render_reports_figures():
    (row,) = benchmark_render(batch=1, n_views=2, n_points=(64,), image_size=16, repeats=1)
    assert row["pairs"] < row["dense_pairs"] and row["forward_ms"] > 0 and row["saved_mb"] > 0


def test_pytorch3d_backend_matches_ours():
    pytest.importorskip("pytorch3d", reason="pytorch3d is not installed (no Linux wheel on "
                                            "PyPI); the optional backend is not exercised")
    torch.manual_seed(8)
    cams = make_cameras(4)
    pts = torch.randn(2, 64, 3) * 0.3
    ours = render_silhouettes(pts, cams, image_size=32, sigma=4e-4)
    theirs = render_silhouettes(pts, cams, image_size=32, sigma=4e-4, backend="pytorch3d",
                                faces_per_pixel=64)
    assert (ours - theirs).abs().mean() < 0.01
