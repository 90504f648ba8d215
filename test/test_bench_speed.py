"""``sspu bench speed``: tiny smoke runs (the real figures come from the command), the
beam stride and the verdicts."""

import numpy as np
import pytest

from sspu_ros.cli.main import main
from sspu_ros.evaluation.bench_speed import (
    BEAM_TARGETS,
    TARGETS,
    find_scans,
    format_speed_benchmark,
    run_speed_benchmark,
    sample_scan,
    target_lines,
    thin_beams,
)
from sspu_ros.geometry.beams import recover_rings


def _tiny_kitti(tmp_path):
    scan = sample_scan(1, n_sweep=3000)
    d = tmp_path / "kitti"
    d.mkdir()
    scan.tofile(d / "000000.bin")
    return d


def kitti_like_scan(beams: int = 64, columns: int = 512, seed: int = 0) -> np.ndarray:
    """(N, 4) float32 scan stored laser by laser as KITTI stores it (each ring starts at
    the front and sweeps the azimuth once): ground, a wall all around at 40 m (every beam
    has returns) and the front face of a car-sized block at x = 8 m."""
    rng = np.random.default_rng(seed)
    el = np.broadcast_to(np.deg2rad(np.linspace(2.0, -24.8, beams))[:, None], (beams, columns))
    az = np.broadcast_to((np.arange(columns) + 0.5) / columns * 2 * np.pi, (beams, columns))
    r = np.where(el < 0, 1.73 / np.tan(-np.minimum(el, -1e-6)), np.inf)
    r = np.minimum(r, 40.0 / np.cos(el))
    face = 8.0 / np.cos(az) / np.cos(el)
    z, y = face * np.sin(el), face * np.cos(el) * np.sin(az)
    hit = (np.cos(az) > 0) & (np.abs(y) < 1.0) & (z > -1.73) & (z < -0.23) & (face < r)
    r = np.where(hit, face, r) + rng.normal(0, 0.005, r.shape)
    pts = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az),
                    r * np.sin(el), np.full_like(r, 0.5)], -1)
    return pts.reshape(-1, 4).astype(np.float32)


def test_speed_benchmark_smoke(tmp_path):
    """A patch model (the built-in midpoint): stages, generator rows, shape, RSS."""
    data = _tiny_kitti(tmp_path)
    assert find_scans(data) == [data / "000000.bin"]
    r = run_speed_benchmark(str(data), overrides={"model": "midpoint"}, n_scans=2,
                            rss_scans=3, batches=(1, 2), repeats=1, sample_points=3000,
                            progress=False)
    assert r["kind"] == "patches" and r["targets"] == TARGETS
    e = r["backends"]["builtin"]
    for source in ("kitti", "sample"):
        stages = e[source]
        assert stages["total"]["n"] == 2 and stages["patches"] >= 1
        parts = sum(stages[s]["median_ms"] for s in ("decode", "preprocess", "inference",
                                                        "postprocess", "encode"))
        assert 0 < stages["total"]["median_ms"] <= parts * 1.5 + 1
        assert stages["non_inference"]["median_ms"] <= stages["total"]["median_ms"]
    assert [g["batch"] for g in e["generator"]] == [1, 2]
    assert e["shape_2048_s"] > 0
    assert e["rss"]["scans"] == 3 and e["rss"]["growth_pct"] is not None
    text = format_speed_benchmark(r)
    for word in ("decode", "preprocess", "inference", "postprocess", "encode",
                 "2048-point shape", "RSS over 3 scans", "patches/s", "target total <= 100"):
        assert word in text
    assert "network" not in text


def test_thin_beams_keeps_every_kth_ring_in_storage_order():
    scan = kitti_like_scan()
    rings = recover_rings(scan)
    assert rings.max() + 1 == 64
    thin, n = thin_beams(scan, 4)
    assert n == 16 and len(thin) == int((rings % 4 == 0).sum())
    np.testing.assert_array_equal(thin, scan[rings % 4 == 0])  # order kept
    assert recover_rings(thin).max() + 1 == 16  # the densifier recovers the 16 beams
    same, n_all = thin_beams(scan, 1)
    assert same is scan and n_all == 64


def test_speed_benchmark_beam_model_with_beam_stride(tmp_path):
    """The default model (sspu_lidar_x4, a beam interpolator) on 16 of 64 beams: network
    rows instead of generator rows, beam-path share, the mode's target."""
    d = tmp_path / "kitti"
    d.mkdir()
    kitti_like_scan().tofile(d / "000000.bin")
    r = run_speed_benchmark(str(d), n_scans=2, rss_scans=0, repeats=1, sample_points=3000,
                            beam_stride=4, progress=False)
    assert r["model"] == "sspu_lidar_x4" and r["kind"] == "beams"
    assert r["targets"] == BEAM_TARGETS and r["beam_stride"] == 4
    assert r["kitti_beams_mean"] == 16
    assert set(r["backends"]) == {"torch", "onnxruntime"}
    for e in r["backends"].values():
        assert "unavailable" not in e, e
        k = e["kitti"]
        assert k["total"]["n"] == 2 and k["points_mean"] == 512 * 16
        assert k["beam_share"] == 1.0 and k["fallback_share"] == 0.0
        assert "generator" not in e and "shape_2048_s" not in e
        net = e["network"]
        assert net["image"] == [16, 2048] and net["image_ms"] > 0
        assert net["image_source"] == "first KITTI scan"
        assert net["objects_pixels"] > 0 and net["objects_ms"] > 0
    text = format_speed_benchmark(r)
    for word in ("every 4th ring kept (16 beams per scan)", "beam path 100%",
                 "full 16 x 2048 range image", "objects-mode wanted pixels",
                 "target objects mode total <= 50 ms"):
        assert word in text
    assert "patches/s" not in text and "2048-point shape" not in text


def _made_up(total_ms: float, mode: str = "objects", kind: str = "beams",
             beams: float | None = 16, beam_share: float = 1.0) -> tuple[dict, dict]:
    stage = {"kitti": {"total": {"median_ms": total_ms}, "non_inference": {"median_ms": 5.0},
                       "beam_share": beam_share}}
    result = {"kind": kind, "mode": mode, "kitti_beams_mean": beams,
              "targets": BEAM_TARGETS if kind == "beams" else TARGETS}
    return stage, result


@pytest.mark.parametrize(("total", "mode", "expected"), [
    (40.0, "objects", "target objects mode total <= 50 ms (16-beam scans, 2 cores): meets"),
    (100.0, "objects", "objects mode total <= 50 ms (16-beam scans, 2 cores): misses by 2.0x"),
    (140.0, "full", "target full mode total <= 150 ms (16-beam scans, 2 cores): meets"),
    (300.0, "full", "full mode total <= 150 ms (16-beam scans, 2 cores): misses by 2.0x"),
    (10.0, "roi", "target: none for mode roi (objects <= 50 ms, full <= 150 ms)"),
])
def test_beam_model_verdict_by_mode(total, mode, expected):
    entry, result = _made_up(total, mode)
    (line,) = target_lines(entry, result)
    assert expected in line
    assert "[" not in line  # 16 beams, all on the beam path: no caveat


def test_beam_model_verdict_flags_wrong_input_and_fallback():
    entry, result = _made_up(40.0, beams=64, beam_share=0.5)
    (line,) = target_lines(entry, result)
    assert "meets" in line and "input has 64 beams" in line and "--beam-stride 4" in line
    assert "only 50% of the scans took the beam path" in line


def test_patch_model_verdict_unchanged():
    entry, result = _made_up(120.0, kind="patches")
    (line,) = target_lines(entry, result)
    assert line == ("  target total <= 100 ms: misses by 1.2x; all but inference <= 20 ms: "
                    "meets")


def test_cli_bench_speed_rejects_bad_beam_stride(capsys):
    assert main(["bench", "speed", "--beam-stride", "0"]) == 2
    assert "--beam-stride" in capsys.readouterr().err


def test_speed_benchmark_reports_unavailable_backend_and_missing_data(tmp_path):
    r = run_speed_benchmark(str(tmp_path / "none"), overrides={"model": str(tmp_path / "x.pt")},
                            backends=["torch"], n_scans=1, rss_scans=0, progress=False)
    assert "no KITTI scans" in r["kitti_source"]
    assert "x.pt" in r["backends"]["torch"]["unavailable"]
    assert "unavailable" in format_speed_benchmark(r)


def test_cli_bench_speed_rejects_bad_counts(capsys):
    assert main(["bench", "speed", "--scans", "0"]) == 2
    assert "--scans" in capsys.readouterr().err


def test_sample_scan_has_objects_above_ground():
    s = sample_scan(0, n_sweep=1000)
    assert s.dtype == np.float32 and s.shape[1] == 4 and len(s) > 1000
    assert (s[1000:, 2] > -1.73).all()
