"""``sspu export``: a trained generator checkpoint -> ONNX, checked against PyTorch.

The ONNX graph takes ``xyz`` (batch, K, 3) unit-sphere patches (batch dynamic, K the
training patch size) and returns ``dense`` (batch, r·K, 3). The model's ratio, patch size
and architecture travel in the ONNX metadata (``sspu.ratio``, ``sspu.patch_size``,
``sspu.generator``), so an ONNX file alone is a complete model for
:class:`sspu_ros.upsampler.OnnxUpsampler`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

PARITY_TOL_FP32 = 1e-4


def export_checkpoint(checkpoint: str | Path, onnx_path: str | Path, *, opset: int = 17,
                      check_batches: tuple[int, ...] = (1, 3)) -> dict:
    """Export and verify; returns {'onnx', 'ratio', 'patch_size', 'max_abs_diff'}.

    Raises RuntimeError when onnxruntime disagrees with PyTorch by more than 1e-4 (fp32)
    on random unit-sphere patches.
    """
    import onnx

    from .models.generator import export_onnx
    from .training.trainer import load_generator

    model, ckpt = load_generator(checkpoint)
    patch_size = int(ckpt.get("config", {}).get("data.patch_size", 256))
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, onnx_path, n_points=patch_size, opset=opset)
    graph = onnx.load(str(onnx_path))
    sha = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    meta = {"sspu.ratio": str(model.ratio), "sspu.patch_size": str(patch_size),
            "sspu.generator": json.dumps(ckpt["generator"]), "sspu.checkpoint_sha256": sha,
            "sspu.step": str(ckpt.get("step", ""))}
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(onnx_path))
    diff = parity(model, onnx_path, patch_size, check_batches)
    if diff > PARITY_TOL_FP32:
        raise RuntimeError(f"{onnx_path}: onnxruntime differs from PyTorch by {diff:.2e} "
                           f"(> {PARITY_TOL_FP32:g})")
    return {"onnx": str(onnx_path), "ratio": model.ratio, "patch_size": patch_size,
            "max_abs_diff": diff}


def parity(model: torch.nn.Module, onnx_path: str | Path, patch_size: int,
           batches: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Max |onnxruntime − torch| over random unit-sphere patches of each batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, patch_size, 3, generator=g)
        x = x / x.norm(dim=-1).amax(dim=1)[:, None, None]
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"xyz": x.numpy()})[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
