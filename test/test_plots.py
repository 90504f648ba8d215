"""PNG figures of the quality benchmark (matplotlib Agg)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install -e '.[eval]')")

from sspu_ros.evaluation.plots import plot_metrics, plot_shapes

PNG = b"\x89PNG\r\n\x1a\n"


def _cloud(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_shape_grid_and_metric_chart_are_written(tmp_path):
    rows = [(f"s{i}", {"input": _cloud(100, i), "midpoint": _cloud(400, i + 1),
                       "ground truth": _cloud(9000, i + 2)}) for i in range(2)]
    p = plot_shapes(rows, tmp_path / "sub" / "shapes.png")
    assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    result = {"shapes": ["s0", "s1"], "ratio": 4, "methods": {
        "input x4": {"cd_e3": 0.4, "hd_e3": 1.5, "p2f_mean_e3": 0.2, "p2f_std_e3": 0.1},
        "midpoint": {"cd_e3": 0.3, "hd_e3": 1.9, "p2f_mean_e3": None, "p2f_std_e3": None}}}
    m = plot_metrics(result, tmp_path / "metrics.png")
    assert m.read_bytes()[:8] == PNG and m.stat().st_size > 5000


def test_empty_shape_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least one shape"):
        plot_shapes([], tmp_path / "x.png")


def test_bench_quality_plot_writes_figures(tmp_path):
    from sspu_ros.evaluation.pugan_suite import run_quality
    from sspu_ros.io.cloud_files import write_cloud

    root = tmp_path / "pugan"
    gt = _cloud(800, 0)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    write_cloud(root / "gt" / "s.xyz", gt)
    write_cloud(root / "input" / "s.xyz", gt[::4])
    res = run_quality(root, [], baselines=["input x4", "midpoint"], plot=True,
                      out_dir=tmp_path / "out", progress=False)
    assert sorted(res["figures"]) == sorted(str(tmp_path / "out" / f) for f in
                                            ("shapes.png", "metrics.png"))
    for f in res["figures"]:
        with open(f, "rb") as fh:
            assert fh.read(8) == PNG
