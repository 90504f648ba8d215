"""``sspu finetune`` of a range-image interpolator (``sspu_lidar_x4``): range images of a
bag's scans from their beam structure, a few self-supervised steps, model.pt, ONNX,
manifest, skipped scans, user errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from sspu_ros.cli.main import main
from sspu_ros.io.bags import POINTCLOUD2, BagWriter, pointcloud2_message, read_pointclouds
from sspu_ros.io.pointcloud2 import encode_structured
from sspu_ros.model.range_interpolator import (
    RangeInterpolator,
    RangeInterpolatorConfig,
    load_range_interpolator,
    save_range_interpolator,
)
from sspu_ros.simulation.lidar_sim import procedural_scene, simulate_scan
from sspu_ros.training.range_finetune import (
    bag_range_images,
    is_range_interpolator,
    scan_beam_structure,
)

BEAMS = 16
COLUMNS = 360  # 1 degree azimuth steps: small images, fast steps
RING = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")]
XYZ = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]


def _sim(seed: int):
    return simulate_scan(procedural_scene(seed), beams=BEAMS, top_deg=2.0, bottom_deg=-24.8,
                         azimuth_step_deg=360.0 / COLUMNS, seed=seed)


def _ring_cloud(seed: int) -> np.ndarray:
    """A simulated 16-beam scan with the driver's ring field, numbered bottom beam first
    and stored in a shuffled order (so only the field can give the beams)."""
    scan = _sim(seed)
    order = np.random.default_rng(seed).permutation(len(scan.xyz))
    pts = np.zeros(len(order), dtype=RING)
    pts["x"], pts["y"], pts["z"] = scan.xyz[order].T
    pts["intensity"] = scan.intensity[order]
    pts["ring"] = BEAMS - 1 - scan.ring[order]
    return pts


def _blob(seed: int) -> np.ndarray:
    """A cloud without any beam structure (no ring field, random points)."""
    xyz = np.random.default_rng(seed).normal(size=(500, 3)) * [5, 5, 1] + [10, 0, 0]
    pts = np.zeros(len(xyz), dtype=XYZ)
    pts["x"], pts["y"], pts["z"] = xyz.T
    return pts


def _write(path, clouds):
    with BagWriter(path) as w:
        conn = w.add_connection("/points", POINTCLOUD2)
        for i, pts in enumerate(clouds):
            stamp = (10 + i) * 100_000_000
            w.write_msg(conn, stamp, pointcloud2_message(encode_structured(pts),
                                                         stamp_ns=stamp, frame_id="lidar"))
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """Scans 0, 1, 3: 16 beams with a ring field; scan 2: no beam structure."""
    return _write(tmp_path_factory.mktemp("rbag") / "bag",
                  [_ring_cloud(0), _ring_cloud(1), _blob(2), _ring_cloud(3)])


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A small untrained range interpolator with the shipped model's settings."""
    torch.manual_seed(0)
    model = RangeInterpolator(RangeInterpolatorConfig(hidden=16, layers=2, smooth_gate=0.05,
                                                      normalize_spacing=True))
    path = tmp_path_factory.mktemp("rinit") / "init.pt"
    save_range_interpolator(path, model, threshold=0.6, mode="self16", step=7)
    return path


def test_beam_structure_from_the_ring_field_and_from_organized_rows(bag):
    item = next(read_pointclouds(bag, "/points"))
    st = scan_beam_structure(item.cloud, columns=COLUMNS)
    assert st.source == "field:ring" and st.n_rows == BEAMS
    truth = _sim(0)
    order = np.random.default_rng(0).permutation(len(truth.xyz))
    np.testing.assert_array_equal(st.rows, truth.ring[order])  # top beam first again
    # an organized cloud (height = beams) without a ring field: rows of the grid
    img = st.range_image(item.cloud.xyz)
    grid = np.zeros(BEAMS * COLUMNS, dtype=XYZ)
    grid["x"] = grid["y"] = grid["z"] = np.nan
    xyz = item.cloud.xyz[img.index[img.index >= 0]]
    flat = np.flatnonzero(img.index.reshape(-1) >= 0)
    grid["x"][flat], grid["y"][flat], grid["z"][flat] = xyz.T
    enc = encode_structured(grid)
    enc = dataclasses.replace(enc, height=BEAMS, width=COLUMNS,
                              row_step=COLUMNS * enc.point_step)
    msg = pointcloud2_message(enc, stamp_ns=1, frame_id="lidar")
    from sspu_ros.io.pointcloud2 import decode

    st2 = scan_beam_structure(decode(msg))
    assert st2.source == "organized" and st2.n_rows == BEAMS and st2.columns == COLUMNS


def test_bag_range_images_skip_structureless_scans(bag):
    images, info = bag_range_images(bag, "/points", beam_stride=2, columns=COLUMNS,
                                    progress=False)
    assert [im.shape for im in images] == [(BEAMS // 2, COLUMNS)] * 3
    assert info["scans"] == 3 and info["frames"] == [0, 3] and info["skipped"] == 1
    assert info["skipped_scans"][0]["frame"] == 2
    assert "no beam structure" in info["skipped_scans"][0]["reason"]
    assert info["sources"] == {"field:ring": 3} and info["rows"] == [BEAMS // 2]
    full, _ = bag_range_images(bag, "/points", frames=slice(0, 1), columns=COLUMNS,
                               progress=False)
    np.testing.assert_array_equal(images[0], full[0][::2])  # every 2nd beam row
    assert np.isfinite(images[0]).mean() > 0.3


def test_finetune_range_model_writes_outputs(bag, init, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "ft"
    rc = main(["finetune", "--bag", str(bag), "--topic", "/points", "--model", str(init),
               "--out", str(out), "--steps", "3", "--beam-stride", "2", "--columns",
               str(COLUMNS), "--batch-size", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "range interpolator" in printed and "3 steps" in printed
    assert "skipped 1 scan(s) without a usable beam structure (scan 2:" in printed
    for name in ("checkpoint.pt", "model.pt", "model.onnx", "model.yaml", "log.jsonl"):
        assert (out / name).is_file(), name
    base, _ = load_range_interpolator(init)
    model, ck = load_range_interpolator(out / "model.pt")
    assert model.config == base.config and ck["threshold"] == 0.6 and ck["step"] == 3
    assert "optimizer" not in ck and ck["mode"] == "self"
    assert is_range_interpolator(out / "checkpoint.pt") and not is_range_interpolator(
        out / "model.yaml")
    moved = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                   base.state_dict().values(), strict=True)]
    assert any(moved)
    m = yaml.safe_load((out / "model.yaml").read_text())
    assert m["kind"] == "sspu_ros fine-tuned range interpolator"
    assert m["init"]["path"] == str(init) and m["init"]["step"] == 7
    assert m["threshold"] == 0.6 and m["architecture"] == base.config.to_dict()
    d = m["data"]
    assert d["bag"] == str(bag) and d["topic"] == "/points" and d["frames"] == ":"
    assert d["frames_used"] == [0, 3] and d["scans"] == 3 and d["skipped"] == 1
    assert d["beam_stride"] == 2 and d["rows"] == [8] and d["columns"] == [COLUMNS]
    assert d["structure_sources"] == {"field:ring": 3}
    t = m["training"]
    assert t["steps"] == 3 and t["steps_budget"] == 3 and t["wall_seconds"] > 0
    assert t["config"]["mode"] == "self" and t["config"]["batch"] == 2
    assert t["config"]["schedule"] == "manual"  # cosine over the budget
    assert set(t["self_check"]["before"]) == set(t["self_check"]["after"]) >= {"l1", "mae"}
    assert "range MAE" in printed
    assert m["command"].startswith("sspu finetune --bag ") and "--beam-stride 2" in m["command"]
    assert {"host", "cpus", "torch", "device"} <= set(m["machine"])
    assert m["onnx"]["path"] == "model.onnx" and m["onnx"]["max_abs_diff"] < 1e-3
    # the ONNX export against the fine-tuned PyTorch model, on a bag image
    images, _ = bag_range_images(bag, "/points", beam_stride=2, columns=COLUMNS,
                                 progress=False)
    img = images[1]
    from sspu_ros.runtime.range_interpolation import (
        LearnedBeamInterpolator,
        OrtBeamInterpolator,
    )

    pred, prob = LearnedBeamInterpolator(model).predict(img)
    o_pred, o_prob = OrtBeamInterpolator(out / "model.onnx").predict(img)
    ok = np.isfinite(pred)
    np.testing.assert_allclose(o_pred[ok], pred[ok], atol=1e-3)
    np.testing.assert_allclose(o_prob, prob, atol=1e-4)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out / "model.onnx"))
            .metadata_props}
    assert meta["sspu.kind"] == "sspu-range-interpolator/1" and float(meta["sspu.threshold"]) == 0.6

    # --resume continues the run to the asked step count
    assert main(["finetune", "--bag", str(bag), "--model", str(init), "--out", str(out),
                 "--steps", "5", "--beam-stride", "2", "--columns", str(COLUMNS),
                 "--batch-size", "2", "--no-progress", "--no-export", "--resume"]) == 0
    assert load_range_interpolator(out / "checkpoint.pt")[1]["step"] == 5
    m = yaml.safe_load((out / "model.yaml").read_text())
    assert m["training"]["steps"] == 5 and "onnx" not in m


def test_finetune_range_time_budget(bag, init, tmp_path):
    from sspu_ros.training.range_finetune import finetune_range

    m = finetune_range(bag, "/points", init, tmp_path / "ft", minutes=0.01, batch=2,
                       columns=COLUMNS, beam_stride=2, export=False, progress=False,
                       command=["x"])
    assert m["training"]["steps"] >= 1 and m["training"]["steps_budget"] is None
    assert m["training"]["wall_seconds"] < 10 and m["command"] == "x"


def test_finetune_range_user_errors(bag, init, tmp_path, capsys):
    none = _write(tmp_path / "blobs", [_blob(0), _blob(1)])
    base = ["finetune", "--model", str(init), "--steps", "1", "--no-progress"]
    assert main(base + ["--bag", str(none), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 selected scan(s) has a usable beam structure" in err
    assert "Traceback" not in err and not (tmp_path / "a").exists()
    assert main(base + ["--bag", str(bag), "--out", str(tmp_path / "b"),
                        "--beam-stride", "8"]) == 2  # 16 beams -> 2 rows: too few
    assert "at least 4" in capsys.readouterr().err
    assert main(base + ["--bag", str(bag), "--out", str(tmp_path / "c"),
                        "--set", "optim.lr=1"]) == 2
    assert "point-patch generator options" in capsys.readouterr().err
    assert main(base + ["--bag", str(bag), "--out", str(tmp_path / "d"),
                        "--frames", "9:"]) == 2
    assert "holds no scan" in capsys.readouterr().err
    assert main(["finetune", "--bag", str(bag), "--model", "no_such_model", "--out",
                 str(tmp_path / "e"), "--steps", "1"]) == 2
    assert "not found" in capsys.readouterr().err


def test_range_trainer_in_chunks_equals_one_run(bag, init, tmp_path):
    """Two runs of 2 steps (a checkpoint between) train exactly as one run of 4."""
    from sspu_ros.training.range_interpolation import RangeTrainer, TrainConfig

    images, _ = bag_range_images(bag, "/points", beam_stride=2, columns=COLUMNS,
                                 progress=False)

    def trainer(out):
        cfg = TrainConfig(mode="self", init=str(init), batch=2, crop=64, out=str(out),
                          schedule="constant", log_every=1)
        return RangeTrainer(cfg, images=images, log=lambda _s: None)

    one = trainer(tmp_path / "one")
    one.run(4)
    two = trainer(tmp_path / "two")
    two.run(2)
    two.run(4)
    for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 4
