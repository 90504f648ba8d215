"""What every ``sspu finetune`` run shares: the training budget loop with its progress bar,
and the pieces of the manifest (``model.yaml``) that say where a model came from.

Used by :mod:`sspu_ros.training.finetune` (point-patch generators) and
:mod:`sspu_ros.training.range_finetune` (range-image interpolators), so that both stop,
resume and record a run the same way.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CloudFileError

__all__ = ["MANIFEST", "ONNX_NAME", "check_budget", "check_out_folder", "command_text",
           "frames_text", "machine_info", "plain", "run_budget", "sha256_file",
           "write_manifest"]

MANIFEST = "model.yaml"
ONNX_NAME = "model.onnx"


def check_budget(minutes: float | None, steps: int | None) -> None:
    """At least one of a wall-time budget (> 0 minutes) and a step count (>= 1)."""
    if minutes is None and steps is None:
        raise ValueError("give a time budget (minutes) or a step count (steps)")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def check_out_folder(out: Path, checkpoint: str, resume: bool) -> None:
    """A new run needs a folder without a checkpoint; ``resume`` needs one there."""
    if (out / checkpoint).exists() and not resume:
        raise CloudFileError(f"{out}: holds a checkpoint already; continue it with --resume "
                             "or choose a new --out folder")
    if resume and not (out / checkpoint).is_file():
        raise CloudFileError(f"{out}: no {checkpoint} to resume (--resume continues an "
                             "interrupted sspu finetune in the same --out folder)")


def run_budget(advance: Callable[[int], int], step: int, *, minutes: float | None,
               steps: int | None, progress: bool = True, desc: str = "finetune"
               ) -> tuple[int, float]:
    """Run a resumable training until ``steps`` (absolute) or the ``minutes`` budget ends,
    whichever first, with a tqdm progress bar.

    Args:
        advance: ``advance(target)`` trains up to step ``target`` and returns the step
            reached (the trainer's own checkpointing and logging happen inside).
        step: the trainer's current step (0, or the checkpoint's when resuming).

    Under a time budget the first chunk is one step (to measure the step time), then
    chunks of about 5 % of the budget, so the run stops close to the deadline.

    Returns:
        (the step reached, wall seconds of the training).
    """
    from tqdm import tqdm

    t_train = time.monotonic()
    deadline = t_train + minutes * 60 if minutes is not None else None
    target = steps if steps is not None else 1 << 60
    step_time = None
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", disable=not progress)
    try:
        while step < target:
            chunk = target - step
            if deadline is not None:
                left = deadline - time.monotonic()
                if step_time is None:
                    chunk = 1  # measure one step first
                else:
                    fit = int(left / step_time)
                    if fit < 1:
                        break
                    # chunks of ~5% of the budget keep the stop close to the deadline
                    chunk = min(chunk, fit, max(1, int(0.05 * minutes * 60 / step_time)))
            t0 = time.monotonic()
            reached = advance(step + chunk)
            if reached <= step:
                break  # the trainer could not advance
            step_time = (time.monotonic() - t0) / (reached - step)
            bar.update(reached - step)
            step = reached
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        bar.close()
    return step, time.monotonic() - t_train


def frames_text(frames: slice) -> str:
    """``slice(0, 5)`` -> ``'0:5'`` (either side may be empty)."""
    a = "" if frames.start is None else str(frames.start)
    b = "" if frames.stop is None else str(frames.stop)
    return f"{a}:{b}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine_info(device: str) -> dict:
    """Host, platform, Python, CPU count, torch version, device (and GPU or CPU name)."""
    import torch

    info = {"host": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": str(torch.__version__), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def command_text(command: Sequence[str] | None) -> str:
    """The command line to record (default: this process's ``sys.argv``)."""
    return shlex.join(list(command) if command is not None else sys.argv)


def plain(v: Any) -> Any:
    """numpy scalars and tuples -> plain Python values (for YAML)."""
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def write_manifest(out: Path, manifest: dict, t_start: float) -> dict:
    """Add ``total_wall_seconds`` (since the ``time.time()`` ``t_start``) and write
    ``out/model.yaml``."""
    import yaml

    manifest["total_wall_seconds"] = round(time.time() - t_start, 2)
    (out / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return manifest
