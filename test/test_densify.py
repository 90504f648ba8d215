"""Scan densification core: crop and cap, ground, clusters, patches (padded / split), one
batched upsampler call, owner merge, outlier drop, modes, caps, KITTI recall."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sspu_ros.config import load_config, roi_boxes
from sspu_ros.densify.densifier import PAD_OFFSET, crop_mask, densify_points, unpad_patches
from sspu_ros.errors import ConfigError
from sspu_ros.runtime.loading import load_upsampler

KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti" / "object"


class FakeUpsampler:
    """Copy 0 = the point, copies 1..r-2 = the point shifted by j*0.01 along x (unit-sphere
    units), copy r-1 = 4x the point (pushed out of the convex object: an outlier). Records
    every call."""

    name = "fake"

    def __init__(self, ratio=4, patch_size=64):
        self.ratio, self.patch_size, self.calls = ratio, patch_size, []

    def upsample_patches(self, patches):
        self.calls.append(np.array(patches))
        b, p, _ = patches.shape
        out = np.repeat(patches[:, :, None], self.ratio, axis=2).copy()  # (B, P, r, 3)
        for j in range(1, self.ratio - 1):
            out[:, :, j, 0] += 0.01 * j
        out[:, :, -1] *= 4.0
        return out.reshape(b, p * self.ratio, 3)


def _grid(xs, ys, z):
    g = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    return np.c_[g, np.full(len(g), z)]


def _box_surface(centre, size, step):
    """Points on the 4 side faces and the top of a box (what a LiDAR sees)."""
    (cx, cy, cz), (sx, sy, sz) = centre, size
    xs, ys = np.arange(-sx / 2, sx / 2 + 1e-9, step), np.arange(-sy / 2, sy / 2 + 1e-9, step)
    zs = np.arange(-sz / 2, sz / 2 + 1e-9, step)
    faces = [np.stack(np.meshgrid(xs, [y], zs), -1).reshape(-1, 3) for y in (-sy / 2, sy / 2)]
    faces += [np.stack(np.meshgrid([x], ys[1:-1], zs), -1).reshape(-1, 3)
              for x in (-sx / 2, sx / 2)]
    faces.append(np.stack(np.meshgrid(xs[1:-1], ys[1:-1], [sz / 2]), -1).reshape(-1, 3))
    return np.unique(np.vstack(faces).round(6), axis=0) + [cx, cy, cz]


def _scene():
    """Flat ground at z = -1.7 (0.25 m grid), a car-like box (> 64 points) at x = 10 and a
    pedestrian-like one (< 64 points) at x = -5."""
    ground = _grid(np.arange(-15, 15, 0.25), np.arange(-15, 15, 0.25), -1.7)
    car = _box_surface((10.0, 0.0, -0.9), (2.0, 1.0, 1.0), 0.25)
    ped = _box_surface((-5.0, 3.0, -0.8), (0.5, 0.5, 1.2), 0.25)
    xyz = np.vstack([ground, car, ped]).astype(np.float32)
    n0, n1 = len(ground), len(ground) + len(car)
    return xyz, np.arange(n0, n1), np.arange(n1, len(xyz))


def test_synthetic_scene_ground_clusters_one_call_owner_merge_outliers():
    xyz, car, ped = _scene()
    assert len(car) > 64 > len(ped) >= 5
    up = FakeUpsampler()
    params = load_config()
    r = densify_points(xyz, up, params)
    assert r.n_ground == crop_mask(xyz[:car[0]], params).sum()  # exactly the ground grid
    assert (r.n_clusters, r.n_candidates, r.n_groups, r.n_groups_capped) == (2, 2, 2, 0)
    assert len(up.calls) == 1  # one batched call per scan
    batch = up.calls[0]
    assert batch.shape == (r.n_patches, 64, 3) and r.n_patches >= 1 + -(-len(car) // 64)
    norms = np.linalg.norm(batch, axis=2)
    real = norms <= 1.0 + 1e-5  # the object's points: unit sphere; padding: far away
    np.testing.assert_allclose(np.where(real, norms, 0).max(axis=1), 1.0, atol=1e-5)
    assert (norms[~real] >= 4.0 - 1e-5).all()
    # every object point densified exactly once (owner rule), ground never
    np.testing.assert_array_equal(np.sort(r.selected), np.r_[car, ped])
    src, counts = np.unique(r.sources[:, 0], return_counts=True)
    np.testing.assert_array_equal(src, np.r_[car, ped])
    assert (counts == 2).all()  # copies 1, 2 kept; copy 0 is the point; copy 3 an outlier
    assert r.n_outliers == len(car) + len(ped)
    assert r.generated.shape == (2 * (len(car) + len(ped)), 3)
    # generated = source + a small shift along x only
    d = r.generated - xyz[r.sources[:, 0]]
    assert np.abs(d[:, 1:]).max() < 1e-5 and (d[:, 0] > 0).all() and d[:, 0].max() < 0.05
    # the two extra sources are neighbours of the same object
    assert np.isin(r.sources[np.isin(r.sources[:, 0], ped)], ped).all()
    assert set(r.timings_ms) == {"preprocess", "inference", "postprocess"}


def test_small_cluster_padded_with_far_copies_and_padding_copies_dropped():
    """A cluster smaller than a patch: its points (unit sphere), then copies of them moved
    by q * PAD_OFFSET along x (q-th repeat), at least 3 from every real point."""
    xyz, car, ped = _scene()
    up = FakeUpsampler()
    r = densify_points(xyz, up, load_config(overrides={"mode": "roi",
                                                       "roi.boxes": [-6, -4, 2, 4, -3, 3]}))
    assert r.n_patches == 1 and r.n_groups == 1
    patch = up.calls[0][0]
    n = len(ped)
    np.testing.assert_allclose(np.linalg.norm(patch[:n], axis=1).max(), 1.0, atol=1e-6)
    pads = np.arange(n, 64)
    moved = patch[pads % n] + np.c_[PAD_OFFSET * (pads // n), np.zeros((len(pads), 2))]
    np.testing.assert_allclose(patch[n:], moved, atol=1e-5)
    gap = np.linalg.norm(patch[n:, None] - patch[None, :n], axis=-1).min()
    assert gap >= PAD_OFFSET - 2.0 - 1e-5
    assert np.unique(patch.round(5), axis=0).shape[0] == 64  # no duplicates
    # moved back for a training set of node patches: plain repeats
    np.testing.assert_allclose(unpad_patches(patch[None])[0], patch[np.arange(64) % n],
                               atol=1e-5)
    assert r.generated.shape == (2 * n, 3)  # copies of padding points dropped
    np.testing.assert_array_equal(np.unique(r.sources[:, 0]), ped)


class _Recording:
    """An upsampler that records its input patches and output."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.ratio, self.patch_size = "rec", inner.ratio, inner.patch_size

    def upsample_patches(self, patches):
        out = self.inner.upsample_patches(patches)
        self.calls.append((np.array(patches), np.array(out)))
        return out


@pytest.mark.parametrize("which", ["midpoint", "generator"])
def test_small_cluster_is_upsampled_as_if_alone(which, tmp_path):
    """The padding is invisible to kNN upsamplers: the copies of a small cluster's points
    are those of the cluster alone (plain repeats made every point's nearest neighbours its
    own duplicates: midpoints and generator copies collapsed onto the point), and none
    coincides with its point."""
    import dataclasses

    import torch

    from sspu_ros.model.checkpoint import FORMAT_VERSION
    from sspu_ros.model.generator import GeneratorConfig, build_generator

    if which == "midpoint":
        inner = load_upsampler("midpoint", 4, config=load_config(None, {"model": "midpoint"}))
        inner.patch_size = 64
    else:
        torch.manual_seed(0)
        cfg = dataclasses.replace(GeneratorConfig.light(), channels=16, knn_k=8,
                                  coord_base="interpolate", offsets=False, candidates=7,
                                  phong=0.75)
        torch.save({"format": FORMAT_VERSION, "step": 0,
                    "model": build_generator(cfg).state_dict(),
                    "generator": dataclasses.asdict(cfg), "config": {"data.patch_size": 64}},
                   tmp_path / "g.pt")
        inner = load_upsampler(str(tmp_path / "g.pt"), 4, backend="torch")
    up = _Recording(inner)
    xyz, car, ped = _scene()
    # break the grid's distance ties (neighbour order would depend on the patch size)
    xyz[ped] += np.random.default_rng(0).normal(0, 0.005, (len(ped), 3)).astype(np.float32)
    r = densify_points(xyz, up, load_config(overrides={"mode": "roi",
                                                       "roi.boxes": [-6, -4, 2, 4, -3, 3]}))
    (patches, out), = up.calls  # one patch: (1, 64, 3) -> (1, 256, 3)
    n = len(ped)
    alone = inner.upsample_patches(patches[:, :n])[0]  # (4n, 3)
    np.testing.assert_allclose(out[0, : 4 * n], alone, atol=1e-5)
    moved = np.linalg.norm(r.generated - xyz[r.sources[:, 0]], axis=1)
    assert len(moved) == 3 * n and moved.min() > 1e-3


def test_modes_roi_full_objects():
    xyz, car, ped = _scene()
    wall = np.c_[np.repeat(np.arange(-12, 12, 0.2), 8), np.full(120 * 8, -12.0),
                 np.tile(np.arange(-1.3, 0.3, 0.2), 120)].astype(np.float32)
    pts = np.vstack([xyz, wall])
    walls = np.arange(len(xyz), len(pts))
    objects = densify_points(pts, FakeUpsampler(), load_config())
    assert objects.n_groups == 2 and not np.isin(walls, objects.selected).any()
    full = densify_points(pts, FakeUpsampler(), load_config(overrides={"mode": "full"}))
    assert full.n_groups == 3 and np.isin(walls, full.selected).all()
    roi = densify_points(pts, FakeUpsampler(), load_config(overrides={
        "mode": "roi", "roi.boxes": [8, 12, -2, 2, -3, 3, -20, 20, -13, -11, -3, 3]}))
    np.testing.assert_array_equal(np.sort(roi.selected), np.r_[car, walls])


def test_patch_cap_takes_nearest_clusters_that_fit():
    xyz, car, ped = _scene()  # pedestrian at 5.8 m (1 patch), car at 10 m (several)
    up = FakeUpsampler()
    r = densify_points(xyz, up, load_config(overrides={"patches.max_per_scan": 2}))
    assert (r.n_candidates, r.n_groups, r.n_groups_capped, r.n_patches) == (2, 1, 1, 1)
    np.testing.assert_array_equal(np.sort(r.selected), ped)
    # a cluster that does not fit is skipped, a smaller farther one still goes in
    far = _box_surface((-11.0, -9.0, -0.8), (0.5, 0.5, 1.2), 0.25)  # 14.2 m away
    pts = np.vstack([xyz, far]).astype(np.float32)
    r2 = densify_points(pts, FakeUpsampler(), load_config(overrides={"patches.max_per_scan": 2}))
    assert (r2.n_candidates, r2.n_groups, r2.n_groups_capped, r2.n_patches) == (3, 2, 1, 2)
    np.testing.assert_array_equal(np.sort(r2.selected), np.r_[ped, np.arange(len(xyz), len(pts))])
    none = densify_points(xyz, up, load_config(overrides={"patches.min_cluster_points": 1000}))
    assert none.n_candidates == 0 and none.generated.shape == (0, 3) and len(up.calls) == 1


def test_large_cluster_least_patches_compact_chunks_each_point_owned_by_its_chunk():
    # a 10 m x 0.5 m x 1.5 m box surface with 700 points: ceil(700 / 64) = 11 patches
    rng = np.random.default_rng(1)
    box = rng.uniform(0, 1, (700, 3)) * [10.0, 0.5, 1.5] + [5.0, 5.0, -1.4]
    xyz = np.vstack([_grid(np.arange(-2, 18, 0.25), np.arange(-2, 12, 0.25), -1.7),
                     box]).astype(np.float32)
    ids = np.arange(len(xyz) - 700, len(xyz))
    up = FakeUpsampler(patch_size=64)
    r = densify_points(xyz, up, load_config(overrides={"mode": "full"}))
    assert r.n_groups == 1 and r.n_patches == 11
    np.testing.assert_array_equal(np.sort(r.selected), ids)  # each point once
    batch = up.calls[0]  # (11, 64, 3): no padding repeats, context fills the chunks
    assert all(np.unique(b, axis=0).shape[0] == 64 for b in batch)
    # chunks are compact: bisection along x cuts the 10 m box into ~0.9 m slabs; the fake
    # copies move by 0.01 or 0.02 patch radii, so every patch radius is < 1.75 m (one patch
    # over the whole box would have a radius > 5 m)
    d = r.generated - xyz[r.sources[:, 0]]
    shift = d[np.abs(d[:, 1:]).max(1) < 1e-5, 0]  # copies 1 and 2 (copy 3 is scaled)
    assert shift.size == 2 * 700 and 0 < shift.min() and shift.max() < 0.035
    # 2 x coverage: twice as many, smaller chunks (more context each)
    r2 = densify_points(xyz, FakeUpsampler(patch_size=64),
                        load_config(overrides={"mode": "full", "patches.coverage": 2.0}))
    assert r2.n_patches == 22 and r2.n_selected == 700


def test_max_cluster_points_thins_a_dense_cluster_evenly():
    rng = np.random.default_rng(2)
    box = rng.uniform(0, 1, (1000, 3)) * [4.0, 1.8, 1.5] + [8.0, -1.0, -1.4]
    xyz = np.vstack([_grid(np.arange(0, 16, 0.25), np.arange(-5, 5, 0.25), -1.7),
                     box]).astype(np.float32)
    first = len(xyz) - 1000
    r = densify_points(xyz, FakeUpsampler(patch_size=64),
                       load_config(overrides={"patches.max_cluster_points": 250}))
    assert r.n_patches == 4 and r.n_selected == 250  # ceil(250 / 64)
    # every 4th point of the cluster, in scan order
    np.testing.assert_array_equal(np.sort(r.selected), first + np.arange(0, 1000, 4))


def test_crop_and_max_points_cap_keep_the_nearest():
    rng = np.random.default_rng(0)
    near = np.c_[rng.uniform(2, 4, (50, 2)), rng.uniform(-1, 1, 50)]
    far = np.c_[rng.uniform(30, 32, (50, 2)), rng.uniform(-1, 1, 50)]
    high = np.c_[rng.uniform(2, 4, (10, 2)), np.full(10, 9.0)]  # above crop.max_z
    xyz = np.vstack([far, near, high]).astype(np.float32)
    params = load_config(overrides={"max_points": 60, "mode": "full", "ground.enabled": False,
                                    "cluster.tolerance": 2.0})
    assert crop_mask(xyz, params).sum() == 100
    r = densify_points(xyz, load_upsampler("midpoint", 4), params)
    assert (r.n_capped, r.n_cropped_out) == (40, 10)
    assert set(range(50, 100)) <= set(r.selected.tolist()) and len(r.selected) <= 60
    assert r.generated.shape[0] == 3 * r.n_selected - r.n_outliers
    assert r.sources.shape == (r.generated.shape[0], 3)


def test_outlier_drop_can_be_disabled():
    xyz, car, ped = _scene()
    r = densify_points(xyz, FakeUpsampler(), load_config(overrides={"outliers.enabled": False}))
    assert r.n_outliers == 0 and r.generated.shape == (3 * (len(car) + len(ped)), 3)


def test_roi_boxes_validation():
    np.testing.assert_array_equal(roi_boxes([0, 1, 0, 1, 0, 1]), [[0, 1, 0, 1, 0, 1]])
    assert roi_boxes([]).shape == (0, 6)
    with pytest.raises(ValueError, match="6 numbers per box"):
        roi_boxes([0, 1, 2])
    with pytest.raises(ConfigError, match="roi.boxes.*box 1.*min"):
        load_config(overrides={"roi.boxes": [0, 1, 0, 1, 0, 1, 5, 4, 0, 1, 0, 1]})


@pytest.mark.skipif(not (KITTI / "velodyne" / "000010.bin").is_file(),
                    reason=f"KITTI dev data not found at {KITTI} (../shared/data layout)")
def test_kitti_000010_default_config_densifies_every_labelled_object():
    from sspu_ros.io.kitti import (
        boxes_to_lidar,
        points_in_boxes,
        read_calib,
        read_labels,
        read_velodyne,
    )

    xyz = read_velodyne(KITTI / "velodyne" / "000010.bin")[:, :3]
    objs = read_labels(KITTI / "label_2" / "000010.txt")
    assert sorted(o.type for o in objs) == ["Car"] * 8 + ["Pedestrian"]
    inside = points_in_boxes(xyz, boxes_to_lidar(objs, read_calib(KITTI / "calib" / "000010.txt")))
    up = FakeUpsampler(patch_size=256)
    r = densify_points(xyz, up, load_config())
    assert len(up.calls) == 1 and r.n_groups_capped == 0
    densified = np.zeros(len(xyz), bool)
    densified[r.selected] = True
    for b in range(len(objs)):  # recall of labelled objects with >= 5 points: 9 / 9
        assert (inside == b).sum() >= 5
        assert densified[inside == b].any(), f"object {b} ({objs[b].type}) not densified"
    # ground and walls stay out: far fewer points densified than the non-ground scan
    assert r.n_selected < 0.6 * (len(xyz) - r.n_ground)


@pytest.mark.skipif(not (KITTI / "velodyne" / "000010.bin").is_file(),
                    reason=f"KITTI dev data not found at {KITTI} (../shared/data layout)")
def test_kitti_dev_frames_recall_and_patch_budget():
    """All 5 dev frames, default config: every labelled vehicle / pedestrian / cyclist
    inside the crop range with >= 5 non-ground points is densified, no cap is hit, and
    far fewer clusters than the non-ground clusters are kept."""
    from sspu_ros.io.kitti import (
        boxes_to_lidar,
        points_in_boxes,
        read_calib,
        read_labels,
        read_velodyne,
    )

    params = load_config()
    kinds = {"Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram"}
    checked = 0
    for scan in sorted((KITTI / "velodyne").glob("*.bin")):
        label = KITTI / "label_2" / f"{scan.stem}.txt"
        if not label.is_file():
            continue
        xyz = read_velodyne(scan)[:, :3]
        objs = read_labels(label, classes=kinds)
        boxes = boxes_to_lidar(objs, read_calib(KITTI / "calib" / f"{scan.stem}.txt"))
        inside = points_in_boxes(xyz, boxes)
        r = densify_points(xyz, FakeUpsampler(patch_size=256), params)
        assert r.n_groups_capped == 0 and r.n_patches <= params["patches.max_per_scan"]
        assert r.n_candidates < 0.4 * r.n_clusters
        densified = np.zeros(len(xyz), bool)
        densified[r.selected] = True
        in_range = np.hypot(boxes[:, 0], boxes[:, 1]) + boxes[:, 3] / 2 < params["crop.max_range"]
        for b in np.flatnonzero(in_range):
            if (inside == b).sum() >= 5:
                checked += 1
                assert densified[inside == b].any(), f"{scan.stem} object {b} not densified"
    assert checked >= 12


def test_cli_densify_writes_bin_and_flagged_ply(tmp_path, capsys):
    from sspu_ros.cli.main import main
    from sspu_ros.io.cloud_files import read_cloud, write_cloud

    xyz, car, ped = _scene()
    intensity = np.linspace(0, 1, len(xyz), dtype=np.float32)
    src = tmp_path / "scan.npy"
    write_cloud(src, xyz, {"intensity": intensity})
    assert main(["densify", str(src), "-o", str(tmp_path / "out.bin"), "--mode", "objects"]) == 0
    out = capsys.readouterr().out
    assert "mode objects" in out and "2 densified" in out
    dense = np.fromfile(tmp_path / "out.bin", dtype="<f4").reshape(-1, 4)
    n_gen = 3 * (len(car) + len(ped))  # midpoint model: r-1 = 3 generated per point
    assert dense.shape[0] == len(xyz) + n_gen
    np.testing.assert_array_equal(dense[:len(xyz), :3], xyz)
    np.testing.assert_array_equal(dense[:len(xyz), 3], intensity)
    lo, hi = intensity[np.r_[car, ped]].min(), intensity[np.r_[car, ped]].max()
    assert ((dense[len(xyz):, 3] >= lo - 1e-6) & (dense[len(xyz):, 3] <= hi + 1e-6)).all()
    assert main(["densify", str(src), "-o", str(tmp_path / "out.ply"), "--mode", "full"]) == 0
    ply = read_cloud(tmp_path / "out.ply")
    assert ply.attributes["generated"].sum() == len(ply) - len(xyz)
    assert main(["densify", str(tmp_path / "missing.bin"), "-o", str(tmp_path / "x.bin")]) == 2
    assert "sspu: error:" in capsys.readouterr().err


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40), st.sampled_from(["objects", "roi", "full"]),
       st.integers(1, 30), st.booleans())
def test_densify_invariants_on_random_scenes(seed, n_blobs, mode, cap, ground):
    """Random blobs of random sizes: every densified point is owned by exactly one patch,
    sources index the scan, generated points are finite, counts add up, one call."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, n_blobs)
    centres = rng.uniform(-20, 20, (n_blobs, 3)) * [1, 1, 0.05]
    xyz = np.vstack([c + rng.normal(0, rng.uniform(0.05, 0.5), (s, 3))
                     for c, s in zip(centres, sizes, strict=True)]).astype(np.float32)
    up = FakeUpsampler(patch_size=16)
    params = load_config(overrides={"mode": mode, "patches.max_per_scan": cap,
                                    "ground.enabled": ground, "patches.min_cluster_points": 2,
                                    "roi.boxes": [-10, 10, -10, 10, -3, 3]})
    r = densify_points(xyz, up, params)
    assert len(up.calls) <= 1 and r.n_patches <= cap
    assert r.n_groups + r.n_groups_capped == r.n_candidates <= r.n_clusters
    if r.n_patches:
        assert len(up.calls) == 1 and up.calls[0].shape == (r.n_patches, 16, 3)
    assert np.unique(r.selected).size == r.selected.size == r.n_selected
    assert r.generated.shape == (3 * r.n_selected - r.n_outliers, 3)
    assert np.isfinite(r.generated).all()
    assert r.sources.shape == (r.generated.shape[0], 3)
    assert np.isin(r.sources[:, 0], r.selected).all()
    assert r.sources.min(initial=0) >= 0 and r.sources.max(initial=0) < len(xyz)
