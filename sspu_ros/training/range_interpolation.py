"""Training the learned range-image interpolator (:mod:`sspu_ros.model.range_interpolator`).

Self-supervision from 16-beam scans only (``mode="self16"``): a 64-beam KITTI scan is
reduced to its 16-beam input (every 4th recovered ring, exactly what the benchmark feeds
the densifier); that 16-row range image is thinned once more, keeping every ``s``-th row
(s = 2: 8 rows, one virtual row per gap at t = 1/2; s = 4: 4 rows, three virtual rows at
t = 1/4, 1/2, 3/4; every phase), and the network learns to predict the dropped 16-beam
rows from the kept ones. The 64-beam rows are never seen.

``mode="self"``: the same self-supervision on an image that already is the sensor's own
resolution (a 16-beam bag's scans, :func:`self_tasks`): no 64-beam data at all.

``mode="full64"`` (a *supervised* reference, to be labelled as such): input the 16-beam
image (every phase of every 4th ring), targets the 3 dropped 64-beam rows per gap.

``extra_scans`` / ``extra_mode``: a second set of images trained jointly in its own mode
(e.g. simulated 64-beam scans in ``full64`` beside real 16-beam scans in ``self16``).

Losses per virtual pixel whose target row holds a return: L1 on the range (metres, each
pixel capped at ``cap`` = 2 metres), BCE of the return logit against "the target pixel holds a
return" (every pixel with at least one valid neighbour), BCE of the trust logit against
"|predicted - true| <= max(0.3 m, 3 % of the range)" (on pixels with a return; the
prediction detached).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.beams import range_image, recover_rings
from ..io.kitti import read_velodyne
from ..model.range_interpolator import (
    RangeInterpolator,
    RangeInterpolatorConfig,
    count_parameters,
    load_range_interpolator,
    save_range_interpolator,
)

__all__ = ["MODES", "SCHEDULES", "RangeTrainer", "Task", "TrainConfig", "build_tasks",
           "load_image",
           "load_scan_image", "make_tasks", "self_supervised_loss", "self_tasks", "train",
           "trust_target"]

MODES = ("self16", "self", "full64")
SCHEDULES = ("cosine", "constant", "manual")

N_BEAMS = 64
KEEP_EVERY = 4


def load_scan_image(path: str | Path, width: int = 2048) -> np.ndarray:
    """(64, W) float32 range image of a KITTI scan (NaN where empty)."""
    scan = read_velodyne(path)[:, :3].astype(np.float64)
    rings = recover_rings(scan)
    if rings.max() + 1 != N_BEAMS:
        raise ValueError(f"{path}: recovered {rings.max() + 1} rings, expected {N_BEAMS}")
    return range_image(scan, rings, N_BEAMS, width).range.astype(np.float32)


def load_image(path: str | Path, width: int = 2048) -> np.ndarray:
    """A training image: a KITTI ``.bin`` scan (its 64-row image, :func:`load_scan_image`)
    or a ``.npy`` (H, W) float32 range image (NaN where empty), e.g. a simulated scan's or
    one extracted from a bag; ``.npy`` images keep their own width."""
    if str(path).endswith(".npy"):
        img = np.load(str(path)).astype(np.float32)
        if img.ndim != 2:
            raise ValueError(f"{path}: expected an (H, W) range image, got shape {img.shape}")
        return img
    return load_scan_image(path, width)


@dataclass
class Task:
    """One training example: kept rows (K, W) and targets (T, K-1, W) at fractions t."""

    kept: np.ndarray
    target: np.ndarray
    t: np.ndarray
    spacing: float = 1.0  # kept-row gap in units of the 16-beam scan's


def self_tasks(img: np.ndarray, strides: tuple[int, ...] = (2, 4)) -> list[Task]:
    """Self-supervision on a sensor-resolution (K, W) image: every phase of keeping every
    s-th row; the dropped rows are the targets (spacing s)."""
    tasks = []
    for s in strides:
        for p in range(s):
            k = (len(img) - 1 - p) // s + 1
            if k < 2:
                continue
            kept = img[p::s][:k]
            target = np.stack([img[p + j:p + (k - 1) * s:s] for j in range(1, s)])
            tasks.append(Task(kept, target, np.arange(1, s) / s, float(s)))
    return tasks


def make_tasks(image64: np.ndarray, mode: str = "self16",
               strides: tuple[int, ...] = (2, 4)) -> list[Task]:
    """Every (stride, phase) task of one scan's image (see the module doc): ``self16``
    and ``full64`` take a 64-row image, ``self`` the sensor's own image."""
    tasks = []
    if mode == "self16":
        tasks = self_tasks(image64[::KEEP_EVERY], strides)  # 16-beam input: rows 0, 4, ..
    elif mode == "self":
        tasks = self_tasks(image64, strides)
    elif mode == "full64":
        for p in range(KEEP_EVERY):
            kept = image64[p::KEEP_EVERY]
            k = len(kept)
            target = np.stack([image64[p + j:p + (k - 1) * KEEP_EVERY:KEEP_EVERY]
                               for j in range(1, KEEP_EVERY)])
            tasks.append(Task(kept, target, np.arange(1, KEEP_EVERY) / KEEP_EVERY))
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return tasks


def trust_target(pred: torch.Tensor, truth: torch.Tensor, *, abs_tol: float = 0.3,
                 rel_tol: float = 0.03) -> torch.Tensor:
    """1 where |pred - truth| <= max(abs_tol, rel_tol · truth)."""
    return ((pred - truth).abs() <= torch.clamp(rel_tol * truth, min=abs_tol)).to(pred.dtype)


@dataclass
class TrainConfig:
    scans: list[str] = field(default_factory=list)  # KITTI .bin or .npy range images
    mode: str = "self16"
    init: str | None = None  # start from this checkpoint's weights (fine-tuning)
    extra_scans: list[str] = field(default_factory=list)  # a second set, trained jointly
    extra_mode: str = "full64"  # its mode (e.g. simulated 64-beam images, supervised)
    steps: int = 3000
    batch: int = 8
    crop: int = 512
    lr: float = 3e-3
    cap: float = 2.0
    w_return: float = 0.5
    w_trust: float = 0.5
    seed: int = 0
    trust_scale: bool = False
    width: int = 2048
    out: str = "out/range_interp"
    model: dict = field(default_factory=dict)
    #: "cosine" (to 0 at ``steps``), "constant", or "manual": lr × ``RangeTrainer.lr_scale``,
    #: set by the caller between runs (fine-tuning to a time budget)
    schedule: str = "cosine"
    #: the emit threshold the checkpoints carry (fine-tuning keeps the init's)
    threshold: float = 0.5
    checkpoint_every: int = 250
    log_every: int = 50


def _batch(tasks: list[Task], rng: np.random.Generator, batch: int, crop: int, width: int):
    """A batch of random column crops of tasks sharing one (K, T) shape, flipped in
    azimuth and scaled in range at random."""
    shapes = sorted({(t.kept.shape[0], len(t.t), t.spacing) for t in tasks})
    shape = shapes[rng.integers(len(shapes))]
    pool = [t for t in tasks if (t.kept.shape[0], len(t.t), t.spacing) == shape]
    kept, target = [], []
    for _ in range(batch):
        task = pool[rng.integers(len(pool))]
        w = task.kept.shape[1]
        c0 = rng.integers(w)
        cols = (c0 + np.arange(crop)) % w
        k, tg = task.kept[:, cols], task.target[:, :, cols]
        if rng.random() < 0.5:
            k, tg = k[:, ::-1], tg[:, :, ::-1]
        scale = float(np.exp(rng.uniform(-0.2, 0.2)))
        kept.append(k * scale)
        target.append(tg * scale)
    kept = torch.from_numpy(np.ascontiguousarray(np.stack(kept)))
    target = torch.from_numpy(np.ascontiguousarray(np.stack(target)))
    return kept, target, torch.tensor(pool[0].t, dtype=torch.float32), pool[0].spacing


def loss_terms(model: RangeInterpolator, kept: torch.Tensor, target: torch.Tensor,
               t: torch.Tensor, cap: float = 2.0, spacing: float = 1.0,
               trust_scale: bool = False) -> dict[str, torch.Tensor]:
    """Range L1, return BCE, trust BCE (and the MAE of the pixels with a return).
    ``trust_scale``: the trust tolerance grows with the spacing (max(0.3 m, 3 %) × s)."""
    valid = torch.isfinite(kept)
    rng = torch.nan_to_num(kept, nan=0.0)
    pred, ret, trust = model(rng, valid.float(), t, spacing)
    has = torch.isfinite(target)
    tgt = torch.nan_to_num(target, nan=0.0)
    reachable = (ret > -20).detach()  # some neighbour exists
    m = has & reachable
    err = (pred - tgt).abs()
    l1 = torch.where(m, err.clamp(max=cap), torch.zeros_like(err)).sum() / m.sum().clamp_min(1)
    bce_ret = F.binary_cross_entropy_with_logits(ret[reachable], has[reachable].float())
    k = spacing if trust_scale else 1.0
    tt = trust_target(pred.detach(), tgt, abs_tol=0.3 * k, rel_tol=0.03 * k)
    bce_trust = F.binary_cross_entropy_with_logits(trust[m], tt[m])
    return {"l1": l1, "ret": bce_ret, "trust": bce_trust,
            "mae": torch.where(m, err, torch.zeros_like(err)).sum() / m.sum().clamp_min(1)}


def build_tasks(cfg: TrainConfig) -> list[Task]:
    """The tasks of ``cfg.scans`` in ``cfg.mode`` followed by those of ``cfg.extra_scans``
    in ``cfg.extra_mode``. Batches draw one task shape (kept rows, targets, spacing) at
    random per step, so the two sets share the steps by shape, not by count."""
    tasks = []
    for scans, mode in ((cfg.scans, cfg.mode), (cfg.extra_scans, cfg.extra_mode)):
        for scan in scans:
            tasks += make_tasks(load_image(scan, cfg.width), mode)
    return tasks


def self_supervised_loss(model: RangeInterpolator, images: list[np.ndarray], *,
                         cap: float = 2.0) -> dict[str, float]:
    """The self-supervision loss terms of ``model`` on whole images, deterministic (every
    task of mode ``self`` of every (K, W) image, no crop, flip or scaling), averaged over
    the tasks: a truth-free check of what a fine-tuning did on its own data."""
    sums: dict[str, float] = {}
    n = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for img in images:
            for task in make_tasks(img, "self"):
                terms = loss_terms(model, torch.from_numpy(task.kept[None]),
                                   torch.from_numpy(task.target[None]),
                                   torch.tensor(task.t, dtype=torch.float32), cap,
                                   task.spacing)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
    model.train(was_training)
    return {k: round(v / max(1, n), 5) for k, v in sums.items()}


class RangeTrainer:
    """The training loop of :func:`train`, resumable and run in chunks (``sspu finetune``
    runs it to a wall-time budget).

    Args:
        cfg: the configuration (``cfg.scans`` are read unless ``images`` is given).
        images: (K, W) float32 range images (NaN where empty) to train on instead of
            ``cfg.scans``, e.g. the scans of a bag; ``trained_on`` then names them.
        trained_on: what the checkpoint's ``trained_on`` records (default ``cfg.scans``).
        meta: extra checkpoint metadata.

    Starts from ``cfg.init`` (its architecture) or a new model, and resumes from
    ``cfg.out``/``checkpoint.pt`` when it exists (weights, optimizer, schedule, step).
    """

    def __init__(self, cfg: TrainConfig, *, images: list[np.ndarray] | None = None,
                 trained_on: list[str] | None = None, meta: dict | None = None,
                 log=print) -> None:
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
        torch.manual_seed(cfg.seed)
        self.cfg, self.log = cfg, log
        self.rng = np.random.default_rng(cfg.seed)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if images is None:
            self.tasks = build_tasks(cfg)
            n_images = len(cfg.scans) + len(cfg.extra_scans)
        else:
            self.tasks = [task for img in images for task in make_tasks(img, cfg.mode)]
            n_images = len(images)
        if not self.tasks:
            raise ValueError(f"no training tasks from {n_images} scan(s) in mode {cfg.mode}")
        if cfg.init:
            self.model, _ = load_range_interpolator(cfg.init)  # its own architecture
            self.model.train()
        else:
            self.model = RangeInterpolator(RangeInterpolatorConfig(**cfg.model))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.lr_scale = 1.0
        if cfg.schedule == "cosine":
            def factor(s):
                return 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
        elif cfg.schedule == "manual":
            def factor(s):
                return self.lr_scale
        else:
            def factor(s):
                return 1.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
        self.step = 0
        self.checkpoint = self.out / "checkpoint.pt"
        if self.checkpoint.is_file():
            ck = torch.load(str(self.checkpoint), weights_only=False)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.step = int(ck["step"])
            self.rng = np.random.default_rng(cfg.seed + self.step)
            log(f"resumed at step {self.step}")
        extra = (f" + {len(cfg.extra_scans)} in mode {cfg.extra_mode}"
                 if images is None and cfg.extra_scans else "")
        log(f"{len(self.tasks)} tasks from {n_images} scans, mode {cfg.mode}{extra}, "
            f"{count_parameters(self.model)} parameters")
        self.meta = {"trained_on": list(trained_on) if trained_on is not None
                     else [str(s) for s in cfg.scans], "mode": cfg.mode, "init": cfg.init,
                     "train_config": {k: v for k, v in cfg.__dict__.items() if k != "scans"},
                     **(meta or {})}
        self._t0 = time.time()
        self._acc: dict[str, float] = {}
        self._acc_n = 0

    def save(self) -> None:
        """Write ``checkpoint.pt`` atomically (a temporary file renamed over it): a kill
        mid-write leaves the previous checkpoint."""
        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.tmp{os.getpid()}")
        try:
            save_range_interpolator(tmp, self.model, optimizer=self.opt.state_dict(),
                                    scheduler=self.sched.state_dict(), step=self.step,
                                    threshold=self.cfg.threshold, **self.meta)
            os.replace(tmp, self.checkpoint)
        finally:
            tmp.unlink(missing_ok=True)

    def run(self, until: int) -> dict[str, float]:
        """Train up to step ``until``; a checkpoint every ``cfg.checkpoint_every`` steps
        and at the end, a ``log.jsonl`` record every ``cfg.log_every`` steps.

        Returns:
            the mean loss terms (``total``, ``l1``, ``ret``, ``trust``, ``mae``) over the
            steps of this call (empty if none ran).
        """
        cfg = self.cfg
        mean: dict[str, float] = {}
        ran = 0
        with (self.out / "log.jsonl").open("a") as logf:
            while self.step < until:
                self.model.train()
                kept, target, t, spacing = _batch(self.tasks, self.rng, cfg.batch, cfg.crop,
                                                  cfg.width)
                terms = loss_terms(self.model, kept, target, t, cfg.cap, spacing,
                                   cfg.trust_scale)
                loss = terms["l1"] + cfg.w_return * terms["ret"] + cfg.w_trust * terms["trust"]
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                self.opt.step()
                self.sched.step()
                self.step += 1
                ran += 1
                values = {"total": float(loss.detach()),
                          **{k: float(v.detach()) for k, v in terms.items()}}
                for k, v in values.items():
                    mean[k] = mean.get(k, 0.0) + v
                    self._acc[k] = self._acc.get(k, 0.0) + v
                self._acc_n += 1
                if self.step % cfg.log_every == 0:
                    rec = {"step": self.step, "s": round(time.time() - self._t0, 1),
                           **{k: round(v / self._acc_n, 4) for k, v in self._acc.items()}}
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    self.log(json.dumps(rec))
                    self._acc, self._acc_n = {}, 0
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
        if ran and self.step % cfg.checkpoint_every:
            self.save()
        return {k: v / ran for k, v in mean.items()}


def train(cfg: TrainConfig, log=print) -> Path:
    """Train and write ``cfg.out``/``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps
    and at the end) and ``log.jsonl``; resumes from an existing checkpoint.pt there."""
    trainer = RangeTrainer(cfg, log=log)
    trainer.run(cfg.steps)
    return trainer.checkpoint
