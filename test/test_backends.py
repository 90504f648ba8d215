"""One Upsampler interface, several backends: the same tests run against every backend
available here (torch, ONNX Runtime CPU; TensorRT where `import tensorrt` and a GPU work),
plus the auto choice, the backend options, the config wiring and the FP16 export."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from sspu_ros.cli.main import main
from sspu_ros.config import load_config
from sspu_ros.errors import ModelError
from sspu_ros.model.checkpoint import FORMAT_VERSION
from sspu_ros.model.generator import GeneratorConfig, build_generator
from sspu_ros.runtime.export import PARITY_TOL_FP16, export_checkpoint, real_patches
from sspu_ros.runtime.loading import (
    Availability,
    choose_backend,
    load_upsampler,
    probe_availability,
)
from sspu_ros.runtime.model_files import ModelFiles
from sspu_ros.runtime.onnx_backend import OrtUpsampler
from sspu_ros.runtime.torch_backend import TorchUpsampler
from sspu_ros.simulation.sample_surface import torus_knot_surface

K, R = 64, 4
HAVE_TRT = probe_availability().tensorrt
BACKENDS = ["torch", "onnxruntime",
            pytest.param("tensorrt", marks=[pytest.mark.tensorrt, pytest.mark.skipif(
                not HAVE_TRT, reason="needs `import tensorrt` and a CUDA GPU; the TensorRT "
                "runtime cannot be installed on the CPU-only dev/CI machines")])]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny light generator (16 channels, 64-point patches) with offsets large enough to
    matter (head_init_scale 0.3), as models/tiny.pt + models/tiny.onnx."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = dataclasses.replace(GeneratorConfig.light(), channels=16, head_init_scale=0.3)
    torch.save({"format": FORMAT_VERSION, "step": 0, "model": build_generator(cfg).state_dict(),
                "generator": dataclasses.asdict(cfg), "config": {"data.patch_size": K}},
               d / "tiny.pt")
    export_checkpoint(d / "tiny.pt", d / "tiny.onnx")
    return d


@pytest.fixture
def shipped(models, monkeypatch):
    """Make `models` the shipped models folder (name 'tiny' -> tiny.pt / tiny.onnx)."""
    import sspu_ros.runtime.model_files as up

    monkeypatch.setattr(up, "models_dir", lambda: models)
    return models


@pytest.fixture(scope="module", params=BACKENDS)
def upsampler(request, models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model = models / ("tiny.pt" if request.param == "torch" else "tiny.onnx")
    return load_upsampler(str(model), None, backend=request.param, cache_dir=cache)


@pytest.fixture(scope="module")
def reference(models):
    return TorchUpsampler(models / "tiny.pt", device="cpu")


def _random_patches(b: int, seed: int = 1) -> np.ndarray:
    x = torch.randn(b, K, 3, generator=torch.Generator().manual_seed(seed))
    return (x / x.norm(dim=-1).amax(dim=1)[:, None, None]).numpy()


# --------------------------------------------------------------------------- interface


def test_patches_shape_dtype_and_backend_name(upsampler, request):
    out = upsampler.upsample_patches(_random_patches(3))
    assert out.shape == (3, R * K, 3) and out.dtype == np.float32
    assert upsampler.ratio == R and upsampler.patch_size == K
    assert upsampler.backend == request.node.callspec.params["upsampler"]
    assert upsampler.upsample_patches(np.zeros((0, K, 3), np.float32)).shape == (0, R * K, 3)


def test_output_is_copy_major_per_point(upsampler):
    x = _random_patches(2)
    out = upsampler.upsample_patches(x).reshape(2, K, R, 3)
    d = np.linalg.norm(out[:, :, :, None] - x[:, None, None], axis=-1)  # (B, K, R, K)
    nearest = d.argmin(-1)  # the input point each copy lies closest to
    owner = np.broadcast_to(np.arange(K)[None, :, None], nearest.shape)
    assert (nearest == owner).mean() > 0.9


def test_backends_agree_with_pytorch_on_random_and_real_patches(upsampler, reference):
    x = _random_patches(5, seed=7)
    np.testing.assert_allclose(upsampler.upsample_patches(x), reference.upsample_patches(x),
                               atol=1e-4, rtol=0)
    real = real_patches(patch_size=K)
    if real is None:
        pytest.skip("dev data ../shared/data/pugan-dev/input not found")
    np.testing.assert_allclose(upsampler.upsample_patches(real),
                               reference.upsample_patches(real), atol=1e-4, rtol=0)


def test_whole_cloud_matches_pytorch_and_keeps_the_input_first(upsampler, reference):
    x = torus_knot_surface(160, seed=2)
    out = upsampler.upsample(x)
    assert out.shape == (640, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:160], x)
    np.testing.assert_allclose(out, reference.upsample(x), atol=1e-4, rtol=0)
    dense, sources = upsampler.upsample_with_sources(x)
    assert sources.shape == (480, 1) and sources[:3, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(dense, out)


@pytest.mark.parametrize("bad", [(K, 3), (2, K, 4), (2, K, 3, 1)])
def test_bad_patch_shapes_are_refused(upsampler, bad):
    with pytest.raises(ValueError, match=r"\(B, "):
        upsampler.upsample_patches(np.zeros(bad, np.float32))


# --------------------------------------------------------------------------- choosing


def _avail(cuda=False, providers=("CPUExecutionProvider",), trt=False):
    return Availability(cuda, tuple(providers), trt)


PT, ONNX = ModelFiles("m", "m.pt", None), ModelFiles("m", None, "m.onnx")
BOTH = ModelFiles("m", "m.pt", "m.onnx")
GPU_ORT = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize("files, avail, expected", [
    (BOTH, _avail(True, GPU_ORT, True), ("tensorrt", "cuda")),
    (PT, _avail(True, GPU_ORT, True), ("tensorrt", "cuda")),  # exported on the fly
    (BOTH, _avail(True, GPU_ORT), ("onnxruntime", "cuda")),
    (PT, _avail(True, GPU_ORT), ("torch", "cuda")),
    (BOTH, _avail(True), ("torch", "cuda")),
    (ONNX, _avail(True), ("onnxruntime", "cpu")),
    (BOTH, _avail(), ("onnxruntime", "cpu")),
    (PT, _avail(), ("torch", "cpu")),
    (BOTH, _avail(providers=()), ("torch", "cpu")),
])
def test_auto_takes_the_first_available_in_order(files, avail, expected):
    assert choose_backend("auto", files, avail) == expected


@pytest.mark.parametrize("backend, files, avail, match", [
    ("torch", ONNX, _avail(), "ONNX only"),
    ("onnxruntime", BOTH, _avail(providers=()), "pip install onnxruntime"),
    ("tensorrt", BOTH, _avail(True, GPU_ORT), "import tensorrt"),
    ("auto", ONNX, _avail(providers=()), "pip install onnxruntime"),
    ("tflite", BOTH, _avail(), "unknown backend 'tflite'"),
])
def test_impossible_choices_say_why(backend, files, avail, match):
    with pytest.raises(ModelError, match=match):
        choose_backend(backend, files, avail)


def test_shipped_name_picks_the_file_per_backend(shipped):
    assert isinstance(load_upsampler("tiny", None, backend="torch"), TorchUpsampler)
    ort = load_upsampler("tiny", None, backend="onnxruntime")
    assert isinstance(ort, OrtUpsampler) and ort.name == "tiny"
    if not HAVE_TRT and not torch.cuda.is_available():
        assert load_upsampler("tiny", None).backend == "onnxruntime"  # auto on a CPU
    assert load_upsampler(str(shipped / "tiny.pt"), None).backend in ("torch", "tensorrt")


def test_pt_runs_on_onnxruntime_through_a_cached_export(models, tmp_path, monkeypatch):
    import sspu_ros.runtime.export as export

    calls = []
    real_export = export.export_checkpoint
    monkeypatch.setattr(export, "export_checkpoint",
                        lambda *a, **k: calls.append(a) or real_export(*a, **k))
    for _ in range(2):
        up = load_upsampler(str(models / "tiny.pt"), None, backend="onnxruntime",
                            cache_dir=tmp_path)
    assert up.backend == "onnxruntime" and len(calls) == 1
    assert len(list((tmp_path / "onnx").glob("*-fp32.onnx"))) == 1


def test_onnxruntime_options_providers_and_threads(models):
    up = load_upsampler(str(models / "tiny.onnx"), None, backend="onnxruntime",
                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert up.providers == ["CPUExecutionProvider"] and up.device == "cpu"
    assert up.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ModelError, match="none of the ONNX Runtime providers"):
        load_upsampler(str(models / "tiny.onnx"), None, backend="onnxruntime",
                       providers=["NoSuchExecutionProvider"])


def test_torch_device_option(models):
    assert load_upsampler(str(models / "tiny.pt"), None, backend="torch",
                          device="cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="sees no CUDA GPU"):
            load_upsampler(str(models / "tiny.pt"), None, backend="torch", device="cuda")


def test_config_drives_backend_and_options(models):
    cfg = load_config(overrides={"model": str(models / "tiny.onnx"), "ratio": 4,
                                 "backend": "onnxruntime", "onnxruntime.threads": 1,
                                 "onnxruntime.providers": ["CPUExecutionProvider"]})
    up = load_upsampler(cfg["model"], cfg["ratio"], config=cfg)
    assert up.backend == "onnxruntime" and up.providers == ["CPUExecutionProvider"]
    # an explicit argument wins over the config
    cfg = cfg.replace(model=str(models / "tiny.pt"), backend="onnxruntime")
    assert load_upsampler(cfg["model"], None, "torch", config=cfg).backend == "torch"
    mid = load_upsampler("midpoint", 4, config=load_config())
    assert mid.backend == "builtin"
    with pytest.raises(ModelError, match="unknown backend"):
        load_upsampler("midpoint", 4, backend="cuda")


def test_cli_backend_flag(models, tmp_path, capsys):
    from sspu_ros.io.cloud_files import write_cloud

    write_cloud(tmp_path / "in.xyz", torus_knot_surface(300, seed=1))
    assert main(["upsample", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "out.xyz"),
                 "--model", str(models / "tiny.onnx"), "--backend", "onnxruntime"]) == 0
    assert "backend onnxruntime" in capsys.readouterr().out
    assert main(["upsample", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "out.xyz"),
                 "--model", str(models / "tiny.onnx"), "--backend", "torch"]) == 2
    assert "sspu: error: backend 'torch' runs .pt checkpoints" in capsys.readouterr().err


# --------------------------------------------------------------------------- FP16 export


def test_fp16_export_float32_io_half_weights_and_stated_bound(models, tmp_path):
    real = real_patches(patch_size=K)
    r = export_checkpoint(models / "tiny.pt", tmp_path / "h.onnx", fp16=True,
                          real_patches=real)
    graph = onnx.load(str(tmp_path / "h.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.graph.input[0].type.tensor_type.elem_type == f32
    assert graph.graph.output[0].type.tensor_type.elem_type == f32
    floats = [t.data_type for t in graph.graph.initializer if t.data_type in (f32, f16)]
    assert floats and set(floats) == {f16}
    assert {p.key: p.value for p in graph.metadata_props}["sspu.precision"] == "fp16"
    assert r["precision"] == "fp16" and r["tolerance"] == PARITY_TOL_FP16
    # float16 really is in use (not a silent fp32 graph), within the stated bound
    assert 1e-5 < r["max_abs_diff"] <= PARITY_TOL_FP16
    if real is not None:
        assert 1e-5 < r["max_abs_diff_real"] <= PARITY_TOL_FP16
    up = load_upsampler(str(tmp_path / "h.onnx"), None, backend="onnxruntime")
    out = up.upsample_patches(_random_patches(2))
    assert out.dtype == np.float32 and out.shape == (2, R * K, 3)


def test_fp32_export_parity_on_real_patches(models, tmp_path):
    real = real_patches(patch_size=K)
    if real is None:
        pytest.skip("dev data ../shared/data/pugan-dev/input not found")
    r = export_checkpoint(models / "tiny.pt", tmp_path / "f.onnx", real_patches=real)
    assert r["max_abs_diff"] <= 1e-4 and r["max_abs_diff_real"] <= 1e-4
    assert r["precision"] == "fp32"


def test_cli_export_fp16(models, tmp_path, capsys):
    assert main(["export", "--model", str(models / "tiny.pt"), "--onnx",
                 str(tmp_path / "h.onnx"), "--fp16"]) == 0
    out = capsys.readouterr().out
    assert "(fp16, x4, 64-point patches" in out and f"bound {PARITY_TOL_FP16:g}" in out


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"", b"PK\x03\x04junk",
                                     "a torch file of another kind"])
def test_a_pt_that_is_not_a_checkpoint_is_a_model_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save([1, 2, 3], bad)
    with pytest.raises(ModelError, match=r"bad\.pt.*not an sspu_ros checkpoint"):
        load_upsampler(str(bad), None, backend="torch")
    cloud = tmp_path / "in.xyz"
    np.savetxt(cloud, np.random.default_rng(0).random((64, 3)))
    assert main(["upsample", str(cloud), "-o", str(tmp_path / "out.xyz"),
                 "--model", str(bad), "--backend", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sspu: error: ") and "checkpoint" in err[0]


def test_checkpoint_train_config_layers_defaults_checkpoint_and_overrides():
    from sspu_ros.config import default_parameters
    from sspu_ros.errors import ConfigError
    from sspu_ros.training.trainer import checkpoint_train_config

    defaults = default_parameters("train")
    ckpt = {"config": {"data.patch_size": 64, "optim.lr": 0.5, "no.such.key": 1}}
    cfg = checkpoint_train_config(ckpt, {"optim.lr": 0.25, "data.paths": ["x.bag"]})
    assert cfg["data.patch_size"] == 64          # from the checkpoint
    assert cfg["optim.lr"] == 0.25               # overrides win
    assert cfg["data.paths"] == ["x.bag"]
    assert cfg["optim.steps"] == defaults["optim.steps"]   # the rest: defaults
    assert checkpoint_train_config({}, {})["data.patch_size"] == defaults["data.patch_size"]
    with pytest.raises(ConfigError, match="optim.lr"):
        checkpoint_train_config(ckpt, {"optim.lr": "fast"})


def test_onnx_runs_clouds_smaller_than_a_patch_through_the_checkpoint(shipped):
    """A shipped model (NAME.pt + NAME.onnx) run by ONNX Runtime takes a cloud smaller than
    its exported patch through its .pt (PyTorch takes any patch size); an .onnx alone says
    why it cannot."""
    x = torus_knot_surface(K - 10, seed=4)
    up = load_upsampler("tiny", None, backend="onnxruntime")
    ref = TorchUpsampler(shipped / "tiny.pt", device="cpu")
    np.testing.assert_allclose(up.upsample(x), ref.upsample(x), atol=1e-5)
    dense, sources = up.upsample_with_sources(x)
    assert dense.shape == (R * len(x), 3) and len(sources) == (R - 1) * len(x)
    alone = load_upsampler(str(shipped / "tiny.onnx"), None, backend="onnxruntime")
    with pytest.raises(ModelError, match="smaller than a patch"):
        alone.upsample(x)


def test_clouds_smaller_than_the_neighbourhoods_are_a_model_error(shipped):
    """A cloud with fewer points than the generator's kNN graph needs (knn_k = 16 here) is
    refused with a ModelError that names the minimum, by PyTorch and by ONNX Runtime (whose
    small clouds go to the .pt): callers such as the lidar-sim suite count it as refused;
    a cloud of exactly the minimum is upsampled."""
    up = load_upsampler("tiny", None, backend="onnxruntime")
    ref = TorchUpsampler(shipped / "tiny.pt", device="cpu")
    need = ref.model.cfg.min_points()
    small = torus_knot_surface(need - 1, seed=5)
    for backend in (ref, up):
        with pytest.raises(ModelError, match=f"at least {need} points"):
            backend.upsample(small)
        with pytest.raises(ModelError, match=f"at least {need} points"):
            backend.upsample_with_sources(small)
    assert ref.upsample(torus_knot_surface(need, seed=5)).shape == (R * need, 3)
