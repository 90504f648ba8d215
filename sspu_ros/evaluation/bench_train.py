"""``sspu bench train``: training throughput and the time split of one step."""

from __future__ import annotations

import platform

import numpy as np
import torch

from ..config import load_config
from ..simulation.sample_surface import torus_knot_surface
from ..training.data import cloud_patches, normalize_patches


def run_train_benchmark(*, batch: int = 28, steps: int = 5, warmup: int = 1,
                        device: str = "auto", overrides: dict | None = None) -> dict:
    """Median time of ``steps`` training steps of the default model (after ``warmup``),
    on patches of the procedural sample (no data needed)."""
    from ..training.trainer import Trainer

    rng = np.random.default_rng(0)
    bank = normalize_patches(cloud_patches(torus_knot_surface(8192), 128, 256, rng))
    ov = {"optim.batch_size": batch, "run.device": device, "optim.steps": warmup + steps}
    ov.update(overrides or {})
    cfg = load_config(overrides=ov, name="train")
    trainer = Trainer(cfg, "/nonexistent-unused", progress=False, patch_bank=bank)
    rows = []
    for s in range(warmup + steps):
        terms = trainer.train_step(trainer.batch(s))
        if s >= warmup:
            rows.append(terms)
    keys = ["t_forward", "t_render", "t_loss", "t_backward"]
    med = {k: float(np.median([r[k] for r in rows])) for k in keys}
    step = sum(med.values())
    dev = trainer.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() \
        or platform.machine()
    return {"device": f"{dev.type} ({name}, {torch.get_num_threads()} threads)",
            "batch": batch, "steps": steps, "step_s": step, "patches_per_s": batch / step,
            **{k: v for k, v in med.items()},
            "model": f"{cfg['model.preset']} preset, {trainer.gen_cfg.attention} attention, "
                     f"{trainer.gen_cfg.channels} channels"}


def format_train_benchmark(r: dict) -> str:
    lines = [f"sspu bench train: {r['model']}, batch {r['batch']}, "
             f"median of {r['steps']} steps",
             f"device: {r['device']}",
             f"step: {r['step_s'] * 1e3:.0f} ms  ->  {r['patches_per_s']:.1f} patches/s"]
    for k in ("t_forward", "t_render", "t_loss", "t_backward"):
        lines.append(f"  {k[2:]:<9} {r[k] * 1e3:8.1f} ms  ({100 * r[k] / r['step_s']:4.1f} %)")
    return "\n".join(lines)
