"""``sspu bench speed``: a tiny smoke run (the real figures come from the command)."""

import numpy as np

from sspu_ros.cli.main import main
from sspu_ros.evaluation.bench_speed import (
    find_scans,
    format_speed_benchmark,
    run_speed_benchmark,
    sample_scan,
)


def _tiny_kitti(tmp_path):
    scan = sample_scan(1, n_sweep=3000)
    d = tmp_path / "kitti"
    d.mkdir()
    scan.tofile(d / "000000.bin")
    return d


def test_speed_benchmark_smoke(tmp_path):
    data = _tiny_kitti(tmp_path)
    assert find_scans(data) == [data / "000000.bin"]
    r = run_speed_benchmark(str(data), n_scans=2, rss_scans=3, batches=(1, 2), repeats=1,
                            sample_points=3000, progress=False)
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
                 "2048-point shape", "RSS over 3 scans", "patches/s"):
        assert word in text


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
