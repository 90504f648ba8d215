"""ONNX export of a trained checkpoint, parity with PyTorch, and the ONNX Runtime upsampler
behind the same interface as the PyTorch one."""

import numpy as np
import onnx
import pytest

from sspu_ros.cli.main import main
from sspu_ros.errors import ModelError
from sspu_ros.runtime.export import export_checkpoint
from sspu_ros.runtime.loading import load_upsampler
from sspu_ros.runtime.onnx_backend import OnnxUpsampler
from sspu_ros.runtime.torch_backend import GeneratorUpsampler
from sspu_ros.simulation.sample_surface import torus_knot_surface


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # conftest.py: 1 step of sspu train, shared by the test files


def test_export_writes_checked_onnx_with_metadata_and_parity(checkpoint, tmp_path):
    r = export_checkpoint(checkpoint, tmp_path / "m.onnx")
    assert r["max_abs_diff"] <= 1e-4 and r["ratio"] == 4 and r["patch_size"] == 64
    graph = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(graph)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["sspu.ratio"] == "4" and meta["sspu.patch_size"] == "64"
    dim0 = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param  # dynamic number of patches


def test_onnx_upsampler_matches_the_torch_one_on_a_cloud(checkpoint, tmp_path):
    assert main(["export", "--model", str(checkpoint), "--onnx", str(tmp_path / "m.onnx")]) == 0
    ort_up = load_upsampler(str(tmp_path / "m.onnx"), None)
    torch_up = load_upsampler(str(checkpoint), None)
    assert isinstance(ort_up, OnnxUpsampler) and isinstance(torch_up, GeneratorUpsampler)
    torch_up.patch_size = ort_up.patch_size
    x = torus_knot_surface(500, seed=3)
    a, b = ort_up.upsample(x), torch_up.upsample(x)
    assert a.shape == b.shape == (2000, 3)
    np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ModelError, match="64-point patches"):
        ort_up.upsample(x[:10])
    with pytest.raises(ModelError, match="upsamples x4, but ratio 2"):
        load_upsampler(str(tmp_path / "m.onnx"), 2)


def test_foreign_onnx_is_refused_with_the_fix(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["xyz"], ["dense"])
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("xyz", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("dense", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(g), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelError, match="not an sspu export"):
        load_upsampler(str(tmp_path / "foreign.onnx"), None)


def test_generator_benchmark_reports_both_runtimes():
    from sspu_ros.evaluation.bench_generator import (
        format_generator_benchmark,
        run_generator_benchmark,
    )

    r = run_generator_benchmark(batches=(2,), repeats=1, presets=("light",))
    (row,) = r["rows"]
    assert row["batch"] == 2 and row["torch_s"] > 0 and row["ort_s"] > 0
    assert row["ort_speedup"] == pytest.approx(row["torch_s"] / row["ort_s"])
    assert "light" in format_generator_benchmark(r)
