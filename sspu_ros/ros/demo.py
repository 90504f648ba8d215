"""``sspu demo``: the whole pipeline on the project's own sample recording.

1. **Sample recording**: ``frames`` scans of a simulated sparse LiDAR (16 beams by default,
   :func:`sspu_ros.simulation.lidar_sim.simulate_scan`) over the procedural scene
   (:func:`sspu_ros.simulation.lidar_sim.procedural_scene`), 10 Hz, written as PointCloud2 (x, y, z,
   intensity float32, ring uint16) to ``OUT/sample_recording`` (rosbag2, mcap).
2. **Live**: the node (``python -m sspu_ros.ros.node``, a separate process, default
   parameters or ``--config``/``--model``) on a private ROS domain; the recording is
   played into its input at the recorded rate with stamps set to the publish time, and its
   output and debug topics are recorded to ``OUT/densified_recording``.
   **--no-ros** (or rclpy missing, said so): the core densifier runs on each scan in this
   process instead, written to the same output bag.
3. **Report**: ``OUT/demo.png`` (bird's-eye view before/after and a side view of the object
   that gained the most points) and ``OUT/latency.json`` (end-to-end latency = receive time
   minus the input stamp, the node's own processing times, scans dropped), also printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CloudFileError
from ..io.bags import POINTCLOUD2, BagWriter, pointcloud2_message, read_pointclouds
from ..io.pointcloud2 import FLOAT32, UINT16, EncodedCloud, Field, fields_dtype

__all__ = ["make_sample_recording", "run_demo"]

INPUT_TOPIC = "/sspu_demo/points"
OUTPUT_TOPIC = "/sspu_demo/points_dense"
NODE_NAME = "upsample_node"
DEBUG = ("processing_time/total_ms", "processing_time/inference_ms", "pipeline_latency_ms")
FLOAT64 = "std_msgs/msg/Float64"
START_NS = 1_700_000_000 * 1_000_000_000
SAMPLE_FIELDS = (Field("x", 0, FLOAT32), Field("y", 4, FLOAT32), Field("z", 8, FLOAT32),
                 Field("intensity", 12, FLOAT32), Field("ring", 16, UINT16))
SAMPLE_STEP = 20


def _say(msg: str) -> None:
    print(f"sspu demo: {msg}", flush=True)


def make_sample_recording(path: Path, *, frames: int = 20, beams: int = 16, seed: int = 0,
                          rate_hz: float = 10.0) -> list:
    """Write the sample recording; returns the :class:`~sspu_ros.simulation.lidar_sim.SimScan` s.

    The sensor stands still in the procedural scene; each frame has its own range noise.
    """
    from ..simulation.lidar_sim import procedural_scene, simulate_scan

    scene = procedural_scene(seed)
    scans = []
    dt = fields_dtype(SAMPLE_FIELDS, SAMPLE_STEP)
    with BagWriter(path, storage="mcap") as writer:
        conn = writer.add_connection(INPUT_TOPIC, POINTCLOUD2)
        for i in range(frames):
            scan = simulate_scan(scene, beams=beams, seed=seed * 1000 + i)
            data = np.zeros(len(scan) * SAMPLE_STEP, np.uint8)
            pts = data.view(dt)
            pts["x"], pts["y"], pts["z"] = scan.xyz.T
            pts["intensity"] = scan.intensity
            pts["ring"] = scan.ring
            enc = EncodedCloud(fields=SAMPLE_FIELDS, height=1, width=len(scan),
                               point_step=SAMPLE_STEP, row_step=len(scan) * SAMPLE_STEP,
                               is_bigendian=False, is_dense=True, data=data)
            stamp = START_NS + int(i * 1e9 / rate_hz)
            writer.write_msg(conn, stamp, pointcloud2_message(enc, stamp_ns=stamp,
                                                              frame_id="lidar"))
            scans.append(scan)
    return scans


# --------------------------------------------------------------------------- live run


def _node_command(args_cfg: dict) -> list[str]:
    cmd = [sys.executable, "-m", "sspu_ros.ros.node", "--ros-args",
           "-r", f"~/input/pointcloud:={INPUT_TOPIC}",
           "-r", f"~/output/pointcloud:={OUTPUT_TOPIC}"]
    if args_cfg.get("config"):
        cmd += ["--params-file", str(args_cfg["config"])]
    for name in ("model", "ratio", "backend"):
        if args_cfg.get(name) is not None:
            cmd += ["-p", f"{name}:={args_cfg[name]}"]
    return cmd


def _run_live(sample: Path, out_bag: Path, node_args: dict, *, rate: float,
              startup_timeout: float) -> dict:
    """Node process + play + record; returns counts and the node's log tail."""
    from .bag_player import _init_rclpy, play, record

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           "FASTDDS_BUILTIN_TRANSPORTS")})
    log_path = out_bag.parent / "node.log"
    log = open(log_path, "w")
    node = subprocess.Popen(_node_command(node_args), env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    _say(f"started the node (pid {node.pid}, ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}): "
         f"{INPUT_TOPIC} -> {OUTPUT_TOPIC}; log {log_path}")
    rclpy = _init_rclpy()
    topics = [OUTPUT_TOPIC] + [f"/{NODE_NAME}/debug/{d}" for d in DEBUG]
    types = {OUTPUT_TOPIC: POINTCLOUD2, **{t: FLOAT64 for t in topics[1:]}}
    ready, stop = threading.Event(), threading.Event()
    result: dict[str, Any] = {}
    live: dict[str, int] = {}

    def _record() -> None:
        try:
            result["counts"] = record(out_bag, topics, msgtypes=types, ready=ready, stop=stop,
                                      live_counts=live)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e
            ready.set()

    thread = threading.Thread(target=_record, daemon=True)
    thread.start()
    try:
        ready.wait(30)
        if "error" in result:
            raise result["error"]
        _wait_for_node(rclpy, node, log_path, startup_timeout)
        t0 = time.monotonic()
        stats = play(sample, rate=rate, restamp=True, wait_for_subscribers=10.0,
                     progress=False)
        # let the last scans through the node: stop 2 s after the output goes quiet
        quiet_since, last = time.monotonic(), -1
        while time.monotonic() - quiet_since < 2.0 and time.monotonic() - t0 < 120:
            time.sleep(0.1)
            n = live.get(OUTPUT_TOPIC, 0)
            if n != last:
                quiet_since, last = time.monotonic(), n
    finally:
        stop.set()
        thread.join(10)
        node.send_signal(2)  # SIGINT: the node shuts down cleanly
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        log.close()
        if rclpy.ok():
            rclpy.shutdown()
    if "error" in result:
        raise result["error"]
    return {"played": sum(stats.published.values()), "counts": result.get("counts", {}),
            "node_exit": node.returncode, "node_log": str(log_path)}


def _wait_for_node(rclpy, node: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Until the node subscribes to the input topic and publishes the output topic, then a
    short settle: the node skips scans while it sees no subscriber of its output
    (``process_without_subscribers: false``), so the recorder must be matched before the
    first scan is played. A node that exits or never gets there ends the demo with its
    log's last line."""
    probe = rclpy.create_node(f"sspu_demo_probe_{os.getpid()}")
    try:
        deadline = time.monotonic() + timeout
        while (probe.count_subscribers(INPUT_TOPIC) == 0
               or probe.count_publishers(OUTPUT_TOPIC) == 0):
            if node.poll() is not None:
                raise CloudFileError(f"the node exited with status {node.returncode}: "
                                     f"{_last_line(log_path)}")
            if time.monotonic() > deadline:
                raise CloudFileError(f"the node did not subscribe to {INPUT_TOPIC} within "
                                     f"{timeout:g} s (log: {log_path})")
            time.sleep(0.05)
        time.sleep(1.0)  # discovery is not simultaneous: let the node match the recorder
    finally:
        probe.destroy_node()


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return f"(no log at {path})"
    return lines[-1] if lines else f"(empty log {path})"


# --------------------------------------------------------------------------- no-ROS run


def _run_core(sample: Path, out_bag: Path, cfg) -> dict:
    """The core densifier on every scan, in this process; same output bag layout."""
    from ..densify.bag import densify_message
    from ..io.bags import typestore
    from ..runtime.loading import load_upsampler

    upsampler = load_upsampler(cfg["model"], cfg["ratio"], config=cfg)
    store = typestore()
    float64 = store.types[FLOAT64]
    with BagWriter(out_bag, storage="mcap") as writer:
        conn = writer.add_connection(OUTPUT_TOPIC, POINTCLOUD2)
        total = writer.add_connection(f"/{NODE_NAME}/debug/processing_time/total_ms", FLOAT64)
        n = 0
        for item in read_pointclouds(sample, INPUT_TOPIC):
            t0 = time.perf_counter()
            dense, _ = densify_message(item.msg, upsampler, cfg)
            ms = (time.perf_counter() - t0) * 1e3
            stamp = item.timestamp + int(ms * 1e6)  # "received" when processing is done
            writer.write_msg(conn, stamp, dense)
            writer.write_msg(total, stamp, float64(data=ms))
            n += 1
    return {"played": n, "counts": dict(writer.counts), "node_exit": None, "node_log": None}


# --------------------------------------------------------------------------- report


def _percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "median": round(float(np.median(v)), 2),
            "p95": round(float(np.percentile(v, 95)), 2), "max": round(float(v.max()), 2)}


def _float_topic(bag: Path, topic: str) -> list[float]:
    from ..io.bags import open_bag

    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [float(reader.deserialize(raw, c.msgtype).data)
                for c, _, raw in reader.messages(connections=conns)]


def latency_summary(sample: Path, out_bag: Path, run: dict, *, mode: str) -> dict:
    """Counts and latencies of a demo run (ms)."""
    outputs = list(read_pointclouds(out_bag, OUTPUT_TOPIC))
    inputs = {(c.msg.header.stamp.sec, c.msg.header.stamp.nanosec): c
              for c in read_pointclouds(sample, INPUT_TOPIC)}
    e2e = [(o.timestamp - (o.msg.header.stamp.sec * 10**9 + o.msg.header.stamp.nanosec)) / 1e6
           for o in outputs]
    gen = [int(o.cloud.points["generated"].sum()) for o in outputs]
    n_in = [len(o.cloud.xyz) - g for o, g in zip(outputs, gen, strict=True)]
    summary = {
        "mode": mode,
        "scans_recorded": len(inputs),
        "scans_played": run["played"],
        "scans_densified": len(outputs),
        "scans_dropped": run["played"] - len(outputs),
        "input_points_mean": round(float(np.mean(n_in)), 1) if n_in else 0,
        "generated_points_mean": round(float(np.mean(gen)), 1) if gen else 0,
        "end_to_end_ms": _percentiles(e2e) if mode == "ros" else None,
        "node_total_ms": _percentiles(_float_topic(
            out_bag, f"/{NODE_NAME}/debug/processing_time/total_ms")),
    }
    if mode == "ros":
        summary["node_inference_ms"] = _percentiles(_float_topic(
            out_bag, f"/{NODE_NAME}/debug/processing_time/inference_ms"))
        summary["node_pipeline_latency_ms"] = _percentiles(_float_topic(
            out_bag, f"/{NODE_NAME}/debug/pipeline_latency_ms"))
    return summary


def _best_object(scan, dense_xyz: np.ndarray, generated: np.ndarray):
    """(object id, (3,) centre, half-size) of the object that gained the most points."""
    best = (None, None, 0.0, -1)
    for oid in np.unique(scan.object_id[scan.object_id > 0]):
        pts = scan.xyz[scan.object_id == oid]
        lo, hi = pts.min(0) - 0.3, pts.max(0) + 0.3
        inside = np.all((dense_xyz >= lo) & (dense_xyz <= hi), axis=1)
        gained = int((inside & generated).sum())
        if gained > best[3]:
            best = (int(oid), (lo + hi) / 2, float((hi - lo)[:2].max() / 2 + 0.5), gained)
    return best[:3]


def write_figure(path: Path, scan, dense_xyz: np.ndarray, generated: np.ndarray,
                 summary: dict) -> dict:
    """Bird's-eye view before/after and a side view of the object that gained the most
    points, before/after (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 11), dpi=90)
    span = 32.0
    orig = dense_xyz[~generated]
    new = dense_xyz[generated]
    kw = dict(s=0.8, linewidths=0)
    for k, (title, layers) in enumerate((
            (f"input: {len(orig)} points ({scan.elevations_deg.size}-beam simulated scan)",
             [(orig, "#1f4e79")]),
            (f"densified: +{len(new)} generated points (orange)",
             [(orig, "#1f4e79"), (new, "#e67e22")]))):
        ax = fig.add_subplot(2, 2, k + 1)
        for pts, color in layers:
            ax.scatter(pts[:, 0], pts[:, 1], c=color, **kw)
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
    oid, centre, half = _best_object(scan, dense_xyz, generated)
    info = {"object_id": oid}
    if oid is not None:
        near = np.all(np.abs(dense_xyz[:, :2] - centre[:2]) <= half, axis=1)
        near &= dense_xyz[:, 2] > float(scan.xyz[scan.object_id == 0, 2].mean()) + 0.15
        info.update(object_centre=[round(float(c), 2) for c in centre],
                    object_points_before=int((near & ~generated).sum()),
                    object_points_after=int(near.sum()))
        # side view, as the sensor sees the object: across = along the azimuth tangent,
        # up = z; the real beams are the rows of blue points, generated points between
        az = np.arctan2(centre[1], centre[0])
        tangent = np.array([-np.sin(az), np.cos(az)])
        for k, (title, mask) in enumerate((
                (f"side view, object {oid}: {info['object_points_before']} points "
                 f"on {scan.elevations_deg.size} beams", near & ~generated),
                (f"side view densified: {info['object_points_after']} points "
                 "(orange: between the beams)", near))):
            ax = fig.add_subplot(2, 2, 3 + k)
            pts = dense_xyz[mask]
            across = (pts[:, :2] - centre[:2]) @ tangent
            gen = generated[mask]
            ax.scatter(across[~gen], pts[~gen, 2], c="#1f4e79", s=5, linewidths=0)
            if gen.any():
                ax.scatter(across[gen], pts[gen, 2], c="#e67e22", s=5, linewidths=0)
            ax.set_xlim(-half, half)
            if len(pts):
                ax.set_ylim(float(pts[:, 2].min()) - 0.3, float(pts[:, 2].max()) + 0.3)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("across the line of sight [m]")
            ax.set_ylabel("z [m]")
            ax.set_title(title, fontsize=10)
    e2e = summary.get("end_to_end_ms") or summary.get("node_total_ms") or {}
    fig.suptitle(f"sspu demo ({summary['mode']}): {summary['scans_densified']}/"
                 f"{summary['scans_played']} scans densified, latency median "
                 f"{e2e.get('median', 'n/a')} ms", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return info


def _fmt(p: dict | None) -> str:
    if not p or not p.get("n"):
        return "n/a"
    return f"median {p['median']} ms, p95 {p['p95']} ms, max {p['max']} ms (n={p['n']})"


def run_demo(out: str | Path = "out/demo", *, frames: int = 20, beams: int = 16,
             rate: float = 1.0, no_ros: bool = False, config: str | None = None,
             model: str | None = None, ratio: int | None = None,
             backend: str | None = None, seed: int = 0,
             startup_timeout: float = 60.0) -> dict:
    """The demo; see the module docstring. Returns the latency summary (+ file paths)."""
    from ..config import load_config

    overrides = {k: v for k, v in (("model", model), ("ratio", ratio), ("backend", backend))
                 if v is not None}
    cfg = load_config(config, overrides)  # validates --config/--model before anything runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sample, dense_bag = out / "sample_recording", out / "densified_recording"
    for p in (sample, dense_bag):  # the demo's own products of an earlier run
        if p.exists():
            shutil.rmtree(p)
    t0 = time.monotonic()
    scans = make_sample_recording(sample, frames=frames, beams=beams, seed=seed)
    _say(f"sample recording {sample}: {frames} scans of a {beams}-beam simulated LiDAR "
         f"({np.mean([len(s) for s in scans]):.0f} points each, 10 Hz)")
    mode = "ros"
    if not no_ros:
        try:
            import rclpy  # noqa: F401
        except ImportError:
            _say("rclpy is not importable: running the core densifier directly (as --no-ros)")
            no_ros = True
    if no_ros:
        mode = "no-ros"
        _say(f"--no-ros: densifying each scan in this process (model {cfg['model']})")
        run = _run_core(sample, dense_bag, cfg)
    else:
        run = _run_live(sample, dense_bag, {"config": config, "model": model, "ratio": ratio,
                                            "backend": backend},
                        rate=rate, startup_timeout=startup_timeout)
    summary = latency_summary(sample, dense_bag, run, mode=mode)
    outputs = list(read_pointclouds(dense_bag, OUTPUT_TOPIC))
    if not outputs:
        raise CloudFileError(f"no densified scan came back (node log: {run['node_log']})")
    last = outputs[len(outputs) // 2]
    scan = scans[0]  # the scene is static: any scan tells which points belong to which object
    generated = last.cloud.points["generated"].astype(bool)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _say("matplotlib is not installed (pip install matplotlib, or the package's [eval] "
             "extra): no demo.png")
        fig, png = {"object_id": None}, None
    else:
        png = out / "demo.png"
        fig = write_figure(png, scan, last.cloud.xyz, generated, summary)
    summary.update(figure=str(png) if png else None, close_up=fig, sample=str(sample),
                   output=str(dense_bag), node_log=run["node_log"],
                   node_exit_status=run["node_exit"],
                   model=cfg["model"], config=cfg.source,
                   wall_seconds=round(time.monotonic() - t0, 1))
    (out / "latency.json").write_text(json.dumps(summary, indent=2))
    _say(f"densified {summary['scans_densified']} of {summary['scans_played']} played scans "
         f"({summary['scans_dropped']} dropped), +{summary['generated_points_mean']:.0f} "
         f"points per scan on {summary['input_points_mean']:.0f}")
    if summary["end_to_end_ms"]:
        _say(f"end-to-end latency (receive - input stamp): {_fmt(summary['end_to_end_ms'])}")
    _say(f"node processing total: {_fmt(summary['node_total_ms'])}")
    if fig.get("object_id") is not None:
        _say(f"side view of object {fig['object_id']}: {fig['object_points_before']} -> "
             f"{fig['object_points_after']} points")
    _say(f"wrote {png or '(no PNG)'}, {out / 'latency.json'}, {dense_bag} "
         f"({summary['wall_seconds']} s)")
    return summary
