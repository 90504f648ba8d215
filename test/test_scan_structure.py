"""Beam structure of any spinning LiDAR (sspu_ros.geometry.scan_structure): from a driver's
ring field, an organized cloud, KITTI storage order or a sensor preset; rows top first;
the range image's validity mask; a clear error (the fall-back signal) for non-scans."""

from pathlib import Path

import numpy as np
import pytest

from sspu_ros.geometry.scan_structure import (
    SENSORS,
    ScanStructureError,
    beam_field,
    scan_structure,
)

KITTI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti" / "object"


def _spin(elevations_deg, n_az=360, seed=0, z0=0.0):
    """(B*n_az, 3) points of a spinning LiDAR stored laser by laser, each laser sweeping
    from the front counter-clockwise (azimuth -pi.. wraps at the front as KITTI's order),
    plus (B*n_az,) true beam index (0 = first given elevation)."""
    rng = np.random.default_rng(seed)
    pts, beam = [], []
    for k, e in enumerate(elevations_deg):
        az = np.radians(np.arange(n_az) * 360.0 / n_az + 0.5)  # 0.5..359.5 deg, front first
        r = rng.uniform(5, 30, n_az)
        s = r * np.cos(np.radians(e))
        pts.append(np.c_[s * np.cos(az), s * np.sin(az), z0 + s * np.tan(np.radians(e))])
        beam.append(np.full(n_az, k))
    return np.concatenate(pts), np.concatenate(beam)


VLP16 = np.asarray(SENSORS["vlp16"].elevations_deg)  # top first


def test_ring_field_in_any_numbering_gives_rows_top_first():
    pts, beam = _spin(VLP16)
    ring = 15 - beam  # Velodyne numbers its rings bottom up
    order = np.random.default_rng(1).permutation(len(pts))  # driver order irrelevant
    st = scan_structure(pts[order], beam=ring[order])
    assert st.source == "field:ring" and st.n_rows == 16 and st.missing_beams == 0
    assert (st.rows == beam[order]).all()
    np.testing.assert_allclose(st.elevation_deg, VLP16, atol=1e-6)
    assert st.spread_deg.max() < 1e-6


def test_storage_order_recovers_kitti_style_rings():
    pts, beam = _spin(VLP16, seed=2)
    st = scan_structure(pts)
    assert st.source == "storage-order" and (st.rows == beam).all()


def test_organized_cloud_rows_with_no_return_pixels():
    pts, beam = _spin(VLP16[:8], n_az=64, seed=3)
    grid = pts.reshape(8, 64, 3).copy()
    grid[2, 10:20] = 0.0  # drivers write 0,0,0 where a beam got no return
    grid[5] = 0.0          # a beam without any return (pointing at the sky)
    st = scan_structure(grid.reshape(-1, 3), organized=(8, 64), min_beams=4)
    assert st.source == "organized" and st.n_rows == 7 and st.missing_beams == 1
    assert st.columns == 64
    rows = st.rows.reshape(8, 64)
    assert (rows[2, 10:20] == -1).all() and (rows[5] == -1).all()
    assert (rows[:2] == np.arange(2)[:, None]).all() and (rows[6:] == [[5], [6]]).all()
    img = st.range_image(grid.reshape(-1, 3))
    assert img.shape == (7, 64) and img.valid.sum() == 8 * 64 - 10 - 64
    hit = img.index[img.valid]
    np.testing.assert_allclose(img.range[img.valid],
                               np.linalg.norm(grid.reshape(-1, 3)[hit], axis=1))


def test_preset_is_the_last_resort_for_shuffled_points():
    pts, beam = _spin(VLP16, seed=4)
    shuffled = np.random.default_rng(0).permutation(len(pts))
    with pytest.raises(ScanStructureError, match="storage-order"):
        scan_structure(pts[shuffled])
    st = scan_structure(pts[shuffled], sensor="vlp16")
    assert st.source == "preset:vlp16" and (st.rows == beam[shuffled]).all()
    assert st.columns == SENSORS["vlp16"].columns


def test_not_a_scan_raises_with_every_reason():
    cloud = np.random.default_rng(5).normal(size=(3000, 3))
    with pytest.raises(ScanStructureError) as e:
        scan_structure(cloud, beam=np.zeros(3000, np.int64))
    text = str(e.value)
    assert "field:ring: 1 beam(s)" in text and "storage-order" in text
    assert "give the sensor" in text


def test_small_cases_and_bad_arguments():
    assert beam_field(["x", "y", "z", "Ring"]) == "Ring"
    assert beam_field(("x", "channel", "intensity")) == "channel"
    assert beam_field(["x", "y", "z", "intensity"]) is None
    with pytest.raises(ValueError, match="unknown sensor"):
        scan_structure(np.zeros((10, 3)), sensor="vlp17")
    with pytest.raises(ValueError, match=r"beam must have shape \(10,\)"):
        scan_structure(np.zeros((10, 3)), beam=np.zeros(3))
    with pytest.raises(ScanStructureError):
        scan_structure(np.zeros((0, 3)))
    for preset in SENSORS.values():
        e = np.asarray(preset.elevations_deg)
        assert (np.diff(e) < 0).all() and preset.beams == len(e) and preset.columns > 0


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"KITTI dev scans not found under {KITTI}")
def test_real_kitti_scans_have_64_thin_monotone_beams():
    from sspu_ros.io.kitti import read_velodyne

    for f in sorted((KITTI / "velodyne").glob("*.bin"))[:2]:
        st = scan_structure(read_velodyne(f))
        assert st.source == "storage-order" and st.n_rows == 64
        assert (np.diff(st.elevation_deg) < 0).all() and st.spread_deg.max() < 0.01
        assert (st.rows >= 0).all()


def test_scan_info_command_reads_a_ring_field_and_reports_failure(tmp_path, capsys):
    from sspu_ros.cli.main import main
    from sspu_ros.io.cloud_files import write_cloud

    pts, beam = _spin(VLP16, seed=6)
    order = np.random.default_rng(2).permutation(len(pts))
    path = tmp_path / "scan.ply"
    write_cloud(path, pts[order].astype(np.float32), {"ring": (15 - beam[order]).astype(np.uint16)})
    assert main(["scan-info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "16 beams from field:ring" in out and "+15.00 .. -15.00 deg" in out
    assert main(["scan-info", str(path), "--json"]) == 0
    assert '"beams": 16' in capsys.readouterr().out
    noise = tmp_path / "noise.xyz"
    write_cloud(noise, np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))
    assert main(["scan-info", str(noise)]) == 2
    assert "no beam structure" in capsys.readouterr().err
