"""Shared fixtures: where the dev data lives, and skips that say what is missing."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


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
