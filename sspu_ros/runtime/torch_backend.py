"""The PyTorch backend: a ``.pt`` generator checkpoint run eagerly (optionally
``torch.compile`` on a GPU) with the patch protocol."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .patch_inference import _per_point, _with_sources
from .upsampler import _check_patches, _empty_output

DEVICES = ("auto", "cpu", "cuda")
log = logging.getLogger("sspu_ros.runtime")


class GeneratorUpsampler:
    """A trained SSPU-Net generator (PyTorch checkpoint) run with the patch protocol."""

    backend = "torch"

    def __init__(self, path: Path, ratio: int | None = None, patch_size: int = 256) -> None:
        from ..model.checkpoint import load_generator

        try:
            self.model, ckpt = load_generator(path)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise ModelError(f"cannot load model {path}: {e}") from None
        self.name = str(path)
        self.ratio = int(ckpt["generator"]["ratio"])
        if ratio is not None and ratio != self.ratio:
            raise ModelError(f"model {path} upsamples x{self.ratio}, but ratio {ratio} was "
                             f"asked for; use --ratio {self.ratio} or a model trained for it")
        self.patch_size = patch_size
        self.trained_patch_size = int(ckpt.get("config", {}).get("data.patch_size", patch_size))
        self.copies = int(getattr(self.model, "copies", self.ratio))

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        import torch

        pts = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        _check_patches(pts, self.ratio)
        with torch.no_grad():
            return _per_point(pts, self.model(pts), self.ratio).numpy()

    def _check_cloud(self, xyz: np.ndarray) -> None:
        """A ModelError for a cloud smaller than the generator's neighbourhoods (its kNN
        graph needs ``min_points``); callers may fall back to ``midpoint`` on it."""
        need = self.model.cfg.min_points()
        if len(xyz) < need:
            raise ModelError(f"{self.name} needs clouds of at least {need} points (its "
                             f"neighbourhoods), got {len(xyz)}; use --model midpoint for "
                             "clouds this small")

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        from .patch_inference import upsample_with_patches

        self._check_cloud(xyz)
        return upsample_with_patches(xyz, self.model, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_cloud(xyz)
        return _with_sources(self, xyz, self.model)


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
        from .patch_inference import upsample_with_patches

        self._check_cloud(xyz)
        return upsample_with_patches(xyz, self._run, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_cloud(xyz)
        return _with_sources(self, xyz, self._run)
