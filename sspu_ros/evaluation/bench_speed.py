"""``sspu bench speed``: the scan densifier end to end, per stage, per backend.

For each available backend of the model (PyTorch, ONNX Runtime; the built-in
``midpoint`` runs as "builtin"):

* **per-stage median and p95** over >= 50 scans (real KITTI scans cycled, and a
  generated sample scan): ``decode`` (PointCloud2 bytes -> numpy,
  :func:`sspu_ros.io.pointcloud2.decode`), ``preprocess`` (crop, ground, clusters, patches),
  ``inference`` (the one batched ``upsample_patches`` call), ``postprocess`` (merge,
  outliers), ``encode`` (:func:`sspu_ros.io.pointcloud2.encode_densified`), ``total``,
  ``total`` minus ``inference`` (all wall time), and ``total_cpu``, the process CPU time
  per scan (all threads; less sensitive than wall time to other load on the machine);
* **generator throughput**: patches/s by batch size on random unit-sphere patches;
* **one 2048-point shape x r** with the standard patch protocol (``upsampler.upsample``);
* for a **beam model** (``kind == "beams"``, e.g. ``sspu_lidar_x4``) the last two do not
  apply; instead the **network** alone on a full 16 x 2048 range image
  (``upsampler.predict``) and on the wanted gap pixels of a typical ``objects``-mode scan
  (``upsampler.predict_pixels``), and per source the share of scans that took the beam
  path vs the patch fallback (``result.path``, ``result.fallback``);
* **resident memory** (VmRSS of /proc/self/status) over K consecutive scans: after a
  warm-up of K/10 scans and at the end, and the growth in %.

``beam_stride`` K thins every KITTI scan to every K-th recovered ring (storage order kept,
so the densifier still recovers the beams): K = 4 gives the 16-beam ~30k-point input of
issue #10. The mean input points (and beams) per scan are reported.

Targets, patch models (issue #5; 2-core CPU, ONNX Runtime, default config): total median
<= 100 ms per KITTI scan, everything but inference <= 20 ms, the 2048-point shape <= 1 s,
RSS growth < 5 %. Beam models (issue #10; 2 CPU cores, 16-beam KITTI-like scans): total
median (decode to encode) <= 50 ms in ``objects`` mode, <= 150 ms in ``full`` mode (no
target for ``roi``), RSS growth < 5 %.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import data_dir
from ..geometry.beams import range_image, recover_rings
from ..io.pointcloud2 import decode, encode_densified, encode_structured
from .bench_codec import time_calls

__all__ = ["BEAM_TARGETS", "DEFAULT_DATA", "TARGETS", "find_scans", "format_speed_benchmark",
           "run_speed_benchmark", "sample_scan", "target_lines", "thin_beams"]

DEFAULT_DATA = data_dir() / "kitti"
KITTI_SCAN_DIRS = ("object/velodyne", "raw_2011_09_26_drive_0001/velodyne_points/data")
TARGETS = {"total_ms": 100.0, "non_inference_ms": 20.0, "shape_2048_s": 1.0,
           "rss_growth_pct": 5.0}
#: Beam models (issue #10): total median per 16-beam scan by mode, RSS growth.
BEAM_TARGETS = {"objects_total_ms": 50.0, "full_total_ms": 150.0, "rss_growth_pct": 5.0}
#: The beam count the beam-model targets are stated for (KITTI's 64 beams, stride 4).
TARGET_BEAMS = 16
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode", "total",
          "non_inference", "total_cpu")
_XYZI = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])


def find_scans(data: str | Path | None) -> list[Path]:
    """KITTI ``.bin`` scans: under ``data`` (the KITTI folders of ``../shared/data/kitti``
    when it holds them, else every ``*.bin`` below it), sorted; [] when there is none."""
    root = Path(data) if data is not None else DEFAULT_DATA
    if not root.is_dir():
        return []
    known = [p for d in KITTI_SCAN_DIRS for p in sorted((root / d).glob("*.bin"))]
    return known or sorted(root.rglob("*.bin"))


def sample_scan(seed: int = 0, n_sweep: int = 100_000) -> np.ndarray:
    """(N, 4) float32 generated scan: a 64-beam sweep (about ``n_sweep`` returns over 360
    degrees, elevations -24.8..2 degrees) hitting a ground plane 1.73 m below the sensor
    (returns beyond 80 m and upward beams are lost, as on a real LiDAR) plus 12 car-sized
    and 4 pedestrian-sized boxes (surface points, denser when nearer)."""
    rng = np.random.default_rng(seed)
    beams = 64
    per_beam = max(1, n_sweep // beams)
    elev = np.deg2rad(np.linspace(-24.8, 2.0, beams))[:, None]
    azim = np.linspace(-np.pi, np.pi, per_beam, endpoint=False)[None, :]
    rng_m = np.where(elev < 0, 1.73 / np.tan(-np.minimum(elev, -1e-6)), np.inf)
    rng_m = np.broadcast_to(rng_m + rng.normal(0, 0.01, (beams, per_beam)), (beams, per_beam))
    hit = rng_m < 80.0
    r = rng_m[hit]
    az = np.broadcast_to(azim, hit.shape)[hit]
    ground = np.c_[r * np.cos(az), r * np.sin(az), np.full(r.size, -1.73),
                   rng.uniform(0, 1, r.size)]
    objs = [ground]
    sizes = [(4.2, 1.8, 1.5)] * 12 + [(0.6, 0.6, 1.8)] * 4
    for i, (length, width, height) in enumerate(sizes):
        dist = 6.0 + 3.0 * i
        angle = rng.uniform(-np.pi, np.pi)
        n = int(np.clip(0.4 * n_sweep / dist**2, 20, 2000))
        local = rng.uniform(-0.5, 0.5, (n, 3)) * (length, width, height)
        face = rng.integers(0, 2, n)  # snap to one side face or the top: a visible surface
        local[face == 0, 1] = np.sign(local[face == 0, 1]) * width / 2
        local[face == 1, 2] = height / 2
        centre = (dist * np.cos(angle), dist * np.sin(angle), -1.73 + height / 2 + 0.05)
        objs.append(np.c_[local + centre, rng.uniform(0, 1, n)])
    return np.concatenate(objs).astype(np.float32)


def thin_beams(scan: np.ndarray, stride: int) -> tuple[np.ndarray, int]:
    """Every ``stride``-th ring of a scan stored laser by laser (KITTI ``.bin`` order).

    Args:
        scan: (N, 4) float32 points in storage order; stride: K >= 1 (1 keeps all).

    Returns:
        the (M, 4) points of the rings with ``ring % K == 0`` (storage order kept) and the
        number of rings they hold.
    """
    rings = recover_rings(scan)
    if stride == 1 or len(scan) == 0:
        return scan, int(rings.max()) + 1 if len(rings) else 0
    keep = rings % stride == 0
    return scan[keep], int(np.unique(rings[keep]).size)


def _message(scan: np.ndarray) -> SimpleNamespace:
    """A PointCloud2-like message (x, y, z, intensity float32) holding ``scan`` (N, 4)."""
    enc = encode_structured(np.ascontiguousarray(scan, dtype=np.float32).view(_XYZI).reshape(-1))
    return SimpleNamespace(header=None, height=enc.height, width=enc.width,
                           fields=list(enc.fields), is_bigendian=False,
                           point_step=enc.point_step, row_step=enc.row_step,
                           data=enc.data.tobytes(), is_dense=enc.is_dense)


def _stats(values_ms: list[float]) -> dict:
    a = np.asarray(values_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "n": int(a.size)}


def _one_scan(msg, upsampler, cfg) -> dict:
    from ..densify.beams import ScanHints
    from ..densify.densifier import densify_points

    c0 = time.process_time()
    t0 = time.perf_counter()
    cloud = decode(msg)
    t1 = time.perf_counter()
    result = densify_points(cloud.xyz, upsampler, cfg, hints=ScanHints.from_decoded(cloud))
    t2 = time.perf_counter()
    encode_densified(cloud, result.generated, neighbors=result.sources)
    t3 = time.perf_counter()
    cpu = (time.process_time() - c0) * 1e3
    tm = result.timings_ms
    total = (t3 - t0) * 1e3
    return {"decode": (t1 - t0) * 1e3, "preprocess": tm.get("preprocess", (t2 - t1) * 1e3),
            "inference": tm.get("inference", 0.0), "postprocess": tm.get("postprocess", 0.0),
            "encode": (t3 - t2) * 1e3, "total": total,
            "non_inference": total - tm.get("inference", 0.0), "total_cpu": cpu,
            "patches": result.n_patches, "generated": int(result.generated.shape[0]),
            "groups": result.n_groups, "groups_capped": result.n_groups_capped,
            "points": int(cloud.xyz.shape[0]), "path": result.path,
            "fallback": result.fallback}


def _pipeline(msgs: list, upsampler, cfg, n_scans: int, progress: bool, label: str) -> dict:
    from tqdm import tqdm

    _one_scan(msgs[0], upsampler, cfg)  # warm-up (lazy imports, allocator, ORT arena)
    rows = [_one_scan(msgs[i % len(msgs)], upsampler, cfg)
            for i in tqdm(range(n_scans), desc=label, disable=not progress, leave=False)]
    out = {s: _stats([r[s] for r in rows]) for s in STAGES}
    for key in ("patches", "generated", "groups", "groups_capped"):
        out[key] = float(np.median([r[key] for r in rows]))
    out["points_mean"] = float(np.mean([r["points"] for r in rows]))
    out["beam_share"] = float(np.mean([r["path"] == "beams" for r in rows]))
    out["fallback_share"] = float(np.mean([bool(r["fallback"]) for r in rows]))
    out["fallback_reasons"] = sorted({r["fallback"] for r in rows if r["fallback"]})[:3]
    return out


def _generator(upsampler, batches: tuple[int, ...], repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = rng.normal(size=(b, upsampler.patch_size, 3)).astype(np.float32)
        x /= np.linalg.norm(x, axis=2, keepdims=True).max(axis=1, keepdims=True)
        sec = float(np.median(time_calls(lambda x=x: upsampler.upsample_patches(x), repeats)))
        rows.append({"batch": b, "ms": sec * 1e3, "patches_per_s": b / sec})
    return rows


def _shape_2048(upsampler, repeats: int = 3) -> float:
    from ..simulation.sample_surface import torus_knot_surface

    xyz = torus_knot_surface(2048, seed=0).astype(np.float32)
    return float(np.median(time_calls(lambda: upsampler.upsample(xyz), repeats)))


def _is_beam_model(upsampler) -> bool:
    return getattr(upsampler, "kind", "patches") == "beams"


def _range_image_16(scans: list[np.ndarray], width: int = 2048) -> tuple[np.ndarray, str]:
    """(16, width) ranges (NaN where empty) of the first scan of at least 16 rings, thinned
    to 16 of them (every 4th of a 64-beam KITTI scan; an already thinned scan as it is), or
    of a generated 16-beam ground sweep without such a scan."""
    for scan in scans:
        rings = recover_rings(scan)
        n = int(rings.max()) + 1 if len(rings) else 0
        if n >= TARGET_BEAMS:
            stride = n // TARGET_BEAMS
            keep = (rings % stride == 0) & (rings // stride < TARGET_BEAMS)
            img = range_image(scan[keep, :3], rings[keep] // stride, TARGET_BEAMS, width)
            return img.range.astype(np.float32), (f"first KITTI scan, every {stride}th ring"
                                                   if stride > 1 else "first KITTI scan")
    elev = np.deg2rad(np.linspace(2.0, -24.8, TARGET_BEAMS))[:, None]
    ranges = np.where(elev < 0, 1.73 / np.tan(-np.minimum(elev, -1e-6)), np.nan)
    ranges = np.where(ranges < 80.0, ranges, np.nan)
    return (np.broadcast_to(ranges, (TARGET_BEAMS, width)).astype(np.float32),
            "generated 16-beam ground sweep")


def _wanted_pixels(scan: np.ndarray, upsampler, cfg) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray] | None:
    """The range image and wanted gap pixels (gap u, column) of ``scan`` (N, 4) densified
    in ``objects`` mode, as :func:`sspu_ros.densify.beams.densify_beams` picks them; None
    when the scan has no beam structure (it would take the fallback)."""
    from ..densify.beams import structure_of
    from ..densify.densifier import densify_points
    from ..geometry.scan_structure import ScanStructureError

    xyz = np.ascontiguousarray(scan[:, :3], dtype=np.float32)
    objects = cfg.replace(mode="objects")
    try:
        structure = structure_of(xyz, None, objects)
    except ScanStructureError:
        return None
    result = densify_points(xyz, upsampler, objects)
    image = structure.range_image(xyz)
    is_sel = np.zeros(len(xyz), dtype=bool)
    is_sel[result.selected] = True
    sel_px = (image.index >= 0) & is_sel[np.maximum(image.index, 0)]
    gap, col = np.nonzero(sel_px[:-1] | sel_px[1:])
    return image.range, gap, col


def _beam_network(upsampler, scans: list[np.ndarray], cfg, repeats: int) -> dict:
    """The beam network alone: a full 16 x 2048 range image (``predict``) and the wanted
    pixels of an ``objects``-mode scan (``predict_pixels``; the first scan, else the
    generated sample)."""
    ranges, source = _range_image_16(scans)
    full_s = float(np.median(time_calls(lambda: upsampler.predict(ranges), repeats)))
    out = {"image": list(ranges.shape), "image_source": source, "image_ms": full_s * 1e3,
           "objects_pixels": None, "objects_ms": None}
    wanted = _wanted_pixels(scans[0], upsampler, cfg) if scans else None
    if wanted is not None:
        img, gap, col = wanted
        sec = float(np.median(time_calls(lambda: upsampler.predict_pixels(img, gap, col),
                                         repeats)))
        out.update(objects_pixels=int(gap.size), objects_ms=sec * 1e3,
                   objects_image=list(img.shape))
    return out


def _rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss(msgs: list, upsampler, cfg, k: int, progress: bool) -> dict:
    from tqdm import tqdm

    warm = max(1, k // 10)
    start = None
    for i in tqdm(range(k), desc="RSS", disable=not progress, leave=False):
        if i == warm:
            start = _rss_kib()
        _one_scan(msgs[i % len(msgs)], upsampler, cfg)
    end = _rss_kib()
    if start is None or end is None:
        return {"scans": k, "warmup": warm, "start_kib": start, "end_kib": end,
                "growth_pct": None}
    return {"scans": k, "warmup": warm, "start_kib": start, "end_kib": end,
            "growth_pct": 100.0 * (end - start) / start}


def _load(model: str, ratio, backend: str, cfg):
    from ..runtime.loading import load_upsampler

    if model == "midpoint":
        return load_upsampler(model, ratio)
    return load_upsampler(model, ratio, backend, config=cfg)


def run_speed_benchmark(data: str | None = None, *, config: str | None = None,
                        overrides: dict | None = None, backends: list[str] | None = None,
                        n_scans: int = 50, rss_scans: int = 1000,
                        batches: tuple[int, ...] = (1, 8, 32), repeats: int = 5,
                        sample_points: int = 100_000, beam_stride: int = 1,
                        progress: bool = True) -> dict:
    """Run the benchmark (see the module docstring).

    Args:
        data: folder with KITTI scans (default ``../shared/data/kitti``); without scans
            only the generated sample is timed (``kitti`` is None, with the reason).
        config, overrides: the upsample configuration (its ``model`` is benchmarked).
        backends: backends to time (default torch and onnxruntime; "builtin" for midpoint).
        n_scans: timed scans per source (cycled); rss_scans: K for the memory test (0 skips).
        sample_points: size of the generated sample's sweep (plus its objects).
        beam_stride: keep every K-th ring of each KITTI scan (4: the 16-beam input of
            issue #10's targets); 1 keeps the scans as they are.
    """
    import torch

    from ..config import load_config
    from ..errors import ModelError

    cfg = load_config(config, overrides or {})
    model = cfg["model"]
    if beam_stride < 1:
        raise ValueError(f"beam_stride must be >= 1, got {beam_stride}")
    scans = find_scans(data)
    thinned = [thin_beams(np.fromfile(p, dtype="<f4").reshape(-1, 4), beam_stride)
               for p in scans]
    kitti_scans = [t[0] for t in thinned]
    kitti_msgs = [_message(x) for x in kitti_scans]
    sample = sample_scan(0, sample_points)
    sample_msgs = [_message(sample)]
    if backends is None:
        backends = ["builtin"] if model == "midpoint" else ["torch", "onnxruntime"]
    result: dict = {
        "model": model, "mode": cfg["mode"], "config": cfg.source,
        "torch_threads": torch.get_num_threads(), "n_scans": n_scans,
        "kitti_source": (f"{len(scans)} KITTI scans under {data or DEFAULT_DATA}" if scans
                         else f"no KITTI scans under {data or DEFAULT_DATA}: skipped"),
        "beam_stride": beam_stride,
        "kitti_beams_mean": (float(np.mean([t[1] for t in thinned])) if thinned else None),
        "targets": TARGETS, "kind": "patches", "backends": {},
    }
    for backend in backends:
        entry: dict = {}
        result["backends"][backend] = entry
        try:
            upsampler = _load(model, cfg["ratio"], backend, cfg)
        except (ModelError, ValueError, ImportError) as e:
            entry["unavailable"] = str(e)
            continue
        entry["name"] = upsampler.name
        entry["kind"] = "beams" if _is_beam_model(upsampler) else "patches"
        if entry["kind"] == "beams":
            result["kind"], result["targets"] = "beams", BEAM_TARGETS
        entry["kitti"] = (_pipeline(kitti_msgs, upsampler, cfg, n_scans, progress,
                                    f"{backend} KITTI") if kitti_msgs else None)
        entry["sample"] = _pipeline(sample_msgs, upsampler, cfg, n_scans, progress,
                                    f"{backend} sample")
        if entry["kind"] == "beams":
            entry["network"] = _beam_network(upsampler, kitti_scans or [sample], cfg, repeats)
        else:
            entry["generator"] = _generator(upsampler, batches, repeats)
            entry["shape_2048_s"] = _shape_2048(upsampler)
        if rss_scans > 0:
            entry["rss"] = _rss(kitti_msgs or sample_msgs, upsampler, cfg, rss_scans, progress)
    return result


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "meets" if value <= target else f"misses by {value / target:.1f}x"


def target_lines(entry: dict, result: dict) -> list[str]:
    """The verdict lines of one backend's ``entry`` against ``result['targets']``: the
    patch targets (total, all but inference) or, for a beam model, the total target of
    ``result['mode']`` (objects / full; none for roi), on the KITTI scans (else the
    sample)."""
    t = result["targets"]
    k = entry.get("kitti") or entry["sample"]
    total = k["total"]["median_ms"]
    if result.get("kind") != "beams":
        return [f"  target total <= {t['total_ms']:.0f} ms: "
                f"{_verdict(total, t['total_ms'])}; all but inference "
                f"<= {t['non_inference_ms']:.0f} ms: "
                f"{_verdict(k['non_inference']['median_ms'], t['non_inference_ms'])}"]
    mode = result["mode"]
    key = f"{mode}_total_ms"
    if key not in t:
        return [f"  target: none for mode {mode} (objects <= {t['objects_total_ms']:.0f} ms, "
                f"full <= {t['full_total_ms']:.0f} ms)"]
    line = (f"  target {mode} mode total <= {t[key]:.0f} ms (16-beam scans, 2 cores): "
            f"{_verdict(total, t[key])}")
    beams = result.get("kitti_beams_mean")
    if entry.get("kitti") is None:
        line += " [no KITTI scans: measured on the generated sample]"
    elif beams is not None and round(beams) != TARGET_BEAMS:
        line += (f" [input has {beams:.0f} beams, the target is for {TARGET_BEAMS}: "
                 "use --beam-stride 4 on 64-beam KITTI]")
    share = k.get("beam_share")
    if share is not None and share < 1.0:
        line += f" [only {share:.0%} of the scans took the beam path]"
    return [line]


def _share(s: dict) -> str:
    text = f"beam path {s['beam_share']:.0%}, fallback {s['fallback_share']:.0%}"
    if s.get("fallback_reasons"):
        text += f" ({s['fallback_reasons'][0]})"
    return text


def format_speed_benchmark(r: dict) -> str:
    stride = r.get("beam_stride", 1)
    beams = r.get("kitti_beams_mean")
    lines = [f"sspu bench speed: model {r['model']}, mode {r['mode']}, config {r['config']}, "
             f"torch threads {r['torch_threads']}, {r['n_scans']} scans per source",
             f"KITTI: {r['kitti_source']}"
             + (f", every {stride}th ring kept ({beams:.0f} beams per scan)"
                if stride > 1 and beams is not None else "")]
    t = r["targets"]
    for backend, e in r["backends"].items():
        lines.append(f"\n[{backend}] {e.get('name', '')}")
        if "unavailable" in e:
            lines.append(f"  unavailable: {e['unavailable']}")
            continue
        for source in ("kitti", "sample"):
            s = e.get(source)
            if s is None:
                continue
            if e.get("kind") == "beams":
                lines.append(f"  {source}: {s['points_mean']:.0f} input points per scan "
                             f"(mean), median {s['groups']:.0f} clusters, "
                             f"{s['generated']:.0f} generated points; {_share(s)}")
            else:
                lines.append(f"  {source}: {s.get('points_mean', 0):.0f} input points per "
                             f"scan (mean), median {s['patches']:.0f} patches, "
                             f"{s['groups']:.0f} clusters ({s['groups_capped']:.0f} capped), "
                             f"{s['generated']:.0f} generated points per scan")
            lines.append(f"    {'stage':<14} {'median ms':>10} {'p95 ms':>10}")
            for stage in STAGES:
                lines.append(f"    {stage:<14} {s[stage]['median_ms']:10.1f} "
                             f"{s[stage]['p95_ms']:10.1f}")
        lines.extend(target_lines(e, r))
        if "network" in e:
            n = e["network"]
            lines.append(f"  network: full {n['image'][0]} x {n['image'][1]} range image "
                         f"{n['image_ms']:.1f} ms ({n['image_source']})")
            if n["objects_pixels"] is None:
                lines.append("  network: objects-mode wanted pixels n/a (no beam structure)")
            else:
                h, w = n["objects_image"]
                share = n["objects_pixels"] / max(1, (h - 1) * w)
                lines.append(f"  network: objects-mode wanted pixels {n['objects_pixels']} "
                             f"({share:.1%} of the {h - 1} x {w} gap pixels): "
                             f"{n['objects_ms']:.1f} ms")
        else:
            lines.append("  generator: " + ", ".join(
                f"batch {g['batch']}: {g['patches_per_s']:.1f} patches/s ({g['ms']:.1f} ms)"
                for g in e["generator"]))
            lines.append(f"  2048-point shape: {e['shape_2048_s']:.3f} s "
                         f"({_verdict(e['shape_2048_s'], t['shape_2048_s'])})")
        if "rss" in e:
            m = e["rss"]
            g = m["growth_pct"]
            lines.append(f"  RSS over {m['scans']} scans: {m['start_kib'] / 1024:.0f} MiB after "
                         f"{m['warmup']} warm-up scans -> {m['end_kib'] / 1024:.0f} MiB "
                         f"(growth {g:+.2f} %: {_verdict(max(g, 0.0), t['rss_growth_pct'])})"
                         if g is not None else "  RSS: unavailable (no /proc/self/status)")
    return "\n".join(lines)
