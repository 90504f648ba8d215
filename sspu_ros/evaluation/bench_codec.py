"""Benchmark of the PointCloud2 codec (``sspu bench codec``).

Measures, on one KITTI-sized scan (x, y, z, intensity float32, 16 bytes per point):

* ``decode``: PointCloud2-like message (``data`` as bytes) -> :class:`DecodedCloud`;
* ``encode_passthrough``: :func:`encode_densified` with no generated point;
* ``decode_plus_encode``: both, per iteration (the budget the node pays per scan when it
  has nothing to add; target <= 5 ms median);
* ``encode_generated``: :func:`encode_densified` with ``n_generated`` points in 8 object-like
  patches (neighbour search + attribute interpolation), and the same with caller-supplied
  neighbours;
* when rclpy imports: :func:`to_pointcloud2` into a real ``sensor_msgs.msg.PointCloud2``,
  decoding from it, and, with fewer repeats, the slow ways of filling its ``data``.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import data_dir
from ..geometry.knn_numpy import nearest_neighbors
from ..io.pointcloud2 import decode, encode_densified, encode_structured

__all__ = ["DEFAULT_SCAN", "format_codec_benchmark", "run_codec_benchmark"]

DEFAULT_SCAN = data_dir() / "kitti" / "object" / "velodyne" / "000000.bin"
TARGET_MS = 5.0
_XYZI = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])


def _synthetic_scan(n: int = 120_000, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` float32 x, y, z, intensity: a 64-beam-like sweep over a ground plane."""
    rng = np.random.default_rng(seed)
    beams = 64
    per_beam = n // beams
    elev = np.deg2rad(np.linspace(-24.8, 2.0, beams))[:, None]
    azim = np.linspace(-np.pi, np.pi, per_beam, endpoint=False)[None, :]
    ground = np.where(elev < 0, 1.73 / np.tan(-np.minimum(elev, -1e-3)), 80.0)
    rng_m = np.minimum(ground, rng.uniform(3, 80, (beams, per_beam)))
    x = rng_m * np.cos(elev) * np.cos(azim)
    y = rng_m * np.cos(elev) * np.sin(azim)
    z = rng_m * np.sin(elev)
    scan = np.stack([x, y, z, rng.uniform(0, 1, (beams, per_beam))], axis=-1).reshape(-1, 4)
    extra = n - scan.shape[0]
    if extra:
        scan = np.concatenate([scan, scan[:extra]])
    return scan.astype(np.float32)


def _stats(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "repeats": len(ms),
    }


def time_calls(fn, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _time(fn, repeats: int) -> dict:
    return _stats(time_calls(fn, repeats))


def _patches(xyz: np.ndarray, n_generated: int, rng) -> np.ndarray:
    """``(n_generated, 3)`` points in 8 object-like patches: copies of the originals nearest
    to 8 centres within 30 m, jittered by 2 cm."""
    if n_generated == 0 or xyz.shape[0] == 0:
        return np.empty((0, 3))
    near = np.flatnonzero(np.linalg.norm(xyz[:, :2], axis=1) < 30.0)
    pool = near if near.size >= 8 else np.arange(xyz.shape[0])
    centres = xyz[rng.choice(pool, 8, replace=False)]
    per = -(-n_generated // 8)
    _, idx = nearest_neighbors(xyz, centres, k=min(per, xyz.shape[0]))
    base = xyz[np.asarray(idx).reshape(-1)][:n_generated]
    reps = -(-n_generated // base.shape[0])
    base = np.tile(base, (reps, 1))[:n_generated]
    return base + rng.normal(scale=0.02, size=base.shape)


def run_codec_benchmark(scan_path: str | None, repeats: int = 50,
                        n_generated: int = 10000, message_types=None) -> dict:
    """Time the codec on one scan; see the module docstring for what is measured.

    Args:
        scan_path: a KITTI ``.bin`` (float32 N x 4); None: the dev scan
            ``../shared/data/kitti/object/velodyne/000000.bin`` when present, else a synthetic
            120k-point scan.
        repeats: timed repetitions of the fast operations (the slow ones use fewer).
        n_generated: generated points for the densified encode.

    Returns:
        dict with ``source``, ``n_points``, per-operation ``{median_ms, p95_ms, repeats}``
        entries, ``target_ms``/``meets_target`` for decode + pass-through encode, and
        ``rclpy`` (a dict of timings, or None with ``rclpy_reason``).
    """
    repeats = max(1, int(repeats))
    if scan_path is not None:
        path = Path(scan_path)
        if not path.is_file():
            raise FileNotFoundError(f"scan not found: {path}")
        scan = np.fromfile(path, dtype="<f4").reshape(-1, 4)
        source = f"KITTI scan {path}"
    elif DEFAULT_SCAN.is_file():
        scan = np.fromfile(DEFAULT_SCAN, dtype="<f4").reshape(-1, 4)
        source = f"KITTI scan {DEFAULT_SCAN}"
    else:
        scan = _synthetic_scan()
        source = f"synthetic 120k-point scan ({DEFAULT_SCAN} not found)"

    enc_in = encode_structured(np.ascontiguousarray(scan).view(_XYZI).reshape(-1))
    msg = SimpleNamespace(
        header=None, height=enc_in.height, width=enc_in.width, fields=list(enc_in.fields),
        is_bigendian=False, point_step=enc_in.point_step, row_step=enc_in.row_step,
        data=enc_in.data.tobytes(), is_dense=enc_in.is_dense,
    )
    cloud = decode(msg)
    empty = np.empty((0, 3))
    rng = np.random.default_rng(0)
    gen = _patches(cloud.xyz, int(n_generated), rng)
    slow_repeats = max(3, min(repeats, 20))

    result: dict = {
        "source": source,
        "n_points": int(scan.shape[0]),
        "point_step": int(enc_in.point_step),
        "n_generated": int(gen.shape[0]),
        "target_ms": TARGET_MS,
    }
    result["decode"] = _time(lambda: decode(msg), repeats)
    result["encode_passthrough"] = _time(lambda: encode_densified(cloud, empty), repeats)
    result["decode_plus_encode"] = _time(lambda: encode_densified(decode(msg), empty), repeats)
    result["meets_target"] = result["decode_plus_encode"]["median_ms"] <= TARGET_MS
    result["encode_generated"] = _time(lambda: encode_densified(cloud, gen), slow_repeats)
    if gen.shape[0]:
        _, nbrs = nearest_neighbors(cloud.xyz, gen, k=3)
        result["encode_generated_given_neighbors"] = _time(
            lambda: encode_densified(cloud, gen, neighbors=nbrs), slow_repeats)

    result["rclpy"], result["rclpy_reason"] = _rclpy_benchmark(
        encode_densified(cloud, empty), repeats, message_types)
    return result


def _rclpy_benchmark(encoded, repeats: int, message_types) -> tuple[dict | None, str]:
    """``message_types``: (PointCloud2, PointField, Header) classes of rclpy
    (:func:`sspu_ros.ros.messages.pointcloud2_types`), or a reason string when ROS is not
    importable: the core numbers still stand."""
    if message_types is None or isinstance(message_types, str):
        return None, message_types or "rclpy message types not given"
    PointCloud2, PointField, Header = message_types  # noqa: N806 - message classes
    from ..io.pointcloud2_message import bytes_to_uint8_array, to_pointcloud2

    header = Header(frame_id="velodyne")
    out: dict = {"data_bytes": int(encoded.data.nbytes)}
    msg = to_pointcloud2(encoded, header, PointCloud2, PointField)
    out["check_fields"] = bool(getattr(msg, "_check_fields", False))
    out["to_pointcloud2"] = _time(
        lambda: to_pointcloud2(encoded, header, PointCloud2, PointField), repeats)

    def assign(value_fn):
        def run():
            msg.data = value_fn()
        return run

    data = encoded.data
    out["assign_array_frombytes"] = _time(assign(lambda: bytes_to_uint8_array(data)), repeats)
    out["decode_from_rclpy_msg"] = _time(lambda: decode(msg), repeats)
    few = 3
    out["assign_bytes"] = _time(assign(data.tobytes), few)
    out["assign_memoryview"] = _time(assign(lambda: memoryview(data)), few)
    out["assign_list"] = _time(assign(data.tolist), few)
    return out, ""


def _row(name: str, stats: dict | None) -> str:
    if stats is None:
        return f"  {name:<40} n/a"
    return (f"  {name:<40} median {stats['median_ms']:9.3f} ms   p95 {stats['p95_ms']:9.3f} ms"
            f"   (x{stats['repeats']})")


def format_codec_benchmark(result: dict) -> str:
    """Human-readable report of :func:`run_codec_benchmark`'s result."""
    lines = [
        "PointCloud2 codec benchmark",
        f"  source: {result['source']}",
        f"  points: {result['n_points']} x {result['point_step']} bytes;"
        f" generated: {result['n_generated']}",
        _row("decode", result["decode"]),
        _row("encode pass-through (0 generated)", result["encode_passthrough"]),
        _row("decode + encode pass-through", result["decode_plus_encode"]),
        f"  target: decode + encode median <= {result['target_ms']:.1f} ms: "
        + ("MET" if result["meets_target"] else "NOT MET"),
        _row(f"encode with {result['n_generated']} generated", result["encode_generated"]),
    ]
    if "encode_generated_given_neighbors" in result:
        lines.append(_row("  same, neighbours given by caller",
                          result["encode_generated_given_neighbors"]))
    r = result.get("rclpy")
    if r is None:
        lines.append(f"  rclpy: skipped: {result.get('rclpy_reason', '')}")
    else:
        lines += [
            f"  rclpy sensor_msgs/PointCloud2 ({r['data_bytes']} data bytes, field checks "
            f"{'on' if r['check_fields'] else 'off'}):",
            _row("to_pointcloud2 (adapter, whole message)", r["to_pointcloud2"]),
            _row("msg.data = array('B').frombytes [used]", r["assign_array_frombytes"]),
            _row("decode(rclpy msg)", r["decode_from_rclpy_msg"]),
            _row("msg.data = ndarray.tobytes()  [slow]", r["assign_bytes"]),
            _row("msg.data = memoryview(ndarray)  [slow]", r["assign_memoryview"]),
            _row("msg.data = ndarray.tolist()  [slow]", r["assign_list"]),
        ]
    return "\n".join(lines)
