"""Backends behind the one :class:`~sspu_ros.upsampler.Upsampler` interface.

A model (a shipped name ``models/NAME.pt`` / ``models/NAME.onnx``, or a path) plus a
backend choose the implementation; every one takes ``upsample_patches((B, K, 3) float32)``
and returns ``(B, r·K, 3)`` float32 in the generator's copy-major order, and carries a
``backend`` attribute ("torch", "onnxruntime", "tensorrt"). Callers never branch on it.

========================  ===================================================  ============
backend                   runs                                                 model files
========================  ===================================================  ============
``torch``                 PyTorch eager on ``device`` (auto|cpu|cuda);         .pt
                          optional ``torch.compile`` on a GPU
``onnxruntime``           ONNX Runtime with ``providers`` (unavailable ones    .onnx, or .pt
                          dropped) and ``threads`` intra-op threads            (exported)
``tensorrt``              a TensorRT engine from the engine cache              .onnx, or .pt
                          (:mod:`sspu_ros.tensorrt_engine`)                    (exported)
``auto``                  the first that works here, in the order below
========================  ===================================================  ============

``auto``: TensorRT (``import tensorrt`` and a CUDA GPU) > ONNX Runtime CUDA (an .onnx) >
PyTorch CUDA (a .pt) > ONNX Runtime CPU (an .onnx) > PyTorch CPU (a .pt). ``auto`` exports
a .pt to ONNX on the fly only for TensorRT; ask for ``onnxruntime`` explicitly (or ship
``NAME.onnx`` beside ``NAME.pt``) to run a checkpoint with ONNX Runtime. On-the-fly exports
are checked for parity (``sspu export``) and cached under the cache folder's ``onnx/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .upsampler import (
    GeneratorUpsampler,
    ModelError,
    OnnxUpsampler,
    _check_patches,
    _per_point,
    _with_sources,
)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
log = logging.getLogger("sspu_ros.backends")


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def backend_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options of :func:`load_model` from a flat parameter set (the node's/CLI's):
    ``torch.device``, ``torch.compile``, ``onnxruntime.providers``, ``onnxruntime.threads``,
    ``tensorrt.cache_dir``, ``tensorrt.precision``, ``tensorrt.max_patches``. Missing
    parameters are left to the defaults."""
    names = {"torch.device": "device", "torch.compile": "compile",
             "onnxruntime.providers": "providers", "onnxruntime.threads": "threads",
             "tensorrt.cache_dir": "cache_dir", "tensorrt.precision": "precision",
             "tensorrt.max_patches": "max_patches"}
    return {opt: config[param] for param, opt in names.items() if param in config}


# --------------------------------------------------------------------------- what is here


@dataclass(frozen=True)
class Availability:
    """What this process can run: CUDA for torch, ONNX Runtime's providers (empty when
    onnxruntime is not importable), TensorRT (importable, and a CUDA GPU for torch)."""

    torch_cuda: bool
    ort_providers: tuple[str, ...]
    tensorrt: bool

    @property
    def onnxruntime(self) -> bool:
        return bool(self.ort_providers)

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers


def probe_availability() -> Availability:
    cuda = bool(torch.cuda.is_available())
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError:
        providers = ()
    try:
        import tensorrt  # noqa: F401

        trt = cuda
    except Exception:  # noqa: BLE001 - missing bindings or runtime libraries
        trt = False
    return Availability(cuda, providers, trt)


@dataclass(frozen=True)
class ModelFiles:
    """The files a model name or path stands for (either may be None)."""

    name: str
    pt: Path | None
    onnx: Path | None


def find_model_files(model: str) -> ModelFiles:
    """A path to a .pt or .onnx file, or a shipped name (``models/NAME.pt`` and/or
    ``models/NAME.onnx``). Raises ModelError naming what is available."""
    from .upsampler import available_models, models_dir

    path = Path(model)
    if path.is_file() and path.suffix in (".pt", ".onnx"):
        return ModelFiles(str(path), path if path.suffix == ".pt" else None,
                          path if path.suffix == ".onnx" else None)
    d = models_dir()
    if not path.exists() and d is not None and path.suffix == "":
        pt, onnx = d / f"{model}.pt", d / f"{model}.onnx"
        if pt.is_file() or onnx.is_file():
            return ModelFiles(model, pt if pt.is_file() else None,
                              onnx if onnx.is_file() else None)
    raise ModelError(
        f"model '{model}' not found or not loadable; available: {', '.join(available_models())}"
    )


def choose_backend(requested: str, files: ModelFiles, avail: Availability) -> tuple[str, str]:
    """(backend, device) for ``requested`` ("auto" or a backend name); device is "cuda" or
    "cpu". Raises ModelError saying why an explicit choice cannot run here."""
    check_backend_name(requested)
    if requested == "auto":
        order = [("tensorrt", "cuda", avail.tensorrt and (files.onnx or files.pt)),
                 ("onnxruntime", "cuda", avail.ort_cuda and files.onnx),
                 ("torch", "cuda", avail.torch_cuda and files.pt),
                 ("onnxruntime", "cpu", avail.onnxruntime and files.onnx),
                 ("torch", "cpu", files.pt)]
        for backend, device, ok in order:
            if ok:
                return backend, device
        raise ModelError(f"model '{files.name}' is an ONNX file but onnxruntime is not "
                         "installed: pip install onnxruntime (or give the .pt checkpoint)")
    if requested == "torch":
        if files.pt is None:
            raise ModelError(f"backend 'torch' runs .pt checkpoints; model '{files.name}' is "
                             "ONNX only: use backend onnxruntime or tensorrt")
        return "torch", "cuda" if avail.torch_cuda else "cpu"
    if requested == "onnxruntime":
        if not avail.onnxruntime:
            raise ModelError("backend 'onnxruntime' needs the onnxruntime package: "
                             "pip install onnxruntime (or onnxruntime-gpu for CUDA)")
        return "onnxruntime", "cuda" if avail.ort_cuda else "cpu"
    if not avail.tensorrt:
        raise ModelError("backend 'tensorrt' needs `import tensorrt` to work and a CUDA GPU "
                         "for torch (pip install tensorrt-cu12 and a CUDA build of torch); "
                         "use backend auto to fall back to ONNX Runtime / PyTorch")
    return "tensorrt", "cuda"


# --------------------------------------------------------------------------- backends


def _empty_output(patches: np.ndarray, ratio: int) -> np.ndarray:
    return np.zeros((0, ratio * patches.shape[1], 3), dtype=np.float32)


class TorchUpsampler(GeneratorUpsampler):
    """A .pt checkpoint run by PyTorch on ``device`` ("auto": CUDA when available).

    ``compile=True`` wraps the generator in ``torch.compile`` on a GPU (ignored on CPU,
    where it does not pay off for this model). Patches of any size K >= ratio are taken.
    """

    def __init__(self, path: Path, ratio: int | None = None, patch_size: int | None = None,
                 device: str = "auto", compile: bool = False) -> None:
        super().__init__(path, ratio, patch_size or 256)
        if patch_size is None:
            self.patch_size = self.trained_patch_size
        if device not in DEVICES:
            raise ModelError(f"torch.device must be one of {', '.join(DEVICES)}, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelError("torch.device 'cuda' asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use 'auto' or 'cpu'")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.model = self.model.to(self.device)
        self._forward = self.model
        if compile and use_cuda:
            self._forward = torch.compile(self.model, dynamic=True)
        elif compile:
            log.info("torch.compile is used on a GPU only; running eager on the CPU")

    def _run(self, pts: torch.Tensor) -> torch.Tensor:
        """(B, K, 3) -> (B, r·K, 3) float32 on the CPU."""
        with torch.inference_mode():
            return self._forward(pts.to(self.device)).float().cpu()

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        pts = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        _check_patches(pts, self.ratio)
        if pts.shape[0] == 0:
            return _empty_output(pts.numpy(), self.ratio)
        return _per_point(pts, self._run(pts), self.ratio).numpy()

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        from .inference import upsample_with_patches

        return upsample_with_patches(xyz, self._run, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _with_sources(self, xyz, self._run)


class OrtUpsampler(OnnxUpsampler):
    """An .onnx export run by ONNX Runtime.

    ``providers``: in order of preference; those this onnxruntime build lacks are dropped
    (logged). ``threads``: intra-op threads, 0 = ONNX Runtime's default.
    """

    def __init__(self, path: Path, ratio: int | None = None,
                 providers: list[str] | tuple[str, ...] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        wanted = list(providers or DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        usable = [p for p in wanted if p in available]
        if not usable:
            raise ModelError(f"none of the ONNX Runtime providers {wanted} is available in "
                             f"this onnxruntime build (available: {', '.join(available)}); "
                             "set onnxruntime.providers")
        if len(usable) < len(wanted):
            log.info("ONNX Runtime providers not available here, skipped: %s",
                     ", ".join(p for p in wanted if p not in usable))
        if threads < 0:
            raise ModelError(f"onnxruntime.threads must be >= 0 (0 = default), got {threads}")
        opts = ort.SessionOptions()
        # the CPU arena keeps the largest batch's buffers and grows with every new batch
        # size (patches per scan vary): measured +48 % RSS over 30 KITTI scans with it
        opts.enable_cpu_mem_arena = False
        if threads:
            opts.intra_op_num_threads = int(threads)
        super().__init__(path, ratio, providers=usable, session_options=opts)
        self.providers = list(self.session.get_providers())
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        pts = np.asarray(patches, dtype=np.float32)
        if pts.ndim == 3 and pts.shape[0] == 0 and pts.shape[1:] == (self.patch_size, 3):
            return _empty_output(pts, self.ratio)
        return super().upsample_patches(pts)


# --------------------------------------------------------------------------- export cache


def default_cache_dir() -> Path:
    """$SSPU_ENGINE_CACHE, else ~/.cache/sspu_ros/engines."""
    env = os.environ.get("SSPU_ENGINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sspu_ros" / "engines"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The writable cache folder (created); ``cache_dir`` "" or None = the default."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise ModelError(f"cache folder {root} is not usable ({e}); set tensorrt.cache_dir "
                         "(--cache-dir) or $SSPU_ENGINE_CACHE to a writable folder") from None
    return root


def exported_onnx(pt: Path, cache_dir: str | Path | None, precision: str = "fp32") -> Path:
    """The ONNX export of checkpoint ``pt`` in ``precision``, made once (parity-checked
    by :func:`sspu_ros.export.export_checkpoint`) and cached under ``<cache>/onnx/`` by the
    checkpoint's sha256."""
    from .export import export_checkpoint

    sha = hashlib.sha256(Path(pt).read_bytes()).hexdigest()[:24]
    folder = cache_root(cache_dir) / "onnx"
    folder.mkdir(exist_ok=True)
    out = folder / f"{sha}-{precision}.onnx"
    if not out.is_file():
        log.info("exporting %s to ONNX (%s) once, cached as %s", pt, precision, out)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}.onnx")
        try:
            export_checkpoint(pt, tmp, fp16=precision == "fp16")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def onnx_precision(path: Path) -> str:
    """``sspu.precision`` of an sspu export ("fp32" for exports older than the key)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get("sspu.precision", "fp32")


# --------------------------------------------------------------------------- entry point


def load_model(model: str, ratio: int | None, backend: str = "auto", *,
               device: str = "auto", compile: bool = False,
               providers: list[str] | tuple[str, ...] | None = None, threads: int = 0,
               cache_dir: str | Path | None = None, precision: str = "fp32",
               max_patches: int = 64, availability: Availability | None = None):
    """A trained model (name or path) as an Upsampler run by ``backend`` (see the module
    docstring). The chosen backend is logged and in the result's ``backend``."""
    files = find_model_files(model)
    avail = availability or probe_availability()
    chosen, where = choose_backend(backend, files, avail)
    if chosen == "torch":
        up = TorchUpsampler(files.pt, ratio, device=where if device == "auto" else device,
                            compile=compile)
    elif chosen == "onnxruntime":
        onnx = files.onnx or exported_onnx(files.pt, cache_dir)
        up = OrtUpsampler(onnx, ratio, providers=providers, threads=threads)
        up.name = files.name if files.onnx else f"{files.name} (as {onnx})"
    else:
        from .tensorrt_engine import TensorRTUpsampler, engine_onnx

        onnx = engine_onnx(files, precision, cache_dir)
        up = TensorRTUpsampler(onnx, ratio, precision=precision, max_patches=max_patches,
                               cache_dir=cache_dir)
    log.info("model %s: backend %s (%s, asked: %s)", files.name, up.backend,
             getattr(up, "device", where), backend)
    return up
