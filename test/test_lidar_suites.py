"""The LiDAR benchmark suites (kitti-beams, lidar-sim): helpers exactly, suites as smoke
tests on one frame / one scene of the dev data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sspu_ros.errors import CloudFileError
from sspu_ros.evaluation.lidar_suites import (
    BEAM_MODES,
    INPUT,
    MIDPOINTS,
    RANGE_INTERP,
    fit_ground_plane,
    format_kitti_beams,
    format_lidar_sim,
    height_above,
    in_front,
    kitti_frames,
    run_kitti_beams,
    run_lidar_sim,
)
from sspu_ros.evaluation.lidar_suites import _split_models as split_models

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_ground_plane_fit_recovers_a_tilted_plane_despite_objects():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-30, 30, (4000, 2))
    ground = np.column_stack([xy, 0.01 * xy[:, 0] - 0.02 * xy[:, 1] - 1.7])
    ground[:, 2] += rng.normal(0, 0.02, len(ground))
    box = np.column_stack([rng.uniform(5, 9, (800, 2)), rng.uniform(-1.6, 0.0, 800)])
    plane = fit_ground_plane(np.concatenate([ground, box]))
    np.testing.assert_allclose(plane, [0.01, -0.02, -1.7], atol=3e-3)
    assert height_above(np.array([[10.0, 5.0, 0.0]]), plane)[0] == pytest.approx(1.7, abs=0.02)
    with pytest.raises(ValueError, match="cannot fit a ground plane"):
        fit_ground_plane(box + [0.0, 0.0, 1.0])


def test_front_region():
    pts = np.array([[1.0, 0.0, 0.0], [-0.1, 0.0, 0.0], [39.9, -19.9, 5.0], [40.5, 0.0, 0.0],
                    [10.0, 20.5, 0.0]])
    np.testing.assert_array_equal(in_front(pts), [True, False, True, False, False])
    np.testing.assert_array_equal(in_front(pts, margin=1.0), [True, True, True, True, True])


def test_missing_kitti_layout_is_a_clear_error(tmp_path):
    with pytest.raises(CloudFileError, match="no object/velodyne"):
        kitti_frames(tmp_path)
    (tmp_path / "object" / "velodyne").mkdir(parents=True)
    (tmp_path / "object" / "velodyne" / "000000.bin").write_bytes(b"")
    with pytest.raises(CloudFileError, match="label_2/ and calib/"):
        kitti_frames(tmp_path)


def test_kitti_beams_smoke_one_frame(tmp_path):
    if not (DATA / "kitti" / "object" / "velodyne").is_dir():
        pytest.skip(f"KITTI dev frames not found under {DATA / 'kitti'}")
    r = run_kitti_beams(DATA / "kitti", ["midpoint"], limit=1, out_dir=tmp_path)
    m = r["methods"]
    assert r["frames"] == ["000000"] and r["ring_spread_deg_max"] < 0.005
    assert r["ground"] == "fixed"  # the GUIDE's convention is the default
    assert m[INPUT]["front_acc"] == 0.0 and m[INPUT]["objects_acc"] == 0.0  # a subset
    assert m[INPUT]["range_cover"] == 0.0 and m[INPUT]["range_mae"] is None
    # Interpolating between kept beams fills the dropped rows: more complete, mostly right.
    assert m[RANGE_INTERP]["front_comp"] < 0.9 * m[INPUT]["front_comp"]
    assert 0.0 < m[RANGE_INTERP]["front_acc"] < 0.1
    assert m[RANGE_INTERP]["range_cover"] > 0.5 and m[RANGE_INTERP]["range_mae"] < 0.5
    # The built-in 'midpoint' model is the same kNN midpoint baseline.
    assert m["midpoint"]["front_acc"] == pytest.approx(m[MIDPOINTS]["front_acc"])
    assert 0.0 < m[MIDPOINTS]["front_acc"] < 0.1
    # ... and as the node runs it (objects mode on the whole scan): the scan plus new points
    node = m["midpoint (objects)"]
    assert node["front_comp"] <= m[INPUT]["front_comp"]
    assert node["objects_comp"] <= m[INPUT]["objects_comp"]
    assert 0.0 < node["objects_acc"] < 0.1 and 0.0 < node["front_acc"] < 0.1
    assert (tmp_path / "kitti-beams" / "range-image_interp" / "000000.ply").is_file()
    table = format_kitti_beams(r)
    assert "front acc" in table and RANGE_INTERP in table and len(table.splitlines()) == 9


def test_lidar_sim_smoke_one_scene():
    if not (DATA / "meshes" / "vehicles_scene").is_dir():
        pytest.skip(f"vehicle meshes not found under {DATA / 'meshes'}")
    r = run_lidar_sim(DATA, ["midpoint"], scans=1, seed=0)
    m = r["methods"]
    assert r["object_points"]["dense"] > 3 * r["object_points"]["sparse"] > 0
    # The input's points are on the meshes up to the range noise (sigma 2 cm).
    assert 0.003 < m[INPUT]["p2f_mean"] < 0.02
    assert m[MIDPOINTS]["points"] > 3.5 * m[INPUT]["points"]
    assert m[MIDPOINTS]["completeness"] <= m[INPUT]["completeness"]
    # Interpolating rows inside each object roughly halves the completeness distance.
    assert m[RANGE_INTERP]["completeness"] < 0.8 * m[INPUT]["completeness"]
    assert m[RANGE_INTERP]["p2f_mean"] < 0.05
    # a patch model on each object's points, and through the node's objects path
    assert m["midpoint"]["p2f_mean"] == pytest.approx(m[MIDPOINTS]["p2f_mean"])
    node = m["midpoint (objects)"]
    assert node["beams"]["kind"] == "patches" and node["beams"]["mode"] == "objects"
    assert node["beams"]["generated"] > 0 and node["beams"]["objects_with_new_points"] > 0
    assert node["points"] > m[INPUT]["points"]
    assert node["completeness"] < m[INPUT]["completeness"] and node["p2f_mean"] < 0.05
    table = format_lidar_sim(r)
    assert "P2F" in table and "the node's patch path" in table


def test_models_split_into_range_specs_beam_models_and_patch_models():
    ranged, beams, patches = split_models(["midpoint", "sspu_lidar_x4", "range:x.pt@0.5",
                                           "sspu_x4", "no_such_model"])
    assert ranged == ["range:x.pt@0.5"] and beams == ["sspu_lidar_x4"]
    assert patches == ["midpoint", "sspu_x4", "no_such_model"]  # the loader says why
    assert BEAM_MODES == {"kitti-beams": ("full",), "lidar-sim": ("objects", "full")}


def test_lidar_sim_scores_a_beam_model_through_the_densifier():
    """sspu_lidar_x4 by name (and as range:NAME@T+veto) runs on the 16-beam scan with its
    rings; a row per mode, with generated object points, beside the baselines."""
    if not (DATA / "meshes" / "vehicles_scene").is_dir():
        pytest.skip(f"vehicle meshes not found under {DATA / 'meshes'}")
    r = run_lidar_sim(DATA, ["sspu_lidar_x4", "range:sspu_lidar_x4@0.65+veto",
                             "range:sspu_lidar_x4@0.65"], scans=1,
                      seed=0)
    m = r["methods"]
    assert list(m)[:3] == [INPUT, MIDPOINTS, RANGE_INTERP]
    for name in ("sspu_lidar_x4 (objects)", "sspu_lidar_x4 (full)",
                 "range:sspu_lidar_x4@0.65+veto (full)"):
        b = m[name]["beams"]
        assert b["beam_path"] == 1 and b["fallback"] == 0, name
        assert b["generated"] > 0 and b["objects_with_new_points"] > 0, name
        # scored: the input's object points plus generated object points
        assert m[name]["points"] > m[INPUT]["points"], name
        assert m[name]["completeness"] < m[INPUT]["completeness"], name
        assert m[name]["p2f_mean"] < 0.1, name
    full = m["sspu_lidar_x4 (full)"]
    assert full["beams"]["mode"] == "full" and full["beams"]["ground_points"] > 0
    assert m["sspu_lidar_x4 (objects)"]["beams"]["mode"] == "objects"
    # the same model and threshold with the bridge veto: a subset of the points
    veto, plain = m["range:sspu_lidar_x4@0.65+veto (full)"], m["range:sspu_lidar_x4@0.65 (full)"]
    assert veto["beams"]["generated"] < plain["beams"]["generated"]
    assert veto["p2f_mean"] < plain["p2f_mean"]  # the vetoed points were the far-off ones
    table = format_lidar_sim(r)
    assert "sspu_lidar_x4 (full)" in table and "points generated" in table


def test_kitti_beams_scores_a_beam_model_by_name(tmp_path):
    if not (DATA / "kitti" / "object" / "velodyne").is_dir():
        pytest.skip(f"KITTI dev frames not found under {DATA / 'kitti'}")
    r = run_kitti_beams(DATA / "kitti", ["sspu_lidar_x4"], limit=1)
    m = r["methods"]
    beam = m["sspu_lidar_x4 (full)"]
    assert beam["range_cover"] > 0.3 and beam["range_mae"] < 0.5
    assert beam["front_comp"] < 0.9 * m[INPUT]["front_comp"]
    assert 0.0 < beam["front_acc"] < 0.1


def test_unknown_ground_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ground must be 'plane' or 'fixed'"):
        run_kitti_beams(tmp_path, [], ground="flat")


@pytest.mark.parametrize("argv, expected", [([], "fixed"), (["--ground", "plane"], "plane")])
def test_cli_kitti_beams_ground_option(monkeypatch, capsys, argv, expected):
    import inspect

    import sspu_ros.evaluation.lidar_suites as lb
    from sspu_ros.cli.main import main

    default = inspect.signature(lb.run_kitti_beams).parameters["ground"].default
    seen = {}

    def fake_run(data, models, *, ground=default, **kwargs):
        seen["ground"] = ground
        return {"fake": True}

    monkeypatch.setattr(lb, "run_kitti_beams", fake_run)
    monkeypatch.setattr(lb, "format_kitti_beams", lambda r: "table")
    assert main(["bench", "quality", "--suite", "kitti-beams", *argv]) == 0
    assert seen == {"ground": expected} and capsys.readouterr().out.strip() == "table"


def test_kitti_frames_reads_a_raw_drive_without_labels(tmp_path):
    from sspu_ros.evaluation.lidar_suites import kitti_frames

    data = tmp_path / "velodyne_points" / "data"
    data.mkdir(parents=True)
    for i in (1, 0):
        np.zeros((4, 4), np.float32).tofile(data / f"{i:010d}.bin")
    frames = kitti_frames(tmp_path)
    assert [f[0].name for f in frames] == ["0000000000.bin", "0000000001.bin"]
    assert all(f[1] is None and f[2] is None for f in frames)


def test_bench_frames_option_is_checked(capsys):
    from sspu_ros.cli.main import main

    assert main(["bench", "quality", "--suite", "kitti-beams", "--frames", "x"]) == 2
    assert "--frames expects A:B" in capsys.readouterr().err
    assert main(["bench", "quality", "--suite", "pugan", "--frames", "5:"]) == 2
