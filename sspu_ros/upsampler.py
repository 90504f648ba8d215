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
    """Densifies a point set by an integer ratio.

    ``upsample_patches`` is the batched core every backend implements (one call per scan
    in the densifier); ``upsample`` runs the standard patch protocol over a whole cloud.
    """

    name: str
    ratio: int
    patch_size: int

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        """(B, P, 3) float32 unit-sphere patches -> (B, ratio*P, 3) float32; row
        ``i*ratio + j`` of a patch is copy j of its point i (copy-major per point).
        Over-complete generators (``copies`` > ratio candidates per point) keep this layout:
        copy 0 is the point, copies 1..r-1 are chosen among its own candidates by
        :func:`~sspu_ros.candidate_selection.select_per_point`; ``upsample`` instead selects
        over the whole cloud by farthest point sampling (see :mod:`sspu_ros.inference`)."""
        ...

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) float32 -> (ratio*N, 3) float32; the first N rows are the input points."""
        ...

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`upsample`, plus ((ratio-1)*N, k) int64: for every generated point the
        input points it was made from (used to give it their fields, e.g. intensity)."""
        ...


def _copy_sources(n: int, ratio: int) -> np.ndarray:
    """Sources of a generator's output with the owner merge: the r-1 generated copies of
    point i (consecutive rows) come from point i. ((r-1)*N, 1) int64."""
    return np.repeat(np.arange(n, dtype=np.int64), ratio - 1)[:, None]


class MidpointUpsampler:
    """Each point plus the midpoints to its ratio-1 nearest neighbours."""

    backend = "builtin"

    def __init__(self, ratio: int, patch_size: int = 256) -> None:
        self.name = "midpoint"
        self.ratio = int(ratio)
        self.patch_size = int(patch_size)

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        """Copy 0 of every point is the point; copies 1..r-1 the midpoints to its r-1
        nearest neighbours within the patch (vectorized over the batch)."""
        import torch

        from .geometry import knn

        pts = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        _check_patches(pts, self.ratio)
        b, p, _ = pts.shape
        _, idx = knn(pts, pts, self.ratio - 1, exclude_self=True)  # (B, P, r-1)
        nb = pts[torch.arange(b)[:, None, None], idx]  # (B, P, r-1, 3)
        copies = torch.cat([pts[:, :, None], 0.5 * (pts[:, :, None] + nb)], dim=2)
        return copies.reshape(b, p * self.ratio, 3).numpy()

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        return midpoint_upsample(xyz, self.ratio)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return midpoint_upsample(xyz, self.ratio, return_sources=True)


def _per_point(pts, out, ratio: int):
    """(B, P, 3) patches and the generator's (B, c·P, 3) output -> (B, r·P, 3) copy-major
    (c > r: :func:`~sspu_ros.candidate_selection.select_per_point`; else ``out``)."""
    if out.shape[1] == ratio * pts.shape[1]:
        return out
    from .candidate_selection import select_per_point

    return select_per_point(pts, out, ratio)


def _with_sources(upsampler, xyz: np.ndarray, patch_fn) -> tuple[np.ndarray, np.ndarray]:
    """upsample_with_sources of a generator backend whose raw patch function is
    ``patch_fn`` (copies per point: ``upsampler.copies``)."""
    from .inference import upsample_with_patches

    if upsampler.copies == upsampler.ratio:
        return upsampler.upsample(xyz), _copy_sources(len(xyz), upsampler.ratio)
    dense, parents = upsample_with_patches(
        xyz, patch_fn, upsampler.ratio, candidates=upsampler.copies,
        patch_size=upsampler.patch_size, keep_input=True, return_parents=True)
    return dense, parents[:, None]


def _check_patches(pts, ratio: int) -> None:
    if pts.dim() != 3 or pts.shape[-1] != 3:
        raise ValueError(f"expected patches of shape (B, P, 3), got {tuple(pts.shape)}")
    if pts.shape[1] < ratio:
        raise ValueError(f"patches need at least ratio={ratio} points, got {pts.shape[1]}")


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


class GeneratorUpsampler:
    """A trained SSPU-Net generator (PyTorch checkpoint) run with the patch protocol."""

    backend = "torch"

    def __init__(self, path: Path, ratio: int | None = None, patch_size: int = 256) -> None:
        from .training.trainer import load_generator

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
        """Over-complete generators: r copies per point by
        :func:`~sspu_ros.candidate_selection.select_per_point` (copy-major kept)."""
        import torch

        pts = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        _check_patches(pts, self.ratio)
        with torch.no_grad():
            return _per_point(pts, self.model(pts), self.ratio).numpy()

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        from .inference import upsample_with_patches

        return upsample_with_patches(xyz, self.model, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _with_sources(self, xyz, self.model)


class OnnxUpsampler:
    """An exported generator (``sspu export``) run by ONNX Runtime with the patch protocol."""

    backend = "onnxruntime"

    def __init__(self, path: Path, ratio: int | None = None,
                 providers: list[str] | None = None, session_options=None) -> None:
        try:
            import onnxruntime as ort

            self.session = ort.InferenceSession(
                str(path), sess_options=session_options,
                providers=providers or ["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map
            self.ratio = int(meta["sspu.ratio"])
            self.patch_size = int(meta["sspu.patch_size"])
            self.copies = int(meta.get("sspu.candidates", self.ratio))
        except KeyError as e:
            raise ModelError(f"{path}: not an sspu export (metadata {e} missing); export "
                             "with: sspu export --model CKPT --onnx OUT") from None
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelError(f"cannot load ONNX model {path}: {e}") from None
        if ratio is not None and ratio != self.ratio:
            raise ModelError(f"model {path} upsamples x{self.ratio}, but ratio {ratio} was "
                             f"asked for; use --ratio {self.ratio} or a model trained for it")
        self.name = str(path)

    def upsample_patches(self, patches: np.ndarray) -> np.ndarray:
        pts = np.ascontiguousarray(patches, dtype=np.float32)
        if pts.ndim != 3 or pts.shape[1:] != (self.patch_size, 3):
            raise ValueError(f"{self.name} takes patches of shape (B, {self.patch_size}, 3), "
                             f"got {pts.shape}")
        out = self.session.run(None, {"xyz": pts})[0]
        if self.copies == self.ratio:
            return out
        import torch

        return _per_point(torch.from_numpy(pts), torch.from_numpy(out), self.ratio).numpy()

    def _patches(self, patches):
        """(P, K, 3) tensor -> the session's raw (P, c·K, 3) output as a tensor."""
        import torch

        pts = np.ascontiguousarray(patches.numpy(), dtype=np.float32)
        if pts.ndim != 3 or pts.shape[1:] != (self.patch_size, 3):
            raise ValueError(f"{self.name} takes patches of shape (B, {self.patch_size}, 3), "
                             f"got {pts.shape}")
        return torch.from_numpy(self.session.run(None, {"xyz": pts})[0])

    def upsample(self, xyz: np.ndarray) -> np.ndarray:
        from .inference import upsample_with_patches

        if xyz.shape[0] < self.patch_size:
            raise ModelError(f"{self.name} was exported for {self.patch_size}-point patches; "
                             f"the cloud has {xyz.shape[0]} points (use the .pt checkpoint "
                             "for clouds smaller than a patch)")
        return upsample_with_patches(xyz, self._patches, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if xyz.shape[0] < self.patch_size:
            self.upsample(xyz)  # raises the ModelError that explains it
        return _with_sources(self, xyz, self._patches)


def load_upsampler(model: str, ratio: int | None, backend: str | None = None, *,
                   config=None, **options) -> Upsampler:
    """The upsampler named ``model`` (a built-in name, a shipped model name or a path), run
    by ``backend``: "auto" (default), "torch", "onnxruntime" or "tensorrt".

    ``ratio`` None takes a trained model's own ratio (built-ins need a ratio). ``config``: a
    flat parameter mapping (the node's or CLI's) supplying ``backend`` and the backend
    options (:func:`sspu_ros.backends.backend_options`); keyword ``options`` override it
    (device, compile, providers, threads, cache_dir, precision, max_patches). The result's
    ``backend`` attribute says which backend runs it; callers never branch on it."""
    from .backends import backend_options, load_model

    if config is not None:
        options = {**backend_options(config), **options}
        backend = backend or config.get("backend")
    backend = backend or "auto"
    if model == "midpoint":
        from .backends import check_backend_name

        check_backend_name(backend)
        return MidpointUpsampler(ratio or 4)
    return load_model(model, ratio, backend, **options)
