"""TensorRT backend: engine build, engine cache, and the upsampler that runs an engine.

Written against the TensorRT 10 and 11 Python APIs (name-based I/O tensors,
``execute_async_v3``). The engine is built from the generator's ONNX export with one
optimization profile for input ``xyz`` of shape (B, K, 3), B in [1, max_patches]:

- precision ``fp16``: TensorRT 10 sets ``BuilderFlag.FP16`` on an fp32 (or fp16) ONNX;
  TensorRT 11 has no precision flags (networks are strongly typed), so the FP16 engine is
  built from an FP16 ONNX (``sspu export --fp16``, made on the fly from a .pt);
- engines are cached in a writable folder (``tensorrt.cache_dir``, default
  ``$SSPU_ENGINE_CACHE`` or ``~/.cache/sspu_ros/engines``) under a key of sha256(ONNX
  bytes) + TensorRT version + GPU name + precision + profile: a changed ingredient gives a
  new key (a new build); a cached engine that fails to deserialize is rebuilt once;
- a build takes minutes: ``sspu build-engine`` builds ahead of time (before driving).

Inference feeds torch CUDA tensors' device pointers to the execution context. The TensorRT
runtime cannot be installed on the project's CPU-only dev/CI machines: there, only the
cache logic is tested (with a fake toolkit); the engine tests need ``import tensorrt`` and
a GPU and are skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ModelError
from .model_files import ModelFiles, cache_root, exported_onnx, onnx_precision
from .patch_inference import _per_point, _with_sources

PRECISIONS = ("fp32", "fp16")
INPUT, OUTPUT = "xyz", "dense"
log = logging.getLogger("sspu_ros.tensorrt")

Profile = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


def make_profile(max_patches: int, patch_size: int) -> Profile:
    """(min, opt, max) shapes of ``xyz``: B in [1, max_patches], opt at half of max."""
    if max_patches < 1:
        raise ModelError(f"tensorrt.max_patches must be >= 1, got {max_patches}")
    opt = max(1, (max_patches + 1) // 2)
    return ((1, patch_size, 3), (opt, patch_size, 3), (max_patches, patch_size, 3))


def engine_key(onnx_bytes: bytes, trt_version: str, gpu_name: str, precision: str,
               profile: Profile) -> str:
    """sha256 hex of the ingredients that make an engine: sha256 of the ONNX bytes, the
    TensorRT version, the GPU name, the precision and the profile (min/opt/max)."""
    return _digest(key_ingredients(onnx_bytes, trt_version, gpu_name, precision, profile))


def _digest(ingredients: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()


def key_ingredients(onnx_bytes: bytes, trt_version: str, gpu_name: str, precision: str,
                    profile: Profile) -> dict[str, Any]:
    if precision not in PRECISIONS:
        raise ModelError(f"tensorrt.precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    return {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "tensorrt": str(trt_version), "gpu": str(gpu_name), "precision": precision,
            "profile": {"min": list(profile[0]), "opt": list(profile[1]),
                        "max": list(profile[2])}}


class Toolkit(Protocol):
    """What the cache needs from TensorRT (a fake one in the unit tests)."""

    version: str

    def gpu_name(self) -> str: ...

    def build(self, onnx_bytes: bytes, precision: str, profile: Profile) -> bytes: ...

    def deserialize(self, blob: bytes) -> Any: ...


class TensorRTToolkit:
    """The real TensorRT 10 / 11 Python API (``import tensorrt``)."""

    def __init__(self) -> None:
        try:
            import tensorrt as trt
        except Exception as e:  # noqa: BLE001 - missing bindings or runtime libraries
            raise ModelError(f"TensorRT is not usable here ({e}); install it where a CUDA GPU "
                             "is (pip install tensorrt-cu12) or use backend auto / "
                             "onnxruntime / torch") from None
        if not torch.cuda.is_available():
            raise ModelError("the TensorRT backend needs a CUDA GPU visible to torch "
                             f"(torch {torch.__version__} sees none)")
        self.trt = trt
        self.version = trt.__version__
        self.major = int(self.version.split(".")[0])
        self.logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = None

    def gpu_name(self) -> str:
        return torch.cuda.get_device_name(torch.cuda.current_device())

    def build(self, onnx_bytes: bytes, precision: str, profile: Profile) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if self.major < 10:  # TensorRT 8/9: explicit batch must be asked for
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"TensorRT cannot parse the ONNX: {errors}")
        config = builder.create_builder_config()
        if precision == "fp16" and self.major < 11:
            config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 11: from the FP16 ONNX's types
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would miss 1e-4 parity
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(INPUT, *profile)
        config.add_optimization_profile(opt_profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise ModelError("TensorRT failed to build the engine (see its log above)")
        return bytes(blob)

    def deserialize(self, blob: bytes):
        if self._runtime is None:
            self._runtime = self.trt.Runtime(self.logger)
        return self._runtime.deserialize_cuda_engine(blob)


@dataclass
class CachedEngine:
    engine: Any
    path: Path
    key: str
    built: bool


class EngineCache:
    """Engines in ``folder`` named by their key; see the module docstring."""

    def __init__(self, folder: str | Path | None, toolkit: Toolkit) -> None:
        self.folder = cache_root(folder)
        self.toolkit = toolkit

    def path_for(self, key: str) -> Path:
        return self.folder / f"sspu-{key[:32]}.engine"

    def load_or_build(self, onnx_bytes: bytes, precision: str, profile: Profile,
                      *, force: bool = False) -> CachedEngine:
        """The cached engine for these ingredients, else a fresh build (stored atomically,
        with a ``.json`` of its ingredients beside it). A cached engine that does not
        deserialize is rebuilt (once); ``force`` rebuilds anyway."""
        tk = self.toolkit
        ingredients = key_ingredients(onnx_bytes, tk.version, tk.gpu_name(), precision,
                                      profile)
        key = _digest(ingredients)
        path = self.path_for(key)
        if path.is_file() and not force:
            engine, why = self._deserialize(path.read_bytes())
            if engine is not None:
                log.info("TensorRT engine from cache: %s", path)
                return CachedEngine(engine, path, key, built=False)
            log.warning("cached TensorRT engine %s does not load (%s); rebuilding it", path, why)
        log.warning("building a TensorRT engine (%s, B in [%d, %d]) - this takes minutes; it "
                    "is cached in %s for later starts (sspu build-engine builds ahead of time)",
                    precision, profile[0][0], profile[2][0], self.folder)
        blob = tk.build(onnx_bytes, precision, profile)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({"key": key, **ingredients}, indent=2))
        engine, why = self._deserialize(blob)
        if engine is None:
            raise ModelError(f"the TensorRT engine just built ({path}) does not load: {why}")
        return CachedEngine(engine, path, key, built=True)

    def _deserialize(self, blob: bytes) -> tuple[Any, str]:
        try:
            engine = self.toolkit.deserialize(blob)
        except Exception as e:  # noqa: BLE001 - TensorRT raises its own types
            return None, str(e)
        return engine, "" if engine is not None else "deserialize_cuda_engine returned None"


def engine_onnx(files: ModelFiles, precision: str, cache_dir: str | Path | None,
                trt_major: int | None = None) -> Path:
    """The ONNX an engine of ``precision`` is built from. TensorRT 11 FP16 needs an FP16
    ONNX: the model's own .onnx when it is one, else exported from the .pt; otherwise the
    model's .onnx, or an fp32 export of its .pt."""
    if trt_major is None:
        import tensorrt as trt

        trt_major = int(trt.__version__.split(".")[0])
    need_fp16 = precision == "fp16" and trt_major >= 11
    if files.onnx is not None and (not need_fp16 or onnx_precision(files.onnx) == "fp16"):
        return files.onnx
    if files.pt is not None:
        return exported_onnx(files.pt, cache_dir, "fp16" if need_fp16 else "fp32")
    raise ModelError(f"TensorRT {trt_major} builds FP16 engines from an FP16 ONNX, and "
                     f"{files.onnx} is fp32: export one with sspu export --model CKPT --onnx "
                     "OUT --fp16, or give the .pt checkpoint")


class TensorRTUpsampler:
    """An sspu ONNX export compiled to a (cached) TensorRT engine, run on CUDA.

    ``upsample_patches`` takes (B, K, 3) float32 numpy patches for any B >= 0 (batches
    larger than ``max_patches`` run in chunks) and returns (B, r·K, 3) float32.
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, onnx_path: Path, ratio: int | None = None, *, precision: str = "fp32",
                 max_patches: int = 64, cache_dir: str | Path | None = None,
                 toolkit: Toolkit | None = None) -> None:
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        if "sspu.ratio" not in meta:
            raise ModelError(f"{onnx_path}: not an sspu export; export with: sspu export "
                             "--model CKPT --onnx OUT")
        self.ratio = int(meta["sspu.ratio"])
        self.patch_size = int(meta["sspu.patch_size"])
        self.copies = int(meta.get("sspu.candidates", self.ratio))  # over-complete: > ratio
        if ratio is not None and ratio != self.ratio:
            raise ModelError(f"model {onnx_path} upsamples x{self.ratio}, but ratio {ratio} "
                             f"was asked for; use --ratio {self.ratio}")
        self.name = str(onnx_path)
        self.precision = precision
        self.max_patches = int(max_patches)
        self.toolkit = toolkit or TensorRTToolkit()
        cache = EngineCache(cache_dir, self.toolkit)
        self.cached = cache.load_or_build(Path(onnx_path).read_bytes(), precision,
                                          make_profile(self.max_patches, self.patch_size))
        self.engine = self.cached.engine
        self.context = self.engine.create_execution_context()
        self.in_dtype = self._torch_dtype(INPUT)
        self.out_dtype = self._torch_dtype(OUTPUT)
        self.stream = None  # a CUDA stream, made on first use

    def _torch_dtype(self, tensor: str) -> torch.dtype:
        trt = self.toolkit.trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        return dtypes[self.engine.get_tensor_dtype(tensor)]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(b <= max_patches, K, 3) CUDA tensor -> (b, r·K, 3) CUDA tensor."""
        x = x.to(self.in_dtype).contiguous()
        out = torch.empty((x.shape[0], self.copies * self.patch_size, 3), dtype=self.out_dtype,
                          device=x.device)
        self.context.set_input_shape(INPUT, tuple(x.shape))
        self.context.set_tensor_address(INPUT, x.data_ptr())
        self.context.set_tensor_address(OUTPUT, out.data_ptr())
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        self.stream.synchronize()
        return out

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        pts = np.ascontiguousarray(patches, dtype=np.float32)
        if pts.ndim != 3 or pts.shape[1:] != (self.patch_size, 3):
            raise ValueError(f"{self.name} takes patches of shape (B, {self.patch_size}, 3), "
                             f"got {pts.shape}")
        if pts.shape[0] == 0:
            return np.zeros((0, self.ratio * self.patch_size, 3), dtype=np.float32)
        raw = self._raw(torch.from_numpy(pts))
        return _per_point(torch.from_numpy(pts), raw, self.ratio).numpy()

    def _raw(self, pts: torch.Tensor) -> torch.Tensor:
        """(B, K, 3) -> the engine's (B, copies*K, 3) output, float32 on the CPU."""
        x = pts.to(self.device)
        outs = [self._run(x[i:i + self.max_patches])
                for i in range(0, x.shape[0], self.max_patches)]
        return torch.cat(outs).float().cpu()

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        from .patch_inference import upsample_with_patches

        if xyz.shape[0] < self.patch_size:
            raise ModelError(f"{self.name} was exported for {self.patch_size}-point patches; "
                             f"the cloud has {xyz.shape[0]} points (use the .pt checkpoint "
                             "with backend torch for clouds smaller than a patch)")
        return upsample_with_patches(
            xyz, self._raw, self.ratio, candidates=self.copies,
            patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _with_sources(self, xyz, self._raw)


# --------------------------------------------------------------------------- CLI
