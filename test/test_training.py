"""Self-supervised training: data sources, exact resume, DDP (2 CPU processes), CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sspu_ros.cli.main import main
from sspu_ros.config import load_config
from sspu_ros.io.cloud_files import write_cloud
from sspu_ros.model.checkpoint import load_checkpoint, load_generator
from sspu_ros.simulation.sample_surface import torus_knot_surface
from sspu_ros.training.data import (
    PatchOptions,
    augment,
    build_patch_bank,
    remove_ground,
    sample_mesh,
)
from sspu_ros.training.trainer import Trainer

# A tiny but complete configuration (all four loss terms, the DRU, the NEU) for fast tests.
TINY = {"model.channels": 16, "model.attention": "local", "model.knn_k": 4,
        "data.patch_size": 32, "data.patches_per_shape": 8, "optim.batch_size": 2,
        "render.views": 2, "render.image_size": 16, "run.log_every": 1,
        "run.checkpoint_every": 2, "run.device": "cpu"}
TINY_SETS = [f"--set={k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    for seed in range(2):
        write_cloud(d / f"knot{seed}.xyz", torus_knot_surface(256, seed=seed))
    return d


def test_sample_mesh_is_on_the_mesh_and_area_weighted():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 3, 5]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    pts = sample_mesh(v, f, 10000, np.random.default_rng(0))
    top = pts[:, 2] > 2.5
    assert np.all(np.isin(pts[:, 2], [0.0, 5.0]))
    assert abs(top.mean() - 0.9) < 0.02
    assert np.all(pts[:, 0] + pts[:, 1] <= np.where(top, 3, 1) + 1e-5)
    nonuni = sample_mesh(v, f, 2000, np.random.default_rng(0), nonuniform=True)
    assert nonuni.shape == (2000, 3)


def test_remove_ground_keeps_objects_above_a_sloped_ground():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 20, size=(4000, 2))
    ground = np.c_[xy, 0.05 * xy[:, 0]]  # 5 % slope
    box = np.c_[rng.uniform(5, 6, (300, 2)), rng.uniform(0.6, 1.5, 300) + 0.275]
    keep = remove_ground(np.vstack([ground, box]).astype(np.float32))
    assert keep[4000:].all() and keep[:4000].mean() < 0.02


def test_patch_bank_from_files_and_meshes(shapes, tmp_path):
    off = tmp_path / "tet.off"
    off.write_text("OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n")
    bank = build_patch_bank([shapes, off], PatchOptions(patch_size=32, patches_per_shape=5,
                                                        mesh_points=64))
    assert bank.shape == (15, 32, 3) and bank.dtype == np.float32
    r = np.linalg.norm(bank, axis=2).max(axis=1)
    np.testing.assert_allclose(r, 1.0, atol=1e-5)
    np.testing.assert_allclose(bank.mean(axis=1), 0.0, atol=1e-5)


def test_augment_rotation_preserves_shape_geometry():
    x = torch.randn(3, 50, 3)
    g = torch.Generator().manual_seed(0)
    y = augment(x, rotate="so3", scale=(1.0, 1.0), generator=g)
    def pairwise(p):
        return (p[:, :, None] - p[:, None]).norm(dim=-1)

    torch.testing.assert_close(pairwise(x), pairwise(y), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x, y)
    z = augment(x, rotate="z", scale=(1.0, 1.0), generator=g)
    torch.testing.assert_close(z[..., 2], x[..., 2])


def _trainer(out, shapes, steps, resume=False):
    cfg = load_config(overrides={**TINY, "optim.steps": steps, "data.paths": [str(shapes)]},
                      name="train")
    return Trainer(cfg, out, resume=resume, progress=False)


def test_resume_continues_exactly(shapes, tmp_path):
    torch.set_num_threads(1)
    straight = _trainer(tmp_path / "a", shapes, 4)
    before = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.run()
    first = _trainer(tmp_path / "b", shapes, 2)
    first.run()
    resumed = _trainer(tmp_path / "b", shapes, 4, resume=True)
    assert resumed.step == 2
    resumed.run()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert any(not torch.equal(before[k], a[k]) for k in a), "training changed nothing"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 4
    rows = (tmp_path / "b" / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_train_cli_writes_a_loadable_checkpoint_and_ablations(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(shapes), "--out", str(out), "--steps", "2",
               "--no-progress", *TINY_SETS, "--ablation", "no-neu", "--ablation", "no-ic"])
    assert rc == 0
    model, ckpt = load_generator(out / "checkpoint.pt")
    assert ckpt["generator"]["expansion"] == "duplicate" and ckpt["config"]["loss.ic"] == 0
    assert "image_consistent" not in (out / "log.csv").read_text().splitlines()[0]
    assert model(torch.rand(1, 32, 3)).shape == (1, 128, 3)
    assert (out / "tb").is_dir() and (out / "config.yaml").is_file()
    rc = main(["train", "--data", str(tmp_path / "nothing"), "--out", str(out)])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_ddp_two_cpu_processes_hold_identical_weights(shapes, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv-endpoint=127.0.0.1:0", "--rdzv-backend=c10d",
           "-m", "sspu_ros", "train", "--data", str(shapes), "--out", str(out),
           "--steps", "2", "--no-progress", *TINY_SETS]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [2, 2]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    single = _trainer(tmp_path / "single", shapes, 1)  # same seed, not trained
    from sspu_ros.training.trainer import weights_fingerprint

    assert weights_fingerprint(single.model) != ranks[0]["sha256"]  # the steps did train


@pytest.mark.parametrize("storage", ["SQLITE3", "MCAP"])
def test_patch_bank_from_a_rosbag2_pointcloud_topic(tmp_path, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from sspu_ros.io.pointcloud2 import encode_structured

    ts = get_typestore(Stores.ROS2_HUMBLE)
    pc2, pf = ts.types["sensor_msgs/msg/PointCloud2"], ts.types["sensor_msgs/msg/PointField"]
    header, stamp = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=getattr(StoragePlugin, storage)) as w:
        conn = w.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        other = w.add_connection("/other", "std_msgs/msg/Header", typestore=ts)
        for i in range(3):
            # ground plane + a 'car' block standing on it
            ground = np.c_[rng.uniform(-15, 15, (3000, 2)), rng.normal(-1.7, 0.01, 3000)]
            car = np.c_[rng.uniform(5, 9, (800, 1)), rng.uniform(-1, 1, (800, 1)),
                        rng.uniform(-1.4, -0.2, (800, 1))]
            pts = np.zeros(3800, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("intensity", "<f4")])
            xyz = np.vstack([ground, car])
            pts["x"], pts["y"], pts["z"] = xyz.T
            enc = encode_structured(pts)
            msg = pc2(header=header(stamp=stamp(sec=i, nanosec=0), frame_id="velo"),
                      height=1, width=enc.width,
                      fields=[pf(name=f.name, offset=f.offset, datatype=f.datatype,
                                 count=f.count) for f in enc.fields],
                      is_bigendian=False, point_step=enc.point_step, row_step=enc.row_step,
                      data=enc.data, is_dense=True)
            w.write(conn, i * 100_000_000, ts.serialize_cdr(msg, conn.msgtype))
            w.write(other, i, ts.serialize_cdr(header(stamp=stamp(sec=i, nanosec=0),
                                                      frame_id="x"), other.msgtype))
    opts = PatchOptions(patch_size=64, patches_per_scan=4, bag_every=1, max_patch_radius=3.0)
    bank = build_patch_bank([bag], opts)
    assert bank.shape == (12, 64, 3)
    opts.bag_topic = "/nope"
    with pytest.raises(Exception, match="no PointCloud2 topic named /nope"):
        build_patch_bank([bag], opts)


def _wait_for_checkpoint(path: Path, proc, min_step: int, timeout: float = 120.0) -> int:
    """Poll ``path`` (written atomically) until it holds step >= min_step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if path.is_file():
            step = int(load_checkpoint(path)["step"])
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint with step >= {min_step} within {timeout} s")


def _logged_steps(log: Path) -> list[int]:
    return [int(r.split(",")[0]) for r in log.read_text().splitlines()[1:]]


def test_kill_9_during_train_loses_at_most_one_interval_and_resume_continues_exactly(
        shapes, tmp_path):
    from sspu_ros.training.trainer import weights_fingerprint

    out = tmp_path / "killed"
    every = 3
    cmd = [sys.executable, "-m", "sspu_ros", "train", "--data", str(shapes), "--out", str(out),
           "--no-progress", *TINY_SETS, f"--set=run.checkpoint_every={every}"]
    proc = subprocess.Popen(cmd + ["--steps", "10000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(out / "checkpoint.pt", proc, 2 * every)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = int(load_checkpoint(out / "checkpoint.pt")["step"])  # intact after the kill
    done = _logged_steps(out / "log.csv")[-1]  # log_every = 1: the steps that ran
    assert saved % every == 0 and 0 <= done - saved <= every
    target = saved + 4
    rc = subprocess.run(cmd + ["--steps", str(target), "--resume"], capture_output=True,
                        text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert int(load_checkpoint(out / "checkpoint.pt")["step"]) == target
    assert _logged_steps(out / "log.csv") == list(range(1, target + 1))  # no step twice
    # the same weights as a run that was never interrupted
    cfg = load_config(overrides={**TINY, "optim.steps": target, "data.paths": [str(shapes)],
                                 "run.checkpoint_every": every}, name="train")
    ref = Trainer(cfg, tmp_path / "straight", progress=False)
    ref.run()
    ref.close()
    resumed, _ = load_generator(out / "checkpoint.pt")
    assert weights_fingerprint(resumed) == weights_fingerprint(ref.model)
