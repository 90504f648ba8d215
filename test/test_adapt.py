"""Test-time self-supervised adaptation (``--adapt STEPS``) and the input errors of
``sspu upsample``."""

import hashlib

import numpy as np
import pytest
import torch

from sspu_ros.cli.main import main
from sspu_ros.errors import ModelError
from sspu_ros.io.cloud_files import read_cloud, write_cloud
from sspu_ros.simulation.sample_surface import torus_knot_surface
from sspu_ros.training.adapt import adapt_generator, adapt_upsample, checkpoint_of, input_patch_bank


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # conftest.py: 1 step of sspu train, shared by the test files


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_input_patch_bank_is_fps_patches_of_the_input_normalized():
    x = torus_knot_surface(600, seed=1) * 5.0 + 3.0
    bank = input_patch_bank(x, patch_size=64, n_patches=10)
    assert bank.shape == (10, 64, 3) and bank.dtype == np.float32
    np.testing.assert_allclose(bank.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(bank, axis=2).max(1), 1.0, atol=1e-5)
    # default: at least 64 seeds, never more than the points; patches clipped to N
    assert input_patch_bank(x[:40], patch_size=64).shape == (40, 40, 3)
    with pytest.raises(ValueError, match="shape"):
        input_patch_bank(np.zeros((10, 2)))


def test_adapt_trains_a_copy_with_the_trainer_step(checkpoint, monkeypatch):
    from sspu_ros.model.checkpoint import load_generator
    from sspu_ros.training import trainer as trainer_mod

    calls = []
    real_step = trainer_mod.Trainer.train_step

    def spy(self, sparse):
        calls.append(tuple(sparse.shape))
        return real_step(self, sparse)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", spy)
    before = _sha(checkpoint)
    x = torus_knot_surface(300, seed=2)
    model, info = adapt_generator(checkpoint, x, 2, device="cpu")
    assert calls == [(2, 64, 3), (2, 64, 3)]  # the checkpoint's batch and patch size
    assert info["steps"] == 2 and np.isfinite([info["loss_first"], info["loss_last"]]).all()
    assert _sha(checkpoint) == before  # the checkpoint itself is untouched
    original, _ = load_generator(checkpoint)
    changed = [not torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), original.state_dict().values(), strict=True)]
    assert any(changed) and not model.training


def test_adapt_upsample_keeps_the_input_and_ratio(checkpoint):
    x = torus_knot_surface(300, seed=3)
    dense, info = adapt_upsample(checkpoint, x, 1, device="cpu", batch_size=1, lr=1e-4)
    assert dense.shape == (1200, 3) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense[:300], x)
    assert np.isfinite(dense).all() and info["patches"] == 64
    with pytest.raises(ModelError, match="upsamples x4"):
        adapt_upsample(checkpoint, x, 1, ratio=2)
    with pytest.raises(ValueError, match=">= 1 step"):
        adapt_generator(checkpoint, x, 0)


def test_only_pytorch_checkpoints_can_adapt(tmp_path):
    with pytest.raises(ModelError, match="'midpoint' has nothing to train"):
        checkpoint_of("midpoint")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx")
    with pytest.raises(ModelError, match=r"needs the PyTorch checkpoint \(.pt\)"):
        checkpoint_of(str(onnx))
    with pytest.raises(ModelError, match="not found"):
        checkpoint_of(str(tmp_path / "none.pt"))


def test_cli_upsample_adapt(checkpoint, tmp_path, capsys):
    write_cloud(tmp_path / "in.xyz", torus_knot_surface(200, seed=4))
    assert main(["upsample", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "out.ply"),
                 "--model", str(checkpoint), "--adapt", "1"]) == 0
    out = capsys.readouterr().out
    assert "adapted 1 steps on 64 patches" in out and "backend torch" in out
    cloud = read_cloud(tmp_path / "out.ply")
    assert cloud.xyz.shape == (800, 3) and int(cloud.attributes["generated"].sum()) == 600


# --------------------------------------------------------------------------- input errors


def _write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(p, content)
    else:
        p.write_bytes(content)
    return p


NAN = np.full((10, 3), np.nan, np.float32)
INF_BUT_3 = np.concatenate([np.full((20, 3), np.inf, np.float32), np.eye(3, dtype=np.float32)])


@pytest.mark.parametrize("name, content, extra, message", [
    ("in.xyz", None, [], "in.xyz: no such file"),
    ("in.xyz", b"", [], "empty file"),
    ("in.ply", b"ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nend_header\n1 2\n",
     [], "truncated PLY data"),
    ("in.pcd", b"\x00\x01garbage", [], "PCD header"),
    ("in.bin", b"\x00" * 10, [], "not a multiple of 16"),
    ("in.xyz", b"1 2 3\n4 5 6\n", [], "2 point(s) is too few to upsample (need >= 4)"),
    ("in.npy", NAN, [], "the cloud has no (finite) points"),
    ("in.npy", INF_BUT_3, [], "3 point(s) is too few"),
    ("in.xyz", b"1 2 3\n", ["--adapt", "-1"], "--adapt must be >= 0"),
    ("in.xyz", b"1 2 3\n", ["--adapt", "2", "--model", "midpoint"],
     "'midpoint' has nothing to train"),
])
def test_upsample_input_errors_are_one_line(tmp_path, capsys, name, content, extra, message):
    src = tmp_path / name if content is None else _write(tmp_path, name, content)
    assert main(["upsample", str(src), "-o", str(tmp_path / "o.ply"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sspu: error:") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "o.ply").exists()


def test_upsample_drops_nan_points_and_says_so(tmp_path, capsys):
    x = torus_knot_surface(64, seed=5)
    x[[3, 10]] = np.nan
    np.save(tmp_path / "in.npy", x)
    assert main(["upsample", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.xyz")]) == 0
    captured = capsys.readouterr()
    assert "dropped 2 point(s) with NaN/Inf" in captured.err
    assert read_cloud(tmp_path / "o.xyz").xyz.shape == (62 * 4, 3)
