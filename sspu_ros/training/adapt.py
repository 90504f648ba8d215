"""Test-time self-supervised adaptation (``sspu upsample --adapt STEPS``).

SSPU-Net needs no ground truth, so a model can fine-tune on the very cloud it is asked to
densify: a *copy* of the checkpoint's generator is trained for a few steps on the input's
own patches (FPS seeds, each with its ``patch_size`` nearest points, normalized to the
unit sphere; the training augmentation of the checkpoint's configuration) with the
self-supervised losses, then upsamples the cloud. The training step is the trainer's own
(:meth:`sspu_ros.training.trainer.Trainer.train_step` on :meth:`Trainer.batch`): same
losses, rendering, optimizer and configuration as the checkpoint was trained with; only
the data (the input's patches), the step count and optionally the batch size and learning
rate differ. Nothing is written to disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..geometry.patches import extract_patches, normalize_unit_sphere, seed_count
from .data import normalize_patches


def input_patch_bank(xyz: np.ndarray, patch_size: int = 256,
                     n_patches: int | None = None) -> np.ndarray:
    """Training patches of one cloud: FPS seeds, each with its nearest points.

    Args:
        xyz: (N, 3) finite points.
        patch_size: K, points per patch (clipped to N).
        n_patches: seeds; default max(64, the inference seed count), at most N.

    Returns:
        (P, K, 3) float32 patches, each normalized to the unit sphere.
    """
    pts = torch.as_tensor(np.asarray(xyz, dtype=np.float32))
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got shape {tuple(pts.shape)}")
    n = pts.shape[0]
    k = min(patch_size, n)
    p = n_patches or max(64, seed_count(n, k))
    shape = normalize_unit_sphere(pts[None])[0][0]
    patches, _ = extract_patches(shape, min(p, n), k)
    return normalize_patches(patches.numpy())


def adapt_generator(checkpoint: str | Path, xyz: np.ndarray, steps: int, *,
                    batch_size: int | None = None, lr: float | None = None,
                    n_patches: int | None = None, device: str = "auto", seed: int = 0,
                    progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """A copy of the checkpoint's generator fine-tuned on ``xyz``'s own patches.

    Args:
        checkpoint: ``.pt`` from ``sspu train``.
        xyz: (N, 3) finite points, N >= the model's ratio.
        steps: optimizer steps (>= 1).
        batch_size, lr: override the checkpoint's ``optim.batch_size`` / ``optim.lr``.
        n_patches: see :func:`input_patch_bank`.

    Returns:
        the adapted generator (eval mode, on CPU) and a summary: steps, patches, seconds,
        the first and last total loss.
    """
    from ..model.checkpoint import load_checkpoint
    from .trainer import Trainer, checkpoint_train_config, zoom_factor

    if steps < 1:
        raise ValueError(f"adaptation needs >= 1 step, got {steps}")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    overrides = {"optim.steps": steps, "data.paths": [], "run.device": device,
                 "run.seed": seed}
    if batch_size is not None:
        overrides["optim.batch_size"] = batch_size
    if lr is not None:
        overrides["optim.lr"] = lr
    cfg = checkpoint_train_config(ckpt, overrides)
    # zoom-out term: r-times larger patches of the input (their FPS is the model's input)
    bank = input_patch_bank(xyz, cfg["data.patch_size"] * zoom_factor(cfg), n_patches)
    with tempfile.TemporaryDirectory(prefix="sspu_adapt_") as tmp:  # Trainer needs a folder
        trainer = Trainer(cfg, tmp, init=checkpoint, progress=False, patch_bank=bank)
        losses = []
        from tqdm import tqdm

        for step in tqdm(range(steps), desc="adapt", unit="step", disable=not progress,
                         leave=False):
            losses.append(trainer.train_step(trainer.batch(step))["total"])
        trainer.close()
    model = trainer.model.cpu().eval()
    return model, {"steps": steps, "patches": int(len(bank)),
                   "seconds": time.perf_counter() - t0,
                   "loss_first": losses[0], "loss_last": losses[-1]}


def checkpoint_of(model: str | Path) -> Path:
    """The ``.pt`` checkpoint behind a model name or path; ModelError when there is none
    (only PyTorch checkpoints can be fine-tuned: ONNX exports and built-ins cannot)."""
    from ..errors import ModelError
    from ..runtime.model_files import find_model_files

    if str(model) == "midpoint":
        raise ModelError("--adapt fine-tunes a trained generator; 'midpoint' has nothing to "
                         "train: give --model CKPT.pt")
    files = find_model_files(str(model))
    if files.pt is None:
        raise ModelError(f"--adapt needs the PyTorch checkpoint (.pt) of model '{files.name}'"
                         " (an ONNX export cannot be trained)")
    return files.pt


def adapt_upsample(model: str | Path, xyz: np.ndarray, steps: int, *,
                   ratio: int | None = None, device: str = "auto",
                   **kwargs) -> tuple[np.ndarray, dict]:
    """Adapt a copy of the model's checkpoint to ``xyz`` (:func:`adapt_generator`), then
    upsample ``xyz`` with it by the standard patch protocol (PyTorch backend).

    Args:
        model: a ``.pt`` path or a shipped model name with a ``.pt``.
        xyz: (N, 3) finite points.
        ratio: None, or the ratio the model must have (ModelError otherwise).

    Returns:
        (r·N, 3) float32 (the N inputs first) and the adaptation summary.
    """
    from ..runtime.torch_backend import TorchUpsampler

    path = checkpoint_of(model)
    upsampler = TorchUpsampler(path, ratio, device=device)
    adapted, info = adapt_generator(path, xyz, steps, device=device, **kwargs)
    upsampler.model.load_state_dict(adapted.state_dict())
    return upsampler.upsample(xyz), info
