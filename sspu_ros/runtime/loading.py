"""Backends behind the one :class:`~sspu_ros.runtime.upsampler.Upsampler` interface.

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
                          (:mod:`sspu_ros.runtime.tensorrt_backend`)                    (exported)
``auto``                  the first that works here, in the order below
========================  ===================================================  ============

``auto``: TensorRT (``import tensorrt`` and a CUDA GPU) > ONNX Runtime CUDA (an .onnx) >
PyTorch CUDA (a .pt) > ONNX Runtime CPU (an .onnx) > PyTorch CPU (a .pt). ``auto`` exports
a .pt to ONNX on the fly only for TensorRT; ask for ``onnxruntime`` explicitly (or ship
``NAME.onnx`` beside ``NAME.pt``) to run a checkpoint with ONNX Runtime. On-the-fly exports
are checked for parity (``sspu export``) and cached under the cache folder's ``onnx/``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .midpoint import MidpointUpsampler
from .model_files import ModelFiles, exported_onnx, find_model_files
from .onnx_backend import OrtUpsampler
from .torch_backend import TorchUpsampler
from .upsampler import Upsampler

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
log = logging.getLogger("sspu_ros.runtime.loading")


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


# --------------------------------------------------------------------------- export cache


# --------------------------------------------------------------------------- beam models


def is_beam_model(files: ModelFiles) -> bool:
    """A LiDAR range-image interpolator (``sspu_lidar_x4``), not a patch generator."""
    from .range_interpolation import is_range_checkpoint, is_range_onnx

    return bool((files.onnx and is_range_onnx(files.onnx))
                or (files.pt and is_range_checkpoint(files.pt)))


def _load_beam_model(files: ModelFiles, ratio: int | None, backend: str, avail: Availability,
                     *, device: str, providers, threads: int):
    """A range-image beam interpolator run by ONNX Runtime or PyTorch.

    ``auto``: ONNX Runtime (CUDA provider first where present) when the .onnx is shipped,
    else PyTorch (CUDA when available). TensorRT: the export is TensorRT-friendly (fixed
    slices, 1x1 convolutions, width a dynamic axis), but this backend builds engines for
    the patch protocol only, so a beam model asked to run on ``tensorrt`` runs on ONNX
    Runtime's CUDA provider instead (logged)."""
    from .range_interpolation import LearnedBeamInterpolator, OrtBeamInterpolator

    check_backend_name(backend)
    if backend == "tensorrt":
        log.warning("model %s is a beam interpolator: the tensorrt backend builds patch "
                    "engines only; running it with ONNX Runtime (CUDA provider if present)",
                    files.name)
        backend = "onnxruntime"
    use_ort = files.onnx is not None and avail.onnxruntime and backend in ("auto",
                                                                           "onnxruntime")
    if backend == "onnxruntime" and not use_ort:
        raise ModelError(f"backend 'onnxruntime' for {files.name} needs onnxruntime and the "
                         ".onnx export (pip install onnxruntime; sspu_lidar_x4 ships one)")
    if backend == "torch" and files.pt is None:
        raise ModelError(f"backend 'torch' runs .pt checkpoints; model '{files.name}' is "
                         "ONNX only: use backend onnxruntime")
    if use_ort:
        up = OrtBeamInterpolator(files.onnx, ratio=ratio, name=files.name,
                                 providers=providers or ("CUDAExecutionProvider",
                                                         "CPUExecutionProvider"),
                                 threads=threads)
    else:
        where = ("cuda" if avail.torch_cuda else "cpu") if device == "auto" else device
        up = LearnedBeamInterpolator.from_checkpoint(files.pt, ratio=ratio, name=files.name,
                                                     device=where)
    log.info("model %s: beam interpolator, backend %s (%s, asked: %s)", files.name,
             up.backend, up.device, backend)
    return up


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
    if is_beam_model(files):
        return _load_beam_model(files, ratio, backend, avail, device=device,
                                providers=providers, threads=threads)
    chosen, where = choose_backend(backend, files, avail)
    if chosen == "torch":
        up = TorchUpsampler(files.pt, ratio, device=where if device == "auto" else device,
                            compile=compile)
    elif chosen == "onnxruntime":
        onnx = files.onnx or exported_onnx(files.pt, cache_dir)
        up = OrtUpsampler(onnx, ratio, providers=providers, threads=threads)
        if files.pt is not None:  # clouds smaller than one exported patch: PyTorch, on the CPU
            pt = files.pt
            up.small_clouds = functools.cache(lambda: TorchUpsampler(pt, ratio, device="cpu"))
        up.name = files.name if files.onnx else f"{files.name} (as {onnx})"
    else:
        from .tensorrt_backend import TensorRTUpsampler, engine_onnx

        onnx = engine_onnx(files, precision, cache_dir)
        up = TensorRTUpsampler(onnx, ratio, precision=precision, max_patches=max_patches,
                               cache_dir=cache_dir)
    log.info("model %s: backend %s (%s, asked: %s)", files.name, up.backend,
             getattr(up, "device", where), backend)
    return up


def load_upsampler(model: str, ratio: int | None, backend: str | None = None, *,
                   config=None, **options) -> Upsampler:
    """The upsampler named ``model`` (a built-in name, a shipped model name or a path), run
    by ``backend``: "auto" (default), "torch", "onnxruntime" or "tensorrt".

    ``ratio`` None takes a trained model's own ratio (built-ins need a ratio). ``config``: a
    flat parameter mapping (the node's or CLI's) supplying ``backend``,
    ``lidar.fallback_model`` (a beam model's patch fallback, default midpoint) and the backend
    options (:func:`sspu_ros.runtime.loading.backend_options`); keyword ``options`` override it
    (device, compile, providers, threads, cache_dir, precision, max_patches). The result's
    ``backend`` attribute says which backend runs it; callers never branch on it."""
    if config is not None:
        options = {**backend_options(config), **options}
        backend = backend or config.get("backend")
    backend = backend or "auto"
    if model == "midpoint":
        check_backend_name(backend)
        return MidpointUpsampler(ratio or 4)
    up = load_model(model, ratio, backend, **options)
    if getattr(up, "kind", "patches") == "beams":
        fallback = (config or {}).get("lidar.fallback_model", "midpoint")
        if fallback != "none":
            if fallback == model:
                raise ModelError(f"lidar.fallback_model must be a patch model, not {model}")
            fb = load_upsampler(fallback, up.ratio, backend, config=config, **options)
            if getattr(fb, "kind", "patches") == "beams":
                raise ModelError(f"lidar.fallback_model {fallback} is a beam model; give a "
                                 "patch model (midpoint, sspu_x4) or 'none'")
            up.fallback = fb
    return up
