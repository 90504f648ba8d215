"""``sspu finetune`` of a range-image interpolator (``models/sspu_lidar_x4``) on a bag.

The learned beam interpolator (:mod:`sspu_ros.model.range_interpolator`) is fine-tuned
with beam self-supervision on the bag's own scans, no ground truth:

1. **Range images of the bag's scans**: every selected PointCloud2 message of the topic is
   decoded and its beam structure recovered (:func:`scan_beam_structure`: the driver's
   ring/channel field if the message has one, else an organized cloud's rows, else the
   storage order of a laser-by-laser scan such as KITTI's, else the ``sensor`` preset).
   ``beam_stride`` keeps every k-th row of that structure (4: a 64-beam KITTI recording
   becomes the 16-beam input a 16-beam sensor gives), and the kept rows make one (K, W)
   range image per scan. Scans whose structure cannot be recovered are skipped and
   counted (with the reason); none usable is an error.
2. **Training** (:class:`~sspu_ros.training.range_interpolation.RangeTrainer`, mode
   ``self``): keep every 2nd / 4th row of each K-row image, predict the dropped rows; from
   the given model's weights and architecture, the learning rate falling from ``lr`` to 0
   along a cosine over the budget (a wall-time budget and/or a step count, in chunks:
   :func:`~sspu_ros.training.run_record.run_budget`, as the point-patch fine-tuning).
   ``checkpoint.pt`` (resumable) and ``log.jsonl``; the self-supervision loss on the whole
   training images before and after goes into the manifest (a truth-free check).
3. **Outputs**: ``model.pt`` (weights + metadata, the init's emit threshold carried over:
   the threshold was chosen against 64-beam truth, which fine-tuning has not), ``model.onnx``
   (:func:`~sspu_ros.model.range_interpolator.export_range_interpolator`, parity against
   PyTorch checked on a bag image) and the manifest ``model.yaml``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CloudFileError
from .run_record import (
    ONNX_NAME,
    check_budget,
    check_out_folder,
    command_text,
    frames_text,
    machine_info,
    plain,
    run_budget,
    sha256_file,
    write_manifest,
)

__all__ = ["CHECKPOINT", "MODEL_NAME", "bag_range_images", "finetune_range",
           "is_range_interpolator", "scan_beam_structure"]

CHECKPOINT = "checkpoint.pt"
MODEL_NAME = "model.pt"
#: fewest kept rows per image for self-supervision (keep every 4th of 4 rows: 1 gap)
MIN_ROWS = 4
#: skipped scans listed by reason in the manifest (the count is always complete)
MAX_LISTED = 20


def is_range_interpolator(path: str | Path) -> bool:
    """True if ``path`` is a range-interpolator checkpoint (its ``format`` key)."""
    from ..model.range_interpolator import load_range_interpolator

    try:
        load_range_interpolator(path)
    except (ValueError, OSError, KeyError, TypeError):
        return False
    return True


def scan_beam_structure(cloud, *, sensor: str = "auto", columns: int | None = None):
    """The beam structure of a decoded PointCloud2
    (:class:`~sspu_ros.io.pointcloud2.DecodedCloud`), rows for its valid points
    (``cloud.xyz``): the driver's beam field, else organized rows, else storage order,
    else the sensor preset (:func:`sspu_ros.geometry.scan_structure.scan_structure`).

    Raises:
        ScanStructureError: no source gives a valid structure.
    """
    from ..geometry.scan_structure import beam_field, scan_structure

    names = cloud.points.dtype.names or ()
    name = beam_field(names)
    beam = None
    if name is not None:
        beam = np.asarray(cloud.points[name][cloud.valid]).astype(np.float64)
    organized = (cloud.height, cloud.width) if cloud.height > 1 else None
    flat = np.flatnonzero(cloud.valid) if organized else None
    return scan_structure(cloud.xyz, beam=beam, beam_name=name or "ring",
                          organized=organized, flat_index=flat, sensor=sensor,
                          columns=columns)


def bag_range_images(bag: str | Path, topic: str | None, *, frames: slice = slice(None),
                     every: int = 1, beam_stride: int = 1, sensor: str = "auto",
                     columns: int | None = None, progress: bool = True
                     ) -> tuple[list[np.ndarray], dict]:
    """The (K, W) float32 range images (NaN where empty) of a bag's scans, every
    ``beam_stride``-th beam row kept.

    Returns:
        the images and ``{'scans', 'frames', 'skipped', 'skipped_scans', 'rows',
        'columns', 'sources', 'beams', 'missing_beams_scans', 'points'}`` (frames: first
        and last topic index used; skipped_scans: ``[{'frame', 'reason'}]``, the first
        :data:`MAX_LISTED`; rows: the kept rows per image, most common first).

    Raises:
        CloudFileError: the selection holds no scan, or no scan has a usable structure.
    """
    from tqdm import tqdm

    from ..geometry.scan_structure import ScanStructureError
    from ..io.bags import read_pointclouds

    images: list[np.ndarray] = []
    used: list[int] = []
    skipped: list[dict] = []
    n_skipped = 0
    n_seen = 0
    sources: Counter = Counter()
    beams: Counter = Counter()
    missing = 0
    points = 0
    it = read_pointclouds(bag, topic, frames=frames, every=every)
    for item in tqdm(it, desc="range images", unit="scan", disable=not progress):
        n_seen += 1
        try:
            st = scan_beam_structure(item.cloud, sensor=sensor, columns=columns)
            rows = st.n_rows
            image = st.range_image(item.cloud.xyz).range[::beam_stride]
            if len(image) < MIN_ROWS:
                raise ScanStructureError(
                    f"{rows} beams leave {len(image)} rows at beam stride {beam_stride} "
                    f"(self-supervision needs at least {MIN_ROWS})")
        except ScanStructureError as e:
            n_skipped += 1
            if len(skipped) < MAX_LISTED:
                skipped.append({"frame": item.index, "reason": str(e)})
            continue
        images.append(image.astype(np.float32))
        used.append(item.index)
        sources[st.source] += 1
        beams[rows] += 1
        missing += int(st.missing_beams > 0)
        points += int(len(item.cloud.xyz))
    where = f"{bag}: {topic or 'the first PointCloud2 topic'}"
    if not n_seen:
        raise CloudFileError(f"{where}: the frame selection {frames_text(frames)} holds no "
                             "scan")
    if not images:
        first = skipped[0]
        raise CloudFileError(
            f"{where}: none of the {n_seen} selected scan(s) has a usable beam structure, "
            f"nothing to fine-tune the range interpolator on (scan {first['frame']}: "
            f"{first['reason']}); record the driver's ring/channel field, give the sensor "
            "(--sensor), or fine-tune a point-patch generator instead")
    rows = Counter(len(img) for img in images)
    return images, {"scans": len(images), "frames": [used[0], used[-1]],
                    "skipped": n_skipped, "skipped_scans": skipped,
                    "rows": [int(k) for k, _ in rows.most_common()],
                    "columns": sorted({int(img.shape[1]) for img in images}),
                    "sources": dict(sources), "beams": {int(k): v for k, v in beams.items()},
                    "missing_beams_scans": missing, "points": points}


def finetune_range(bag: str | Path, topic: str | None, init: str | Path, out: str | Path, *,
                   minutes: float | None = None, steps: int | None = None,
                   frames: slice = slice(None), every: int = 1, beam_stride: int = 1,
                   sensor: str = "auto", columns: int | None = None, batch: int = 16,
                   lr: float = 5e-4, crop: int = 512, seed: int = 0, export: bool = True,
                   command: Sequence[str] | None = None, progress: bool = True,
                   resume: bool = False, log=None) -> dict:
    """Fine-tune the range interpolator ``init`` on a bag's scans; see the module doc.

    Args:
        minutes, steps: the budget (whichever ends first; at least one), as
            :func:`sspu_ros.training.finetune.finetune`.
        beam_stride: keep every k-th beam row of each scan's structure.
        sensor: ``auto`` or a sensor preset (:data:`sspu_ros.geometry.scan_structure.SENSORS`).
        columns: range-image width W (default 2048, or the preset's / organized width).
        batch, lr, crop: batch size, initial learning rate (cosine to 0 over the budget),
            column crop of the tasks.
        resume: continue the run in ``out`` from its ``checkpoint.pt`` up to ``steps`` (or
            for another ``minutes``); the same bag and settings rebuild the same images.
        log: a callable for the trainer's log lines (default: none).

    Returns:
        the manifest (also written to ``out/model.yaml``).
    """
    from ..model.range_interpolator import (
        export_range_interpolator,
        load_range_interpolator,
        save_range_interpolator,
    )
    from .range_interpolation import RangeTrainer, TrainConfig, self_supervised_loss

    check_budget(minutes, steps)
    t_start = time.time()
    bag, init, out = Path(bag), Path(init), Path(out)
    if not init.is_file():
        raise CloudFileError(f"{init}: no such checkpoint")
    try:
        base, init_ckpt = load_range_interpolator(init)
    except ValueError as e:
        raise CloudFileError(str(e)) from None
    threshold = float(init_ckpt.get("threshold", 0.5))
    check_out_folder(out, CHECKPOINT, resume)
    images, data = bag_range_images(bag, topic, frames=frames, every=every,
                                    beam_stride=beam_stride, sensor=sensor, columns=columns,
                                    progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    topic_text = topic or "(first PointCloud2 topic)"
    source = f"{bag}#{topic_text}[{frames_text(frames)}]"
    cfg = TrainConfig(mode="self", init=str(init), steps=int(steps or 0), batch=batch,
                      crop=crop, lr=lr, seed=seed, out=str(out), schedule="manual",
                      threshold=threshold, log_every=10)
    trainer = RangeTrainer(cfg, images=images, trained_on=[source],
                           meta={"finetune": {"bag": str(bag), "topic": topic_text,
                                              "frames": frames_text(frames),
                                              "beam_stride": beam_stride}},
                           log=log or (lambda _line: None))
    before = self_supervised_loss(base, images)  # the init, also when resuming
    last: dict[str, float] = {}
    t_train = time.monotonic()
    sub = max(1, steps // 20) if steps else None  # minutes only: run_budget's chunks

    def advance(target: int) -> int:
        """Up to ``target`` in pieces of 5 % of the step budget (of the time budget:
        run_budget's chunks), the learning rate following a cosine from ``lr`` to 0 over
        the budget (steps or minutes, whichever is further along), set per piece."""
        nonlocal last
        while trainer.step < target:
            done = trainer.step / steps if steps else 0.0
            if minutes:
                done = max(done, (time.monotonic() - t_train) / (60 * minutes))
            trainer.lr_scale = 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
            last = trainer.run(min(target, trainer.step + sub) if sub else target) or last
        return trainer.step

    _, train_seconds = run_budget(advance, trainer.step, minutes=minutes, steps=steps,
                                  progress=progress)
    model = trainer.model.eval()
    after = self_supervised_loss(model, images)
    info = {"trained_on": [source], "init_trained_on": init_ckpt.get("trained_on"),
            "mode": "self", "init": str(init),
            "step": int(trainer.step), "threshold_note":
            f"carried over from {init.name} (fine-tuning does not re-choose it)",
            "train_config": {k: v for k, v in asdict(cfg).items() if k != "scans"}}
    save_range_interpolator(out / MODEL_NAME, model, threshold=threshold, **info)
    moved = max(float((a - b).abs().max()) for a, b in
                zip(model.state_dict().values(), base.state_dict().values(), strict=True))
    manifest: dict[str, Any] = {
        "format": 1,
        "kind": "sspu_ros fine-tuned range interpolator",
        "model_format": init_ckpt["format"],
        "checkpoint": CHECKPOINT,
        "model": MODEL_NAME,
        "architecture": dict(model.config.to_dict()),
        "threshold": threshold,
        "init": {"path": str(init), "sha256": sha256_file(init),
                 "step": int(init_ckpt.get("step", 0)), "mode": init_ckpt.get("mode")},
        "data": {"bag": str(bag), "topic": topic_text, "frames": frames_text(frames),
                 "frames_used": data["frames"], "every": every, "beam_stride": beam_stride,
                 "sensor": sensor, "columns": data["columns"], "rows": data["rows"],
                 "scans": data["scans"], "points": data["points"],
                 "structure_sources": data["sources"], "beams": data["beams"],
                 "scans_with_missing_beams": data["missing_beams_scans"],
                 "skipped": data["skipped"], "skipped_scans": data["skipped_scans"],
                 "supervision": "self: keep every 2nd / 4th row of each image, predict "
                                "the dropped rows (no ground truth)"},
        "training": {"steps": int(trainer.step), "minutes_budget": minutes,
                     "steps_budget": steps, "wall_seconds": round(train_seconds, 2),
                     "loss_first": _logged(out / "log.jsonl", 0),
                     "loss_last": _logged(out / "log.jsonl", -1) or dict(last) or None,
                     "max_weight_change": moved,
                     "self_check": {"what": "self-supervision loss terms on the whole "
                                            "training images (every task, no crop), "
                                            "before / after",
                                    "before": before, "after": after},
                     "config": {k: plain(v) for k, v in asdict(cfg).items()
                                if k != "scans"}},
        "command": command_text(command),
        "machine": machine_info("cpu"),
        "created_unix": round(t_start, 3),
    }
    if export:
        rows = data["rows"][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_range_interpolator(model, out / ONNX_NAME, threshold=threshold)
        image = next(img for img in images if len(img) == rows)
        manifest["onnx"] = {"path": ONNX_NAME, "rows": rows,
                            "max_abs_diff": onnx_parity(model, out / ONNX_NAME, image)}
    return write_manifest(out, manifest, t_start)


def _logged(log: Path, which: int) -> dict | None:
    """The first (0) or last (-1) record of ``log.jsonl`` (mean loss terms over
    ``log_every`` steps), without its step and time."""
    import json

    lines = log.read_text().splitlines() if log.is_file() else []
    if not lines:
        return None
    rec = json.loads(lines[which])
    return {k: v for k, v in rec.items() if k not in ("step", "s")}


def onnx_parity(model, path: Path, image: np.ndarray, ratio: int = 4) -> float:
    """Largest |ONNX Runtime - PyTorch| of the predicted range (metres) and the emit
    probability over every virtual pixel of one (K, W) range image (NaN where empty): the
    export runs on gathered pixel windows, PyTorch on the whole image."""
    from ..runtime.range_interpolation import LearnedBeamInterpolator, OrtBeamInterpolator

    pred, prob = LearnedBeamInterpolator(model, ratio=ratio).predict(image)
    o_pred, o_prob = OrtBeamInterpolator(path, ratio=ratio).predict(image)
    ok = np.isfinite(pred) & np.isfinite(o_pred)
    return max(float(np.abs(o_pred - pred)[ok].max(initial=0.0)),
               float(np.abs(o_prob - prob).max(initial=0.0)))
