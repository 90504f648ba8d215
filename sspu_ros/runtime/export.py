"""``sspu export``: a trained generator checkpoint -> ONNX, checked against PyTorch.

The ONNX graph takes ``xyz`` (batch, K, 3) unit-sphere patches (batch dynamic, K the
training patch size) and returns ``dense`` (batch, r·K, 3). The model's ratio, patch size
and architecture travel in the ONNX metadata (``sspu.ratio``, ``sspu.patch_size``,
``sspu.generator``), so an ONNX file alone is a complete model for
:class:`sspu_ros.runtime.onnx_backend.OnnxUpsampler`.

``fp16=True`` exports the generator in half precision (weights and activations float16)
with float32 input and output (a Cast at each end), so every caller and backend feeds and
reads float32 whatever the precision; ``sspu.precision`` in the metadata says which. That
is the ONNX a TensorRT 11 FP16 engine is built from (TensorRT 11 has no FP16 builder flag).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..config import data_dir

PARITY_TOL_FP32 = 1e-4
# FP16 vs PyTorch fp32, max |diff| in unit-sphere coordinates. float16 spacing is 4.9e-4 in
# [0.5, 1); measured 4.7e-4 (random) and 4.9e-4 (PU-GAN dev patches) for the light and the
# paper preset (ONNX Runtime CPU, opset 17). The bound is 10x that: room for larger trained
# offsets and for kNN ties that float16 breaks differently.
PARITY_TOL_FP16 = 5e-3
PRECISIONS = ("fp32", "fp16")
DEV_PATCH_DIR = data_dir() / "pugan-dev" / "input"


def export_checkpoint(checkpoint: str | Path, onnx_path: str | Path, *, opset: int = 17,
                      check_batches: tuple[int, ...] = (1, 3), fp16: bool = False,
                      real_patches: np.ndarray | None = None) -> dict:
    """Export and verify; returns {'onnx', 'ratio', 'patch_size', 'precision',
    'max_abs_diff' (random patches), 'max_abs_diff_real' (``real_patches``, else None),
    'tolerance'}.

    ``real_patches``: optional (B, K, 3) unit-sphere patches of real shapes (see
    :func:`real_patches`) checked besides the random ones. Raises RuntimeError when
    onnxruntime disagrees with PyTorch fp32 by more than :data:`PARITY_TOL_FP32` (fp32) or
    :data:`PARITY_TOL_FP16` (``fp16``).
    """
    import onnx

    from ..model.checkpoint import load_generator
    from ..model.generator import export_onnx

    model, ckpt = load_generator(checkpoint)
    patch_size = int(ckpt.get("config", {}).get("data.patch_size", 256))
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    precision = "fp16" if fp16 else "fp32"
    if fp16:
        half, _ = load_generator(checkpoint)
        export_onnx(half.half(), onnx_path, n_points=patch_size, opset=opset)
        graph = float32_io(onnx.load(str(onnx_path)))
    else:
        export_onnx(model, onnx_path, n_points=patch_size, opset=opset)
        graph = onnx.load(str(onnx_path))
    sha = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    meta = {"sspu.ratio": str(model.ratio), "sspu.patch_size": str(patch_size),
            "sspu.generator": json.dumps(ckpt["generator"]), "sspu.checkpoint_sha256": sha,
            "sspu.step": str(ckpt.get("step", "")), "sspu.precision": precision,
            "sspu.candidates": str(model.copies)}
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(onnx_path))
    tol = PARITY_TOL_FP16 if fp16 else PARITY_TOL_FP32
    diff = parity(model, onnx_path, patch_size, check_batches)
    diff_real = None if real_patches is None else parity_on(model, onnx_path, real_patches)
    worst = max(diff, diff_real or 0.0)
    if worst > tol:
        raise RuntimeError(f"{onnx_path}: onnxruntime ({precision}) differs from PyTorch fp32 "
                           f"by {worst:.2e} (> {tol:g})")
    return {"onnx": str(onnx_path), "ratio": model.ratio, "patch_size": patch_size,
            "precision": precision, "max_abs_diff": diff, "max_abs_diff_real": diff_real,
            "tolerance": tol}


def float32_io(graph):
    """A float16 ONNX graph with its float16 inputs and outputs turned float32: a Cast to
    float16 after each input and a Cast to float32 before each output (in place)."""
    from onnx import TensorProto, helper

    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    g = graph.graph
    casts_in, casts_out = [], []
    for value in g.input:
        if value.type.tensor_type.elem_type != f16:
            continue
        inner = value.name + "_fp16"
        for node in g.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [inner], to=f16,
                                         name=f"cast_{value.name}_to_fp16"))
        value.type.tensor_type.elem_type = f32
    for value in g.output:
        if value.type.tensor_type.elem_type != f16:
            continue
        inner = value.name + "_fp16"
        for node in g.node:
            node.output[:] = [inner if n == value.name else n for n in node.output]
            node.input[:] = [inner if n == value.name else n for n in node.input]
        casts_out.append(helper.make_node("Cast", [inner], [value.name], to=f32,
                                          name=f"cast_{value.name}_to_fp32"))
        value.type.tensor_type.elem_type = f32
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    return graph


def real_patches(folder: str | Path = DEV_PATCH_DIR, patch_size: int = 256,
                 per_shape: int = 2, limit: int = 4) -> np.ndarray | None:
    """(B, K, 3) float32 unit-sphere patches of the first ``limit`` ``.xyz`` shapes of
    ``folder`` (FPS seeds + nearest points, the inference protocol); None when the folder
    holds none (e.g. the dev data is not beside the checkout)."""
    from ..geometry.patches import extract_patches, normalize_unit_sphere
    from ..io.cloud_files import read_cloud

    files = sorted(Path(folder).glob("*.xyz"))[:limit] if Path(folder).is_dir() else []
    batches = []
    for f in files:
        xyz = torch.from_numpy(read_cloud(f).xyz.astype(np.float32))
        if xyz.shape[0] < patch_size:
            continue
        patches, _ = extract_patches(xyz, per_shape, patch_size)
        batches.append(normalize_unit_sphere(patches)[0])
    return torch.cat(batches).numpy() if batches else None


def parity_on(model: torch.nn.Module, onnx_path: str | Path, patches: np.ndarray) -> float:
    """Max |onnxruntime − torch fp32| on given (B, K, 3) patches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(patches, dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return float(np.abs(session.run(None, {"xyz": x})[0] - ref).max())


def parity(model: torch.nn.Module, onnx_path: str | Path, patch_size: int,
           batches: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Max |onnxruntime − torch| over random unit-sphere patches of each batch size."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, patch_size, 3, generator=g)
        x = x / x.norm(dim=-1).amax(dim=1)[:, None, None]
        worst = max(worst, parity_on(model, onnx_path, x.numpy()))
    return worst
