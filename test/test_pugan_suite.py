"""The PU-GAN quality suite (``sspu bench quality --suite pugan``): scoring, rows, skips,
predictions on disk, the CLI, and an independent brute-force check of CD/HD."""

import json

import numpy as np
import pytest

from sspu_ros.cli.main import main
from sspu_ros.evaluation import pugan_suite as evaluation
from sspu_ros.evaluation.pugan_suite import format_quality, plot_shape_indices, run_quality
from sspu_ros.io.cloud_files import read_cloud, write_cloud
from sspu_ros.runtime.midpoint import midpoint_upsample


def _brute_cd_hd(pred: np.ndarray, gt: np.ndarray, rows: int = 512) -> tuple[float, float]:
    """GUIDE §3 written out independently: each cloud centred on its centroid and scaled
    to max radius 1; the full squared distance matrix (in row blocks to bound memory)."""
    def unit(x):
        x = x.astype(np.float64) - x.astype(np.float64).mean(0)
        return x / np.sqrt((x * x).sum(1)).max()

    p, g = unit(pred), unit(gt)
    pp, gg = (p * p).sum(1), (g * g).sum(1)
    p_to_g = np.empty(len(p))
    g_to_p = np.full(len(g), np.inf)
    for s in range(0, len(p), rows):  # |p - g|^2 = |p|^2 + |g|^2 - 2 p.g, (rows, G)
        d = np.maximum(pp[s:s + rows, None] + gg[None, :] - 2.0 * p[s:s + rows] @ g.T, 0.0)
        p_to_g[s:s + rows] = d.min(1)
        g_to_p = np.minimum(g_to_p, d.min(0))
    return p_to_g.mean() + g_to_p.mean(), p_to_g.max() + g_to_p.max()


def _sphere(n, seed):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def tiny_pugan(tmp_path):
    """A PU-GAN-layout folder: 2 shapes (ellipsoids), 256-point inputs, 1024-point gt."""
    root = tmp_path / "pugan"
    for i, name in enumerate(["a", "b"]):
        gt = _sphere(1024, i) * np.array([1.0, 0.6 + 0.2 * i, 0.4], np.float32)
        write_cloud(root / "gt" / f"{name}.xyz", gt)
        write_cloud(root / "input" / f"{name}.xyz", gt[::4])
    return root


def test_brute_force_helper_on_a_hand_made_case():
    # pred {0, 2} on a line, gt {0, 1, 2}: both already centred at 1 with radius 1
    pred = np.array([[0, 0, 0], [2, 0, 0]], float)
    gt = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float)
    cd, hd = _brute_cd_hd(pred, gt)
    assert cd == pytest.approx(0 + 1 / 3) and hd == pytest.approx(0 + 1)


def test_suite_cd_hd_match_brute_force_on_a_dev_shape(data_dir, tmp_path):
    pugan = data_dir / "pugan-dev"
    if not (pugan / "input").is_dir():
        pytest.skip(f"PU-GAN dev split not found at {pugan}")
    res = run_quality(pugan, [], limit=1, baselines=["midpoint"], out_dir=tmp_path,
                      progress=False)
    name = res["shapes"][0]
    x = read_cloud(pugan / "input" / f"{name}.xyz").xyz
    gt = read_cloud(pugan / "gt" / f"{name}.xyz").xyz
    pred = midpoint_upsample(x, 4)  # recomputed, not read from the suite
    written = read_cloud(tmp_path / "midpoint" / f"{name}.xyz").xyz
    np.testing.assert_allclose(written, pred, atol=1e-5)
    cd, hd = _brute_cd_hd(pred, gt)
    row = res["methods"]["midpoint"]
    assert row["per_shape_cd_e3"][0] == pytest.approx(1e3 * cd, rel=1e-7)
    assert row["per_shape_hd_e3"][0] == pytest.approx(1e3 * hd, rel=1e-7)
    assert row["cd_e3"] == pytest.approx(1e3 * cd, rel=1e-7)


def test_rows_predictions_and_table(tiny_pugan, tmp_path):
    out = tmp_path / "out"
    res = run_quality(tiny_pugan, ["midpoint"], baselines=["input x4", "mls quadric + fps"],
                      out_dir=out, progress=False)
    assert res["shapes"] == ["a", "b"] and res["meshes"] == 0
    assert list(res["methods"]) == ["input x4", "mls quadric + fps", "midpoint"]
    for m, folder in [("input x4", "input_x4"), ("mls quadric + fps", "mls_quadric_fps"),
                      ("midpoint", "midpoint")]:
        for s in ("a", "b"):
            assert read_cloud(out / folder / f"{s}.xyz").xyz.shape == (1024, 3)
        r = res["methods"][m]
        assert r["cd_e3"] == pytest.approx(np.mean(r["per_shape_cd_e3"]))
        assert r["p2f_mean_e3"] is None and r["seconds_per_shape"] >= 0
    # each generated row is scored on its own prediction: input x4 is the input repeated
    x = read_cloud(tiny_pugan / "input" / "b.xyz").xyz
    gt = read_cloud(tiny_pugan / "gt" / "b.xyz").xyz
    assert res["methods"]["input x4"]["per_shape_cd_e3"][1] == pytest.approx(
        1e3 * _brute_cd_hd(np.tile(x, (4, 1)), gt)[0], rel=1e-7)
    # densifying beats repeating on a smooth surface
    assert res["methods"]["mls quadric + fps"]["cd_e3"] < res["methods"]["input x4"]["cd_e3"]
    table = format_quality(res)
    assert "mls quadric + fps" in table and "predictions:" in table
    assert len([ln for ln in table.splitlines() if ln.startswith(("input x4", "midpoint"))]) == 2


def test_missing_dependency_skips_the_baseline_with_its_reason(tiny_pugan, monkeypatch):
    fn, _ = evaluation.BASELINES["poisson (open3d)"]
    monkeypatch.setitem(evaluation.BASELINES, "poisson (open3d)",
                        (fn, lambda: "open3d not importable: test"))
    res = run_quality(tiny_pugan, [], limit=1, baselines=["midpoint", "poisson (open3d)"],
                      progress=False)
    assert list(res["methods"]) == ["midpoint"]
    assert res["skipped"] == {"poisson (open3d)": "open3d not importable: test"}
    assert "skipped poisson (open3d): open3d not importable: test" in format_quality(res)


def test_adapt_row_is_skipped_for_models_without_a_checkpoint(tiny_pugan):
    res = run_quality(tiny_pugan, ["midpoint"], limit=1, baselines=[], adapt=3,
                      progress=False)
    assert list(res["methods"]) == ["midpoint"]
    assert "midpoint +adapt 3" in res["skipped"]


def test_bad_arguments(tiny_pugan, tmp_path):
    with pytest.raises(ValueError, match="unknown baseline"):
        run_quality(tiny_pugan, [], baselines=["nope"], progress=False)
    with pytest.raises(Exception, match="no such folder"):
        run_quality(tmp_path / "missing", [], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no input"):
        run_quality(tmp_path / "empty", [], progress=False)


def test_plot_shape_indices_spread_evenly():
    assert plot_shape_indices(18, 3) == [0, 8, 17]  # round(8.5) = 8 (banker's rounding)
    assert plot_shape_indices(2, 3) == [0, 1]
    assert plot_shape_indices(0, 3) == [] and plot_shape_indices(5, 0) == []


def test_cli_bench_quality_json(tiny_pugan, tmp_path, capsys):
    assert main(["bench", "quality", "--data", str(tiny_pugan), "--limit", "1", "--json",
                 "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["shapes"] == ["a"]
    assert {"input x4", "midpoint", "mls quadric + fps"} <= set(res["methods"])
    assert (tmp_path / "o" / "midpoint" / "a.xyz").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/nowhere"], "no such folder"),
    (["--data", "{tmp}", "--limit", "0"], "--limit must be >= 1"),
    (["--data", "{tmp}", "--adapt", "-1"], "--adapt must be >= 0"),
    (["--suite", "kitti-beams", "--adapt", "2"], "--adapt is implemented for --suite pugan"),
    (["--suite", "lidar-sim", "--ground", "plane"], "--ground applies to --suite kitti-beams"),
])
def test_cli_bench_quality_user_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["bench", "quality", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sspu: error:") and message in err and len(err.splitlines()) == 1
