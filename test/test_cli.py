"""The `sspu` command line: subcommands exist, the demo runs, user errors are one line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sspu_ros.cli.main import build_parser, main
from sspu_ros.io.cloud_files import read_cloud, write_cloud

SUBCOMMANDS = ["upsample", "sample", "demo", "convert", "info", "config", "bench", "train",
               "export", "doctor", "build-engine", "kitti2bag", "densify-bag", "play",
               "record", "finetune", "densify", "scan-info"]


def test_help_lists_subcommands():
    sspu = Path(sys.executable).parent / "sspu"
    cmd = [str(sspu)] if sspu.exists() else [sys.executable, "-m", "sspu_ros"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)


def test_upsample_drops_nan_and_honours_ratio(tmp_path, capsys):
    xyz = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    xyz[5] = np.nan
    write_cloud(tmp_path / "in.npy", xyz)
    assert main(["upsample", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.xyz"),
                 "--ratio", "2"]) == 0
    assert read_cloud(tmp_path / "o.xyz").xyz.shape == (198, 3)
    assert "dropped 1 point" in capsys.readouterr().err


def test_upsample_defaults_to_the_shipped_object_model(tmp_path, capsys):
    from sspu_ros.runtime.model_files import available_models

    if "sspu_x4" not in available_models():
        pytest.skip("models/sspu_x4 is not shipped in this checkout")
    from sspu_ros.simulation.sample_surface import torus_knot_surface

    write_cloud(tmp_path / "in.xyz", torus_knot_surface(300, seed=1))
    assert main(["upsample", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "o.xyz")]) == 0
    out = capsys.readouterr().out
    assert "sspu_x4" in out and "backend torch" in out
    assert read_cloud(tmp_path / "o.xyz").xyz.shape == (1200, 3)
    # a cloud smaller than the model takes falls back to the midpoints, with a note
    write_cloud(tmp_path / "small.xyz", torus_knot_surface(8, seed=1))
    assert main(["upsample", str(tmp_path / "small.xyz"), "-o", str(tmp_path / "s.xyz")]) == 0
    assert "using the midpoint upsampler" in capsys.readouterr().err
    assert read_cloud(tmp_path / "s.xyz").xyz.shape == (32, 3)


@pytest.mark.parametrize("argv, message", [
    (["upsample", "{tmp}/missing.ply", "-o", "{tmp}/o.ply"], "missing.ply"),
    (["upsample", "{tmp}/tiny.xyz", "-o", "{tmp}/o.ply"], "too few"),
    (["upsample", "{tmp}/tiny.xyz", "-o", "{tmp}/o.ply", "--ratio", "1"], "'ratio' = 1"),
    (["upsample", "{tmp}/tiny.xyz", "-o", "{tmp}/o.ply", "--model", "nope"], "model 'nope'"),
    (["config", "check", "{tmp}/bad.yaml"], "unknown parameter 'ratoi'"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "tiny.xyz").write_text("0 0 0\n1 0 0\n")
    (tmp_path / "bad.yaml").write_text("/**:\n  ros__parameters:\n    ratoi: 4\n")
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("sspu: error:") and message in err and "Traceback" not in err


def test_config_show_and_info(tmp_path, capsys):
    assert main(["config", "show"]) == 0
    assert "ros__parameters" in capsys.readouterr().out
    write_cloud(tmp_path / "a.xyz", np.eye(3, dtype=np.float32))
    assert main(["info", str(tmp_path / "a.xyz")]) == 0
    assert '"points": 3' in capsys.readouterr().out
