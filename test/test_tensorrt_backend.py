"""TensorRT engine cache: key and rebuild logic with a fake TensorRT (runs everywhere), and
the real engine where `import tensorrt` and a CUDA GPU work (skipped otherwise)."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sspu_ros.errors import ModelError
from sspu_ros.runtime.loading import probe_availability
from sspu_ros.runtime.model_files import ModelFiles, default_cache_dir
from sspu_ros.runtime.tensorrt_backend import EngineCache, engine_key, engine_onnx, make_profile

PROFILE = make_profile(8, 64)


class FakeToolkit:
    """Builds b'ENGINE:' + the ONNX bytes' length; deserializes only blobs with that
    prefix (anything else raises, like a corrupt or foreign engine)."""

    def __init__(self, version="10.13.0", gpu="NVIDIA H100"):
        self.version, self.gpu, self.builds, self.loads = version, gpu, 0, 0

    def gpu_name(self):
        return self.gpu

    def build(self, onnx_bytes, precision, profile):
        self.builds += 1
        return b"ENGINE:" + precision.encode() + b":" + str(len(onnx_bytes)).encode()

    def deserialize(self, blob):
        self.loads += 1
        if not blob.startswith(b"ENGINE:"):
            raise RuntimeError("Serialization assertion failed: magic tag mismatch")
        return {"engine": blob}


def test_profile_is_one_to_max_patches():
    assert make_profile(8, 64) == ((1, 64, 3), (4, 64, 3), (8, 64, 3))
    assert make_profile(1, 256) == ((1, 256, 3), (1, 256, 3), (1, 256, 3))
    with pytest.raises(ModelError, match="max_patches must be >= 1"):
        make_profile(0, 64)


def test_key_changes_with_each_ingredient_and_only_then():
    base = dict(onnx_bytes=b"onnx-1", trt_version="10.13.0", gpu_name="NVIDIA H100",
                precision="fp32", profile=PROFILE)
    key = engine_key(**base)
    assert key == engine_key(**base) and len(key) == 64
    variants = [dict(onnx_bytes=b"onnx-2"), dict(trt_version="11.4.0"),
                dict(gpu_name="NVIDIA Orin"), dict(precision="fp16"),
                dict(profile=make_profile(16, 64)), dict(profile=make_profile(8, 256)),
                dict(profile=((1, 64, 3), (2, 64, 3), (8, 64, 3))),
                dict(profile=((2, 64, 3), (4, 64, 3), (8, 64, 3)))]
    keys = {engine_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    with pytest.raises(ModelError, match="precision must be one of"):
        engine_key(**{**base, "precision": "int8"})


def test_build_once_then_reuse(tmp_path):
    tk = FakeToolkit()
    first = EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE)
    assert first.built and tk.builds == 1 and first.path.read_bytes() == b"ENGINE:fp32:4"
    assert first.key == engine_key(b"onnx", tk.version, tk.gpu, "fp32", PROFILE)
    meta = first.path.with_suffix(".json").read_text()
    assert first.key in meta and '"gpu": "NVIDIA H100"' in meta
    again = EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE)  # a new start
    assert not again.built and tk.builds == 1 and again.path == first.path
    assert again.engine == {"engine": b"ENGINE:fp32:4"}


def test_changed_ingredient_builds_a_new_engine(tmp_path):
    tk = FakeToolkit()
    cache = EngineCache(tmp_path, tk)
    a = cache.load_or_build(b"onnx", "fp32", PROFILE)
    b = cache.load_or_build(b"onnx", "fp16", PROFILE)
    c = EngineCache(tmp_path, FakeToolkit(version="11.4.0")).load_or_build(b"onnx", "fp32",
                                                                           PROFILE)
    assert b.built and c.built and len({a.path, b.path, c.path}) == 3 and tk.builds == 2


@pytest.mark.parametrize("corruption", [b"garbage", b""])
def test_corrupt_engine_is_rebuilt_exactly_once(tmp_path, corruption, caplog):
    tk = FakeToolkit()
    path = EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE).path
    path.write_bytes(corruption)
    with caplog.at_level("WARNING", logger="sspu_ros.tensorrt"):
        r = EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE)
    assert r.built and tk.builds == 2 and path.read_bytes().startswith(b"ENGINE:")
    assert "does not load" in caplog.text and "takes minutes" in caplog.text
    assert not EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE).built
    assert tk.builds == 2


def test_engine_that_deserializes_to_none_is_rebuilt(tmp_path):
    class NoneOnce(FakeToolkit):
        calls = 0

        def deserialize(self, blob):
            self.calls += 1
            return None if self.calls == 1 else super().deserialize(blob)

    tk = NoneOnce()
    EngineCache(tmp_path, FakeToolkit()).load_or_build(b"onnx", "fp32", PROFILE)
    r = EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE)
    assert r.built and tk.builds == 1 and tk.calls == 2 and r.engine is not None


def test_fresh_engine_that_does_not_load_is_an_error(tmp_path):
    class Broken(FakeToolkit):
        def build(self, *a):
            self.builds += 1
            return b"not an engine"

    with pytest.raises(ModelError, match="just built"):
        EngineCache(tmp_path, Broken()).load_or_build(b"onnx", "fp32", PROFILE)


def test_force_rebuilds(tmp_path):
    tk = FakeToolkit()
    EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE)
    assert EngineCache(tmp_path, tk).load_or_build(b"onnx", "fp32", PROFILE, force=True).built
    assert tk.builds == 2


def test_cache_folder_default_env_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("SSPU_ENGINE_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert EngineCache("", FakeToolkit()).folder == tmp_path / "env"
    monkeypatch.delenv("SSPU_ENGINE_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "sspu_ros", "engines")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not usable.*tensorrt.cache_dir"):
        EngineCache(tmp_path / "file" / "engines", FakeToolkit())


def _tiny_onnx(path, precision):
    node = helper.make_node("Identity", ["xyz"], ["dense"])
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("xyz", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("dense", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(g)
    for k, v in {"sspu.ratio": "4", "sspu.patch_size": "64", "sspu.precision": precision}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def test_onnx_for_the_engine_per_tensorrt_version(tmp_path, monkeypatch):
    import sspu_ros.runtime.tensorrt_backend as te

    exported = []
    monkeypatch.setattr(te, "exported_onnx", lambda pt, cache, precision:
                        exported.append(precision) or tmp_path / f"x-{precision}.onnx")
    f32 = _tiny_onnx(tmp_path / "m.onnx", "fp32")
    f16 = _tiny_onnx(tmp_path / "h.onnx", "fp16")
    both = ModelFiles("m", tmp_path / "m.pt", f32)
    # TensorRT 10: the FP16 builder flag on the model's own ONNX
    assert engine_onnx(both, "fp16", tmp_path, trt_major=10) == f32
    assert engine_onnx(both, "fp32", tmp_path, trt_major=11) == f32
    # TensorRT 11: no flag; an FP16 ONNX, exported from the .pt when the .onnx is fp32
    assert engine_onnx(both, "fp16", tmp_path, trt_major=11) == tmp_path / "x-fp16.onnx"
    assert engine_onnx(ModelFiles("h", None, f16), "fp16", tmp_path, trt_major=11) == f16
    assert engine_onnx(ModelFiles("p", tmp_path / "m.pt", None), "fp32", tmp_path,
                       trt_major=10) == tmp_path / "x-fp32.onnx"
    assert exported == ["fp16", "fp32"]
    with pytest.raises(ModelError, match="FP16 ONNX.*--fp16"):
        engine_onnx(ModelFiles("m", None, f32), "fp16", tmp_path, trt_major=11)


def test_build_engine_without_tensorrt_says_how(capsys):
    from sspu_ros.cli.main import main

    if probe_availability().tensorrt:
        pytest.skip("TensorRT is usable here")
    assert main(["build-engine", "--model", "midpoint"]) == 2
    assert "built in" in capsys.readouterr().err
    assert main(["build-engine", "--model", "x.onnx"]) == 2
    assert "sspu: error: " in capsys.readouterr().err


# --------------------------------------------------------------------------- real TensorRT


@pytest.mark.tensorrt
@pytest.mark.skipif(not probe_availability().tensorrt,
                    reason="needs `import tensorrt` and a CUDA GPU; the TensorRT runtime "
                    "cannot be installed on the CPU-only dev/CI machines")
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_real_engine_parity_and_cache(tmp_path, precision, tol):
    from sspu_ros.model.checkpoint import FORMAT_VERSION
    from sspu_ros.model.generator import GeneratorConfig, build_generator
    from sspu_ros.runtime.loading import load_upsampler
    from sspu_ros.runtime.torch_backend import TorchUpsampler

    torch.manual_seed(0)
    cfg = dataclasses.replace(GeneratorConfig.light(), channels=16, head_init_scale=0.3)
    torch.save({"format": FORMAT_VERSION, "step": 0, "model": build_generator(cfg).state_dict(),
                "generator": dataclasses.asdict(cfg), "config": {"data.patch_size": 64}},
               tmp_path / "m.pt")
    kw = dict(backend="tensorrt", cache_dir=tmp_path / "c", precision=precision, max_patches=4)
    up = load_upsampler(str(tmp_path / "m.pt"), None, **kw)
    assert up.backend == "tensorrt" and up.cached.built
    x = torch.randn(6, 64, 3)  # 6 > max_patches: runs in chunks
    x = (x / x.norm(dim=-1).amax(dim=1)[:, None, None]).numpy()
    ref = TorchUpsampler(tmp_path / "m.pt", device="cpu").upsample_patches(x)
    assert np.abs(up.upsample_patches(x) - ref).max() <= tol
    assert not load_upsampler(str(tmp_path / "m.pt"), None, **kw).cached.built


# --------------------------------------------------------------------------- API calls (fake)


def _fake_tensorrt(version: str, calls: list):
    """A stand-in `tensorrt` module recording the build calls; TensorRT 11 has no FP16
    builder flag (accessing it raises AttributeError, as in the real bindings)."""
    import types

    flags = types.SimpleNamespace(TF32="TF32", **({} if version.startswith("11") else
                                                  {"FP16": "FP16"}))

    class Config:
        def set_flag(self, f):
            calls.append(("set_flag", f))

        def clear_flag(self, f):
            calls.append(("clear_flag", f))

        def add_optimization_profile(self, p):
            calls.append(("profile", p.shape))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shape = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return memoryview(b"serialized")

    class Parser:
        num_errors = 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parse", data))
            return data != b"bad"

        def get_error(self, i):
            return "Unsupported op Foo"

    return types.SimpleNamespace(
        __version__=version, Logger=type("Logger", (), {"WARNING": 2, "__init__":
                                                        lambda self, level: None}),
        Builder=Builder, OnnxParser=Parser, BuilderFlag=flags,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0))


@pytest.mark.parametrize("version, precision, expected_flags, network_flags", [
    ("8.6.1", "fp16", [("set_flag", "FP16")], 1),
    ("10.13.0", "fp16", [("set_flag", "FP16")], 0),
    ("10.13.0", "fp32", [("clear_flag", "TF32")], 0),
    ("11.4.0", "fp16", [], 0),  # precision from the FP16 ONNX's types
    ("11.4.0", "fp32", [("clear_flag", "TF32")], 0),
])
def test_builder_calls_per_tensorrt_version(monkeypatch, version, precision, expected_flags,
                                            network_flags):
    import sys

    from sspu_ros.runtime.tensorrt_backend import TensorRTToolkit

    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, calls))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tk = TensorRTToolkit()
    assert tk.build(b"onnx", precision, PROFILE) == b"serialized"
    assert calls[0] == ("create_network", network_flags) and calls[1] == ("parse", b"onnx")
    assert [c for c in calls if c[0] in ("set_flag", "clear_flag")] == expected_flags
    assert calls[-1] == ("profile", ("xyz", *PROFILE))
    with pytest.raises(ModelError, match="cannot parse the ONNX: Unsupported op Foo"):
        tk.build(b"bad", precision, PROFILE)


def test_upsampler_checks_shapes_and_chunks_batches(tmp_path, monkeypatch):
    import types

    from sspu_ros.runtime.tensorrt_backend import TensorRTUpsampler

    trt = types.SimpleNamespace(float32="f32", float16="f16")
    engine = types.SimpleNamespace(create_execution_context=lambda: "ctx",
                                   get_tensor_dtype=lambda name: "f32")

    class Tk(FakeToolkit):
        def deserialize(self, blob):
            return engine

    tk = Tk()
    tk.trt = trt
    onnx_path = _tiny_onnx(tmp_path / "m.onnx", "fp32")
    with pytest.raises(ModelError, match="upsamples x4, but ratio 2"):
        TensorRTUpsampler(onnx_path, 2, toolkit=tk, cache_dir=tmp_path / "c")
    up = TensorRTUpsampler(onnx_path, None, max_patches=3, toolkit=tk, cache_dir=tmp_path / "c")
    assert up.cached.built and up.in_dtype == up.out_dtype == torch.float32
    up.device = "cpu"  # the engine itself needs CUDA; its call is faked below
    sizes = []
    up._run = lambda x: sizes.append(len(x)) or x.repeat_interleave(4, dim=1)
    x = np.random.default_rng(0).normal(size=(7, 64, 3)).astype(np.float32)
    out = up.upsample_patches(x)
    assert sizes == [3, 3, 1] and out.shape == (7, 256, 3)
    np.testing.assert_array_equal(out[:, 4:8], np.repeat(x[:, 1:2], 4, axis=1))
    assert up.upsample_patches(np.zeros((0, 64, 3), np.float32)).shape == (0, 256, 3)
    with pytest.raises(ValueError, match=r"\(B, 64, 3\)"):
        up.upsample_patches(np.zeros((2, 32, 3), np.float32))
    with pytest.raises(ModelError, match="64-point patches"):
        up.upsample(np.zeros((10, 3), np.float32))
