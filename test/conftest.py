"""Shared fixtures: where the dev data lives, and skips that say what is missing.

DDS stays on this machine: every test (and every process a test starts, which inherits the
environment) discovers peers on loopback only (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``),
on a random ROS_DOMAIN_ID from :func:`ros_graph.ros_domain_id`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the range above

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# what a colcon workspace's copy of this repository leaves out
COLCON_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "out",
                                       "__pycache__", "*.egg-info", ".pytest_cache",
                                       ".hypothesis", ".ruff_cache", ".import_linter_cache")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"dev data not found at {DATA} (clone the repo beside ../shared)")
    return DATA


@pytest.fixture(scope="session")
def kitti_scans(data_dir) -> list[Path]:
    scans = sorted((data_dir / "kitti").glob("**/*.bin"))
    if not scans:
        pytest.skip(f"no KITTI .bin scans under {data_dir / 'kitti'}")
    return scans


# A tiny light generator trained on one small shape: the shared test checkpoint.
TINY_TRAIN_SETS = ["--set=model.preset=light", "--set=model.channels=16",
                   "--set=data.patch_size=64", "--set=data.patches_per_shape=4",
                   "--set=optim.batch_size=2", "--set=render.views=2",
                   "--set=render.image_size=16"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """checkpoint.pt of ``sspu train`` run 1 step with :data:`TINY_TRAIN_SETS` on 256
    points of a torus knot (x4, 64-point patches, batch 2). Treat it as read-only."""
    from sspu_ros.cli.main import main
    from sspu_ros.io.cloud_files import write_cloud
    from sspu_ros.simulation.sample_surface import torus_knot_surface

    d = tmp_path_factory.mktemp("tiny_checkpoint")
    write_cloud(d / "shape.xyz", torus_knot_surface(256))
    assert main(["train", "--data", str(d / "shape.xyz"), "--out", str(d / "run"),
                 "--steps", "1", "--no-progress", *TINY_TRAIN_SETS]) == 0
    return d / "run" / "checkpoint.pt"


@pytest.fixture(scope="session")
def colcon_workspace(tmp_path_factory) -> Path:
    """A colcon workspace holding a copy of this repository as ``src/sspu_ros``, built with
    ``colcon build`` (ament_python, isolated install space ``install/sspu_ros``) by the
    ``colcon`` beside the test's Python. Treat it as read-only."""
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        colcon = shutil.which("colcon")
        if colcon is None:
            pytest.skip("colcon is not installed (pip install -e '.[dev]')")
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO, ws / "src" / "sspu_ros", ignore=COLCON_IGNORE)
    run = subprocess.run([str(colcon), "build", "--event-handlers", "console_direct+"],
                         cwd=ws, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return ws
