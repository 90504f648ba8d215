"""Where model files are: shipped names (``models/NAME.pt`` / ``.onnx``), paths, and the
cache of on-the-fly ONNX exports (and TensorRT engines, :mod:`.tensorrt_backend`)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

log = logging.getLogger("sspu_ros.runtime")


BUILTIN_MODELS = ("midpoint",)


def models_dir() -> Path | None:
    """``models/`` of the source checkout or ``share/sspu_ros/models`` of an install."""
    from ..config import find_config_dir

    d = find_config_dir().parent / "models"
    return d if d.is_dir() else None


def available_models() -> list[str]:
    """Built-in model names plus the model files shipped in ``models/``."""
    d = models_dir()
    shipped = sorted({p.stem for ext in ("pt", "onnx") for p in d.glob(f"*.{ext}")}) if d else []
    return list(BUILTIN_MODELS) + shipped


@dataclass(frozen=True)
class ModelFiles:
    """The files a model name or path stands for (either may be None)."""

    name: str
    pt: Path | None
    onnx: Path | None


def find_model_files(model: str) -> ModelFiles:
    """A path to a .pt or .onnx file, or a shipped name (``models/NAME.pt`` and/or
    ``models/NAME.onnx``). Raises ModelError naming what is available."""
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
    by :func:`sspu_ros.runtime.export.export_checkpoint`) and cached under ``<cache>/onnx/`` by the
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
