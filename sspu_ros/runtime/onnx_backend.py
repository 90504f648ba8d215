"""The ONNX Runtime backend: an ``sspu export`` ``.onnx`` run with the patch protocol."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .patch_inference import _per_point, _with_sources
from .upsampler import _empty_output

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
log = logging.getLogger("sspu_ros.runtime")


class OnnxUpsampler:
    """An exported generator (``sspu export``) run by ONNX Runtime with the patch protocol."""

    backend = "onnxruntime"
    #: () -> Upsampler for clouds smaller than one exported patch (set by the loader when
    #: the model's .pt is at hand: PyTorch takes any patch size); None: a ModelError
    small_clouds = None

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
        from .patch_inference import upsample_with_patches

        if xyz.shape[0] < self.patch_size and self.small_clouds is not None:
            return self.small_clouds().upsample(xyz)
        if xyz.shape[0] < self.patch_size:
            raise ModelError(f"{self.name} was exported for {self.patch_size}-point patches; "
                             f"the cloud has {xyz.shape[0]} points (use the .pt checkpoint "
                             "for clouds smaller than a patch)")
        return upsample_with_patches(xyz, self._patches, self.ratio, candidates=self.copies,
                                     patch_size=self.patch_size, keep_input=True)

    def upsample_with_sources(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if xyz.shape[0] < self.patch_size:
            if self.small_clouds is not None:
                return self.small_clouds().upsample_with_sources(xyz)
            self.upsample(xyz)  # raises the ModelError that explains it
        return _with_sources(self, xyz, self._patches)


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
