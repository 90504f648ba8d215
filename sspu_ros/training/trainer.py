"""Self-supervised training of the SSPU-Net generator (``sspu train``).

One entry point for a single process and for ``torchrun --nproc_per_node=K`` (DDP: NCCL
on GPU, gloo on CPU). Repeatable: the model is initialised from ``run.seed`` and the batch
of step ``s`` on rank ``k`` is drawn from a generator seeded by (seed, s, k), so a run
resumed from a checkpoint continues exactly as if it had never stopped.

Outputs in ``OUT``: ``checkpoint.pt`` (written atomically every ``run.checkpoint_every``
steps and at the end), ``log.csv`` (loss terms per logged step), ``tb/`` (TensorBoard),
``config.yaml`` (the full training configuration), ``ranks/rank*.json`` (weight
fingerprints of every rank at the end, to check DDP consistency).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, default_parameters, load_config
from ..geometry.candidate_selection import select_fps
from ..geometry.knn import gather_points
from ..geometry.sampling import farthest_point_sample
from ..model.checkpoint import FORMAT_VERSION, load_checkpoint, load_generator
from ..model.generator import GeneratorConfig, build_generator
from ..model.losses import SSPULoss, chamfer_distance
from ..model.rendering import make_cameras, render_silhouettes
from .data import PatchOptions, augment, build_patch_bank

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch.device(name)


def generator_config(cfg: Mapping[str, Any]) -> GeneratorConfig:
    """The generator architecture from the training configuration's ``model.*``: the
    preset, with the parameters that are set (non-zero, not 'preset') on top."""
    over = {"ratio": cfg["model.ratio"], "expansion": cfg["model.expansion"],
            "head_init_scale": cfg["model.head_init_scale"],
            "coord_base": cfg["model.coord_base"], "offsets": cfg["model.offsets"],
            "candidates": cfg.get("model.candidates", 0),
            "normal_shift": cfg.get("model.normal_shift", 0.0),
            "learn_mix": cfg.get("model.learn_mix", True),
            "phong": cfg.get("model.phong", 0.0)}
    if cfg["model.channels"]:
        over["channels"] = cfg["model.channels"]
    if cfg["model.knn_k"]:
        over["knn_k"] = cfg["model.knn_k"]
    if cfg["model.attention"] != "preset":
        over["attention"] = cfg["model.attention"]
    if cfg["model.preset"] == "light":
        return GeneratorConfig.light(**over)
    return GeneratorConfig(**over)


def build_loss(cfg: Mapping[str, Any]) -> SSPULoss:
    return SSPULoss(lambda_sc=cfg["loss.sc"], lambda_ic=cfg["loss.ic"],
                    lambda_hd=cfg["loss.hd"], lambda_un=cfg["loss.un"],
                    use_sc=cfg["loss.sc"] > 0, use_ic=cfg["loss.ic"] > 0,
                    use_hd=cfg["loss.hd"] > 0, use_un=cfg["loss.un"] > 0,
                    exact_emd=cfg["loss.exact_emd"],
                    image_per_pixel=cfg["loss.image_per_pixel"],
                    sc_point_sum=cfg["loss.sc_point_sum"],
                    uniform_seed_reduction="mean" if cfg["loss.uniform_seed_mean"] else "sum")


def zoom_factor(cfg: Mapping[str, Any]) -> int:
    """How many times denser the training patches are than the generator's input: r when
    the zoom-out term (``loss.zoom``) is on, else 1."""
    return int(cfg["model.ratio"]) if cfg.get("loss.zoom", 0.0) > 0 else 1


def patch_options(cfg: Mapping[str, Any]) -> PatchOptions:
    """Patch bank options; with the zoom-out term the bank holds r-times larger patches
    (data.patch_size x r points) sampled r-times denser (data.mesh_points x r)."""
    z = zoom_factor(cfg)
    return PatchOptions(patch_size=cfg["data.patch_size"] * z,
                        patches_per_shape=cfg["data.patches_per_shape"],
                        patches_per_scan=cfg["data.patches_per_scan"],
                        mesh_points=cfg["data.mesh_points"] * z,
                        nonuniform=cfg["data.nonuniform"],
                        bag_topic=cfg["data.bag_topic"] or None)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers (names and bytes), for rank comparisons."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_train_config(ckpt: Mapping[str, Any], overrides: Mapping[str, Any]) -> Config:
    """The training configuration to continue training ``ckpt`` with (``sspu finetune``,
    ``--adapt``): the shipped ``train`` defaults, then the checkpoint's own parameters
    (those the current schema still knows), then ``overrides`` (flat dotted names);
    validated as a whole (ConfigError)."""
    known = default_parameters("train")
    flat = {k: v for k, v in ckpt.get("config", {}).items() if k in known}
    flat.update(overrides)
    return load_config(None, flat, name="train")


class _Dist:
    """torchrun's environment, or a single process."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Trainer:
    """Holds model, optimizer, data and loss; :meth:`run` trains to ``optim.steps``."""

    def __init__(self, cfg: Config, out_dir: str | Path, *, resume: bool = False,
                 init: str | Path | None = None, progress: bool = True,
                 patch_bank: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = _Dist(cfg["run.device"])
        self.device = self.dist.device
        self.progress = progress and self.dist.main
        seed = cfg["run.seed"]
        torch.manual_seed(seed)
        self.gen_cfg = generator_config(cfg)
        self.model = build_generator(self.gen_cfg).to(self.device)
        if init is not None:
            _, ck = load_generator(init)
            # through GeneratorConfig: checkpoints written before an option existed lack it
            if asdict(GeneratorConfig(**ck["generator"])) != asdict(self.gen_cfg):
                raise ValueError(f"--init {init}: its architecture {ck['generator']} differs "
                                 f"from the configured one {asdict(self.gen_cfg)}")
            self.model.load_state_dict(ck["model"])
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg["optim.lr"])
        self.loss = build_loss(cfg)
        self.cameras = make_cameras(cfg["render.views"], device=self.device)
        self.step = 0
        if resume:
            path = self.out / CHECKPOINT
            if not path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {path}")
            ck = load_checkpoint(path, self.device)
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.step = int(ck["step"])
        if patch_bank is None:
            if not cfg["data.paths"]:
                raise ValueError("no training data: give --data PATH (or data.paths)")
            patch_bank = build_patch_bank(cfg["data.paths"], patch_options(cfg), seed=seed,
                                          progress=self.progress)
        self.bank = torch.as_tensor(patch_bank, dtype=torch.float32)
        self.ddp = self.model
        if self.dist.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> torch.Tensor:
        """(B, K, 3) augmented input patches of ``step`` on this rank (deterministic)."""
        g = torch.Generator().manual_seed(
            (self.cfg["run.seed"] * 1_000_003 + step) * 64 + self.dist.rank)
        idx = torch.randint(len(self.bank), (self.cfg["optim.batch_size"],), generator=g)
        c = self.cfg
        patches = augment(self.bank[idx], rotate=c["data.augment.rotate"],
                          scale=(c["data.augment.scale_min"], c["data.augment.scale_max"]),
                          jitter=c["data.augment.jitter"], generator=g)
        return patches.to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, sparse: torch.Tensor) -> dict[str, float]:
        """One optimizer step; returns the loss terms and the time split in seconds.

        With the zoom-out term (``loss.zoom`` > 0) ``sparse`` holds r·K-point patches: the
        generator's input is their farthest point sample of K points, and besides the
        paper's losses on (output, input) the output is compared with the whole r·K patch
        by the Chamfer distance, weighted by ``loss.zoom`` (self-supervised: the r·K points
        are input points too, one level denser)."""
        c = self.cfg
        self.ddp.train()
        t0 = time.perf_counter()
        target = None
        if zoom_factor(c) > 1:
            target = sparse
            with torch.no_grad():
                keep = farthest_point_sample(target, target.shape[1] // zoom_factor(c))
            sparse = gather_points(target, keep)
        dense = self.ddp(sparse)
        if self.model.copies > self.model.ratio:  # over-complete: inputs + FPS of candidates
            dense = select_fps(sparse, dense, self.model.ratio)
        self._sync()
        t1 = time.perf_counter()
        img_s = img_d = None
        if self.loss.use_ic:
            kw = dict(image_size=c["render.image_size"], sigma=c["render.sigma"],
                      triangle_scale=c["render.triangle_scale"], mode=c["render.triangle"])
            with torch.no_grad():
                img_s = render_silhouettes(sparse, self.cameras, **kw)
            img_d = render_silhouettes(dense, self.cameras, **kw)
        self._sync()
        t2 = time.perf_counter()
        total, terms = self.loss(dense, sparse, img_s, img_d)
        if target is not None:
            terms["zoom"] = chamfer_distance(dense, target)
            total = total + c["loss.zoom"] * terms["zoom"]
        self._sync()
        t3 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if c["optim.grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c["optim.grad_clip"])
        self.optimizer.step()
        self._sync()
        t4 = time.perf_counter()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(total=float(total.detach()), t_forward=t1 - t0, t_render=t2 - t1,
                   t_loss=t3 - t2, t_backward=t4 - t3)
        return out

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {"format": FORMAT_VERSION, "step": self.step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": asdict(self.gen_cfg), "config": dict(self.cfg),
                "torch": torch.__version__}

    def save(self) -> None:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_atomic(self.checkpoint(), self.out / CHECKPOINT)

    # ------------------------------------------------------------------ loop

    def run(self) -> dict[str, float]:
        """Train until ``optim.steps``; returns the last logged terms."""
        from tqdm import tqdm

        c = self.cfg
        total_steps = c["optim.steps"]
        writer = None
        log_file = None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(c.to_yaml())
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)
            new = not (self.out / "log.csv").exists() or self.step == 0
            if not new:  # resumed: drop rows logged after the checkpoint (run again now)
                _truncate_log(self.out / "log.csv", self.step)
            log_file = open(self.out / "log.csv", "w" if new else "a", newline="")
        logger = None
        bar = tqdm(total=total_steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        last: dict[str, float] = {}
        window: list[dict[str, float]] = []
        try:
            while self.step < total_steps:
                terms = self.train_step(self.batch(self.step))
                self.step += 1
                window.append(terms)
                bar.update(1)
                if self.step % c["run.log_every"] == 0 or self.step == total_steps:
                    last = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    step_time = sum(last[k] for k in last if k.startswith("t_"))
                    last["patches_per_s"] = c["optim.batch_size"] * self.dist.world / step_time
                    window = []
                    if self.dist.main:
                        bar.set_postfix({_short(k): f"{v:.3g}" for k, v in last.items()
                                         if not k.startswith("t_")})
                        for k, v in last.items():
                            writer.add_scalar(("time/" if k.startswith("t_") else "loss/") + k,
                                              v, self.step)
                        if logger is None:
                            logger = csv.DictWriter(log_file, ["step", *last])
                            if log_file.tell() == 0:
                                logger.writeheader()
                        logger.writerow({"step": self.step, **last})
                        log_file.flush()
                if self.step % c["run.checkpoint_every"] == 0 or self.step == total_steps:
                    self.save()
            if self.step == 0 or not (self.out / CHECKPOINT).exists():
                self.save()  # 0 steps asked: the initial weights, for scoring the untrained model
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if log_file is not None:
                log_file.close()
        self._write_rank_fingerprint()
        return last

    def _write_rank_fingerprint(self) -> None:
        d = self.out / "ranks"
        d.mkdir(parents=True, exist_ok=True)
        info = {"rank": self.dist.rank, "world": self.dist.world, "step": self.step,
                "sha256": weights_fingerprint(self.model)}
        (d / f"rank{self.dist.rank}.json").write_text(json.dumps(info))

    def close(self) -> None:
        self.dist.close()


def _truncate_log(path: Path, step: int) -> None:
    """Keep the header and the rows of ``log.csv`` up to ``step`` (written atomically)."""
    lines = path.read_text().splitlines(keepends=True)
    def logged_step(line: str) -> int | None:
        head = line.split(",", 1)[0].strip()
        return int(head) if head.isdigit() else None

    keep = lines[:1] + [ln for ln in lines[1:]
                        if (n := logged_step(ln)) is not None and n <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def _short(name: str) -> str:
    return {"shape_consistent": "sc", "image_consistent": "ic", "hausdorff": "hd",
            "uniform": "un", "total": "L", "patches_per_s": "p/s"}.get(name, name)
