"""Generator checkpoints (``checkpoint.pt`` of ``sspu train``, the shipped ``models/*.pt``):
loading, with one clear error for anything that is not one."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .generator import GeneratorConfig, build_generator

FORMAT_VERSION = 1


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict saved by :class:`Trainer`. Raises OSError when ``path`` cannot
    be read and ValueError when it is not an sspu_ros checkpoint (any other file, also one
    that is not a torch file at all)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except OSError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError,
            ImportError, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an sspu_ros checkpoint (torch.load failed: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "give a checkpoint.pt written by `sspu train`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: not an sspu_ros checkpoint (format {FORMAT_VERSION})")
    return ckpt


def load_generator(path: str | Path, map_location="cpu") -> tuple[torch.nn.Module, dict]:
    """The trained generator of a checkpoint (eval mode) and the checkpoint dict."""
    ckpt = load_checkpoint(path, map_location)
    model = build_generator(GeneratorConfig(**ckpt["generator"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
