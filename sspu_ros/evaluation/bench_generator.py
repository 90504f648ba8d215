"""``sspu bench generator``: generator throughput, PyTorch eager vs ONNX Runtime (CPU),
side by side in one run, by batch size (number of 256-point patches)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .bench_codec import time_calls


def _median_seconds(fn, repeats: int) -> float:
    return float(np.median(time_calls(fn, repeats)))


def run_generator_benchmark(batches: tuple[int, ...] = (1, 8, 24), repeats: int = 5,
                            presets: tuple[str, ...] = ("paper", "light")) -> dict:
    """Median forward time per batch for each preset and runtime (random weights: speed
    does not depend on them)."""
    import onnxruntime as ort

    from ..model.generator import GeneratorConfig, build_generator, export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            cfg = GeneratorConfig.light() if preset == "light" else GeneratorConfig()
            torch.manual_seed(0)
            model = build_generator(cfg).eval()
            path = export_onnx(model, Path(tmp) / f"{preset}.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for b in batches:
                x = torch.rand(b, 256, 3) * 2 - 1
                xn = x.numpy()

                def run_torch(x=x, model=model):
                    with torch.no_grad():
                        model(x)

                def run_ort(xn=xn, session=session):
                    session.run(None, {"xyz": xn})

                t_torch = _median_seconds(run_torch, repeats)
                t_ort = _median_seconds(run_ort, repeats)
                rows.append({"preset": preset, "batch": b, "torch_s": t_torch, "ort_s": t_ort,
                             "torch_patches_per_s": b / t_torch, "ort_patches_per_s": b / t_ort,
                             "ort_speedup": t_torch / t_ort})
    return {"threads": torch.get_num_threads(), "repeats": repeats,
            "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": rows}


def format_generator_benchmark(r: dict) -> str:
    lines = [f"sspu bench generator: median of {r['repeats']} forwards, CPU, "
             f"{r['threads']} threads (torch {r['torch']}, onnxruntime {r['onnxruntime']})",
             f"{'preset':<7} {'batch':>5} {'torch ms':>9} {'ORT ms':>9} {'torch p/s':>10} "
             f"{'ORT p/s':>9} {'ORT speed-up':>12}"]
    for row in r["rows"]:
        lines.append(f"{row['preset']:<7} {row['batch']:>5} {row['torch_s'] * 1e3:9.1f} "
                     f"{row['ort_s'] * 1e3:9.1f} {row['torch_patches_per_s']:10.1f} "
                     f"{row['ort_patches_per_s']:9.1f} {row['ort_speedup']:11.2f}x")
    return "\n".join(lines)
