"""``sspu finetune``: node patches from a bag, a few Trainer steps, ONNX, manifest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from sspu_ros.cli.main import main
from sspu_ros.config import load_config
from sspu_ros.io.bags import POINTCLOUD2, BagWriter, pointcloud2_message
from sspu_ros.io.pointcloud2 import encode_structured
from sspu_ros.training.finetune import PatchRecorder, distinct_fraction, node_patches, thin_beams

PATCH = 64


def _scene(rng) -> np.ndarray:
    """(N, 3) float32: ground plane + two car-sized boxes of points (two clusters)."""
    ground = np.c_[rng.uniform(2, 25, 2000), rng.uniform(-12, 12, 2000),
                   rng.normal(-1.73, 0.005, 2000)]
    boxes = []
    for cx, cy in ((8.0, 3.0), (14.0, -4.0)):
        boxes.append(np.c_[rng.uniform(cx - 2, cx + 2, 400), rng.uniform(cy - 0.9, cy + 0.9, 400),
                           rng.uniform(-1.4, -0.2, 400)])
    return np.vstack([ground, *boxes]).astype(np.float32)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "bag"
    rng = np.random.default_rng(0)
    with BagWriter(path) as w:
        conn = w.add_connection("/points", POINTCLOUD2)
        for i in range(4):
            xyz = _scene(rng)
            pts = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
            pts["x"], pts["y"], pts["z"] = xyz.T
            stamp = (10 + i) * 100_000_000
            w.write_msg(conn, stamp, pointcloud2_message(encode_structured(pts), stamp_ns=stamp,
                                                         frame_id="lidar"))
    return path


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    """An untrained light generator checkpoint with 64-point patches (fast)."""
    from sspu_ros.training.trainer import Trainer

    out = tmp_path_factory.mktemp("init")
    cfg = load_config(None, {"model.preset": "light", "data.patch_size": PATCH,
                             "optim.steps": 0, "optim.batch_size": 2,
                             "render.image_size": 32}, name="train")
    bank = np.random.default_rng(0).normal(size=(4, PATCH, 3)).astype(np.float32)
    trainer = Trainer(cfg, out, progress=False, patch_bank=bank)
    trainer.run()
    trainer.close()
    return out / "checkpoint.pt"


def test_distinct_fraction_exact():
    p = np.zeros((2, 4, 3), np.float32)
    p[0] = np.arange(12).reshape(4, 3)
    p[1, 2] = 2.0
    assert distinct_fraction(p).tolist() == [1.0, 0.5]


def test_thin_beams_keeps_every_kth_ring():
    # 8 rings stored laser by laser, each sweeping from the front (y >= 0) around
    az = np.linspace(0.01, 2 * np.pi - 0.01, 50)
    ring = np.c_[np.cos(az), np.sin(az), np.zeros_like(az)]
    scan = np.vstack([ring + [0, 0, k] for k in range(8)]).astype(np.float32)
    kept = thin_beams(scan, 4)
    assert sorted(set(kept[:, 2].tolist())) == [0.0, 4.0]
    assert thin_beams(scan, 1) is scan


def test_node_patches_are_the_densifiers_inputs(bag):
    """The recorded patches are exactly what densify_points hands an upsampler."""
    from sspu_ros.densify.densifier import densify_points
    from sspu_ros.io.bags import read_pointclouds

    params = load_config()
    bank, info = node_patches(bag, "/points", params, ratio=4, patch_size=PATCH,
                              frames=slice(1, 3), progress=False)
    assert info["scans"] == 2 and info["frames"] == [1, 2] and info["patches_dropped"] == 0
    spy = PatchRecorder(4, PATCH)
    for item in read_pointclouds(bag, "/points", frames=slice(1, 3)):
        densify_points(item.cloud.xyz, spy, params)
    np.testing.assert_array_equal(bank, np.concatenate(spy.patches))
    assert bank.shape[1:] == (PATCH, 3) and len(bank) >= 2  # both boxes at least
    assert np.abs(np.linalg.norm(bank, axis=2).max(axis=1) - 1).max() < 1e-4  # unit sphere


def test_finetune_two_steps_writes_checkpoint_onnx_and_manifest(bag, init_ckpt, tmp_path,
                                                                capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", "--bag", str(bag), "--topic", "/points", "--init", str(init_ckpt),
               "--out", str(out), "--steps", "2", "--frames", "0:2", "--batch-size", "2",
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 steps" in printed and "model.yaml" in printed
    for name in ("checkpoint.pt", "model.onnx", "model.yaml", "log.csv", "config.yaml"):
        assert (out / name).is_file(), name
    m = yaml.safe_load((out / "model.yaml").read_text())
    init = torch.load(init_ckpt, weights_only=False)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert m["architecture"] == init["generator"] == ck["generator"]
    assert m["ratio"] == 4 and m["patch_size"] == PATCH and ck["step"] == 2
    assert m["training"]["steps"] == 2 and m["training"]["wall_seconds"] > 0
    assert m["data"]["frames"] == "0:2" and m["data"]["frames_used"] == [0, 1]
    assert m["data"]["scans"] == 2 and m["data"]["patches"] >= 2
    assert m["command"].startswith("sspu finetune --bag ") and "--steps 2" in m["command"]
    assert {"host", "cpus", "torch", "device"} <= set(m["machine"])
    assert m["onnx"]["path"] == "model.onnx" and m["onnx"]["max_abs_diff"] <= 1e-4
    assert set(m["training"]["loss_last"]) >= {"total", "shape_consistent"}
    changed = any(not torch.equal(init["model"][k], ck["model"][k]) for k in ck["model"])
    assert changed  # the steps trained


def test_finetune_time_budget_stops(bag, init_ckpt, tmp_path):
    from sspu_ros.training.finetune import finetune

    m = finetune(bag, "/points", init_ckpt, tmp_path / "ft", minutes=0.005, export=False,
                 train_overrides={"optim.batch_size": 2}, progress=False, command=["x"])
    assert m["training"]["steps"] >= 1 and m["training"]["steps_budget"] is None
    assert m["training"]["wall_seconds"] < 30
    assert "onnx" not in m


def test_finetune_user_errors(bag, init_ckpt, tmp_path, capsys):
    base = ["finetune", "--bag", str(bag), "--init", str(init_ckpt), "--steps", "1"]
    assert main(base + ["--out", str(tmp_path / "a"), "--frames", "9:"]) == 2
    assert "holds no scan" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--frames", "3:1"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c"), "--topic", "/nope"]) == 2
    assert "no PointCloud2 topic named /nope" in capsys.readouterr().err
    assert main(["finetune", "--bag", str(bag), "--init", str(tmp_path / "no.pt"), "--out",
                 str(tmp_path / "d"), "--steps", "1"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_kill_9_during_finetune_then_resume(bag, init_ckpt, tmp_path, capsys):
    """kill -9 mid-training loses at most one checkpoint interval; --resume (same
    arguments) continues from the checkpoint to the asked step count."""
    import signal
    import subprocess
    import sys
    import time

    from sspu_ros.model.checkpoint import load_checkpoint

    out = tmp_path / "ft"
    every = 2
    args = ["finetune", "--bag", str(bag), "--init", str(init_ckpt), "--out", str(out),
            "--frames", "0:2", "--batch-size", "2", "--no-progress", "--no-export",
            "--set", f"run.checkpoint_every={every}", "--set", "run.log_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "sspu_ros", *args, "--steps", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            if (out / "checkpoint.pt").is_file() and \
                    load_checkpoint(out / "checkpoint.pt")["step"] >= 2 * every:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = int(load_checkpoint(out / "checkpoint.pt")["step"])
    ran = int((out / "log.csv").read_text().splitlines()[-1].split(",")[0])
    assert 0 <= ran - saved <= every
    assert main(args + ["--steps", str(saved + 3)]) == 2  # no silent overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--steps", str(saved + 3), "--resume"]) == 0
    m = yaml.safe_load((out / "model.yaml").read_text())
    assert m["training"]["steps"] == saved + 3 == load_checkpoint(out / "checkpoint.pt")["step"]
    assert m["command"].endswith("--resume")
    steps = [int(r.split(",")[0]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, saved + 4))
