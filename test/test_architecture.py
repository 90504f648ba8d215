"""The package layout's rules (``.importlinter``) hold, and the contracts do catch a break.

``lint-imports`` checks the layers (upper import lower, never the reverse; nothing imports
the CLI), that only ``sspu_ros.ros`` imports rclpy and the ROS messages, that no two
sibling modules or subpackages import each other in a cycle, and the runtime's inner order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

# CI installs the dev extra (import-linter): there a missing lint-imports is a failure
pytestmark = pytest.mark.skipif(
    not LINT.is_file() and not os.environ.get("CI"),
    reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), "--no-cache", str(REPO / ".importlinter")],
                          cwd=package_parent, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_package_keeps_every_contract():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "Contracts: 4 kept" in r.stdout


def _contract_lines(stdout: str) -> dict[str, str]:
    """'name ... KEPT|BROKEN' summary lines (a name may wrap onto a second line)."""
    text = stdout.split("Contracts\n---------", 1)[1].split("Contracts:", 1)[0]
    joined = " ".join(text.split())
    out = {}
    for part in joined.replace(" KEPT", " KEPT\n").replace(" BROKEN", " BROKEN\n").splitlines():
        name, _, verdict = part.strip().rpartition(" ")
        if verdict in ("KEPT", "BROKEN"):
            out[name.split("------------------------------------- ")[-1]] = verdict
    return out


def test_the_contracts_catch_a_reverse_import_an_rclpy_import_and_a_cycle(tmp_path):
    copy = tmp_path / "sspu_ros"
    shutil.copytree(REPO / "sspu_ros", copy, ignore=shutil.ignore_patterns("__pycache__"))
    # io (a bottom layer) importing the CLI: the old cycle's kind (demo -> cli -> demo)
    bags = copy / "io" / "bags.py"
    bags.write_text(bags.read_text() + "\nfrom ..cli.common import _load_config  # noqa\n")
    # rclpy outside sspu_ros.ros
    dens = copy / "densify" / "densifier.py"
    dens.write_text(dens.read_text() + "\nimport rclpy  # noqa\n")
    # a backend importing the loader that imports it (tensorrt_engine <-> backends)
    trt = copy / "runtime" / "tensorrt_backend.py"
    trt.write_text(trt.read_text() + "\nfrom .loading import load_model  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    verdicts = _contract_lines(r.stdout)
    assert len(verdicts) == 4, r.stdout
    assert all(v == "BROKEN" for v in verdicts.values()), verdicts
    assert "sspu_ros.io is not allowed to import sspu_ros.cli" in r.stdout
    assert "sspu_ros.densify is not allowed to import rclpy" in r.stdout
