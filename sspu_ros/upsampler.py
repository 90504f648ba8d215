"""The one entry point to an upsampler, whatever is behind it.

Callers (CLI, node, benchmarks) get an :class:`Upsampler` from :func:`load_upsampler` and
never branch on what it is. Built in: ``midpoint`` (classical baseline). Trained SSPU-Net
generators and their backends (PyTorch, ONNX Runtime, TensorRT) plug in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .baselines import midpoint_upsample

BUILTIN_MODELS = ("midpoint",)


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says which and what exists."""


class Upsampler(Protocol):
    """Densifies a point set by an integer ratio."""

    name: str
    ratio: int

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) float32 -> (ratio*N, 3) float32; the first N rows are the input points."""
        ...


class MidpointUpsampler:
    """Each point plus the midpoints to its ratio-1 nearest neighbours."""

    def __init__(self, ratio: int) -> None:
        self.name = "midpoint"
        self.ratio = int(ratio)

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        return midpoint_upsample(xyz, self.ratio)


def models_dir() -> Path | None:
    """``models/`` of the source checkout or ``share/sspu_ros/models`` of an install."""
    from .config import find_config_dir

    d = find_config_dir().parent / "models"
    return d if d.is_dir() else None


def available_models() -> list[str]:
    """Built-in model names plus the model files shipped in ``models/``."""
    d = models_dir()
    shipped = sorted({p.stem for ext in ("pt", "onnx") for p in d.glob(f"*.{ext}")}) if d else []
    return list(BUILTIN_MODELS) + shipped


def load_upsampler(model: str, ratio: int) -> Upsampler:
    """The upsampler named ``model`` (a built-in name, a shipped model name or a path)."""
    if model == "midpoint":
        return MidpointUpsampler(ratio)
    raise ModelError(
        f"model '{model}' not found or not loadable; available: {', '.join(available_models())}"
    )
