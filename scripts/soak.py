#!/usr/bin/env python3
"""Soak ``upsample_node``: its own process, real DDS on loopback, real KITTI scans.

The node runs as ``python -m sspu_ros.ros.node --ros-args ...`` (as ``sspu demo`` starts
it, with the launch file's ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``); this script
publishes the KITTI scans of ``../shared/data/kitti`` (cycled, stamped like a sensor:
start time + i / rate, so the node's gap counting is exact) at ``--rate`` Hz for
``--minutes``, subscribes to the output and to ``/diagnostics``, and samples the node
process's RSS and CPU time from ``/proc``. It
reports: scans sent, received back, the node's own counts (received, published, dropped,
rejected, failed, skipped, pending; missing = gaps in the stamps it saw), whether every
scan sent is accounted for, the round-trip latency percentiles (output receive time minus
the input stamp), RSS over time (first sample, after warm-up, last; growth in %) and the
node's CPU use. Progress goes to stderr every ``--progress-s``; ``--json PATH`` (``-``:
stdout) writes the report with the RSS/CPU time series.

    PYTHONPATH=. .venv/bin/python scripts/soak.py --minutes 10 --rate 10 --json soak.json
    PYTHONPATH=. .venv/bin/python scripts/soak.py --minutes 2 -p model:=sspu_x4

Discovery stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on
``--domain-id`` (default: ``$ROS_DOMAIN_ID``, else a random one in 101..232). This is a
benchmark, not a test: figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KITTI = REPO.parent / "shared" / "data" / "kitti"
INPUT, OUTPUT = "/soak/points", "/soak/points_dense"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
OUTCOMES = ("published", "skipped", "dropped", "rejected", "failed", "pending")
DIAG_KEYS = {  # report name -> /diagnostics key(s) of upsample_node (older nodes' second)
    "received": "scans received", "published": "scans published",
    "skipped": "scans skipped (no subscriber)",
    "dropped": "scans dropped (newer scan arrived while busy)",
    "rejected": "scans rejected (malformed)", "failed": "scans failed (processing error)",
    "pending": "scans pending (waiting or in processing)",
    "missing": ("scans missing (gaps in stamps)", "scans dropped (gaps in stamps)"),
    "out_of_order": "scans out of order (stamps)",
}


def _say(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def kitti_scans(root: Path, limit: int) -> list[Path]:
    """Full 64-beam scans: raw drives' ``velodyne_points/data`` (consecutive frames) first,
    then ``object/velodyne``; camera-FOV crops (``*_fov``) are left out."""
    scans = sorted(root.glob("**/velodyne_points/data/*.bin"))
    scans += sorted(root.glob("**/velodyne/*.bin"))
    scans = [s for s in scans if not any(part.endswith("_fov") for part in s.parts)]
    if not scans:
        raise SystemExit(f"soak: no KITTI scans (velodyne/*.bin, float32 N x 4) under {root}; "
                         "the shared dev data sits beside the repository (../shared/data/kitti)"
                         " or pass --kitti DIR")
    return scans[:limit]


def _messages(paths: list[Path], beam_stride: int = 1) -> list:
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2 import encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    out = []
    for p in paths:
        xyzi = np.fromfile(p, dtype="<f4").reshape(-1, 4)
        if beam_stride > 1:  # every k-th laser ring, storage order kept (64 -> 16 beams)
            from sspu_ros.geometry.beams import recover_rings

            xyzi = xyzi[recover_rings(xyzi) % beam_stride == 0]
        pts = np.zeros(len(xyzi), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                         ("intensity", "<f4")])
        for k, name in enumerate(("x", "y", "z", "intensity")):
            pts[name] = xyzi[:, k]
        out.append(to_pointcloud2(encode_structured(pts), Header(frame_id="velo_link"),
                                  PointCloud2, PointField))
    return out


class ProcessSampler(threading.Thread):
    """RSS (MB) and CPU time (s) of one process from /proc every ``period`` seconds."""

    def __init__(self, pid: int, period: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, rss MB, cpu s)
        self.loads: list[tuple[float, float]] = []  # (monotonic, 1-min load average)
        self.stop = threading.Event()

    def read(self) -> tuple[float, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        rss_kb = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS"))
        fields = stat.rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        return rss_kb / 1024.0, cpu_s

    def sample(self) -> None:
        got = self.read()
        if got is not None:
            self.samples.append((time.monotonic(), *got))
            self.loads.append((time.monotonic(), os.getloadavg()[0]))

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()

    def cpu_percent(self, t0: float, t1: float) -> float | None:
        """Mean CPU use (100 = one core) between the samples nearest t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return None
        (ta, _, ca), (tb, _, cb) = inside[0], inside[-1]
        return 100.0 * (cb - ca) / (tb - ta) if tb > ta else None


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(max(values)), 1)}


def run(args) -> dict:
    paths = kitti_scans(Path(args.kitti), args.frames)
    domain = args.domain_id if args.domain_id is not None else int(
        os.environ.get("ROS_DOMAIN_ID") or random.SystemRandom().randint(101, 232))
    env_ros = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    if args.transports != "DEFAULT":
        env_ros["FASTDDS_BUILTIN_TRANSPORTS"] = args.transports
    os.environ.update(env_ros)  # this process's participant too (read at rclpy.init)
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    if args.transports == "DEFAULT":
        os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from sspu_ros.ros.node import DIAGNOSTIC_NAME

    node_cmd = [sys.executable, "-m", "sspu_ros.ros.node", "--ros-args",
                "-r", f"~/input/pointcloud:={INPUT}", "-r", f"~/output/pointcloud:={OUTPUT}"]
    for p in args.param:
        node_cmd += ["-p", p]
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    _say(f"{len(paths)} KITTI scans from {args.kitti}; node: {' '.join(node_cmd[1:])}; "
         f"ROS_DOMAIN_ID {domain}, transports {args.transports}; log {log_path}")
    messages = _messages(paths, args.beam_stride)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(node_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = ProcessSampler(proc.pid, args.sample_s)

    rclpy.init()
    io = rclpy.create_node(f"soak_{os.getpid()}")
    ex = rclpy.executors.SingleThreadedExecutor()
    ex.add_node(io)
    stamp_to_seq: dict[tuple[int, int], int] = {}
    back: list[tuple[int, float]] = []  # (seq, latency ms)
    diags: list[tuple[float, dict]] = []

    def on_output(msg) -> None:
        now_ns = time.time_ns()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        stamp_ns = key[0] * 10**9 + key[1]
        back.append((stamp_to_seq.get(key, -1), (now_ns - stamp_ns) * 1e-6))

    def on_diagnostics(arr) -> None:
        for st in arr.status:
            if st.name == DIAGNOSTIC_NAME and st.hardware_id == INPUT:
                diags.append((time.monotonic(), {kv.key: kv.value for kv in st.values}
                              | {"message": st.message}))

    io.create_subscription(PointCloud2, OUTPUT, on_output,
                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    io.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    pub = io.create_publisher(PointCloud2, INPUT,
                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))

    def node_counts() -> dict:
        if not diags:
            return {}
        values, out = diags[-1][1], {}
        for name, keys in DIAG_KEYS.items():
            key = next((k for k in ((keys,) if isinstance(keys, str) else keys)
                        if k in values), None)
            if key is not None:
                out[name] = int(values[key])
        return out

    def spin_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ex.spin_once(timeout_sec=min(left, 0.05))

    report: dict = {}
    try:
        t_launch = time.monotonic()
        while not (pub.get_subscription_count() > 0 and io.count_publishers(OUTPUT) > 0):
            if proc.poll() is not None:
                raise SystemExit(f"soak: the node exited with {proc.returncode}:\n"
                                 f"{log_path.read_text()[-3000:]}")
            if time.monotonic() - t_launch > args.startup_timeout:
                raise SystemExit(f"soak: the node did not come up in {args.startup_timeout} s:"
                                 f"\n{log_path.read_text()[-3000:]}")
            ex.spin_once(timeout_sec=0.1)
        spin_for(1.0)  # let both ends finish matching
        startup_s = time.monotonic() - t_launch
        sampler.sample()
        sampler.start()
        load_start = os.getloadavg()
        duration = args.minutes * 60.0
        period = 1.0 / args.rate
        n_total = int(round(duration * args.rate))
        _say(f"node up in {startup_s:.1f} s (pid {proc.pid}); streaming {n_total} scans at "
             f"{args.rate:g} Hz for {args.minutes:g} min")
        t0 = time.monotonic()
        stamp0_ns = time.time_ns()
        t_next, t_progress = t0, t0 + args.progress_s
        sent = 0
        late = 0  # publishes more than one period behind schedule (this process too slow)
        while sent < n_total:
            msg = messages[sent % len(messages)]
            # the sensor's clock: exactly periodic; a late publish shows up as latency
            stamp_ns = stamp0_ns + round(sent * 1e9 / args.rate)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
            stamp_to_seq[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = sent
            pub.publish(msg)
            sent += 1
            t_next += period
            if time.monotonic() - t_next > period:
                late += 1
            while (left := t_next - time.monotonic()) > 0:
                ex.spin_once(timeout_sec=left)
            if time.monotonic() >= t_progress:
                t_progress += args.progress_s
                c = node_counts()
                lat = _percentiles([ms for _, ms in back[-200:]])
                rss = sampler.samples[-1][1] if sampler.samples else float("nan")
                cpu = sampler.cpu_percent(time.monotonic() - 30.0, time.monotonic())
                cpu_s = f"{cpu:.0f}%" if cpu is not None else "n/a"
                _say(f"{time.monotonic() - t0:6.0f} s: sent {sent}, back {len(back)}; node "
                     f"received {c.get('received', '?')}, published {c.get('published', '?')}, "
                     f"dropped {c.get('dropped', '?')}, missing {c.get('missing', '?')}; "
                     f"latency p50 {lat['p50']} ms (last 200); RSS {rss:.0f} MB; "
                     f"CPU {cpu_s} (last 30 s); load {os.getloadavg()[0]:.2f}")
            if proc.poll() is not None:
                raise SystemExit(f"soak: the node exited with {proc.returncode} during the run:"
                                 f"\n{log_path.read_text()[-3000:]}")
        t_stream_end = time.monotonic()
        load_end = os.getloadavg()
        # drain: the node finishes its last scan; wait for a report with nothing pending
        deadline = time.monotonic() + args.drain_s

        def settled() -> bool:
            c = node_counts()
            return (bool(c) and diags[-1][0] > t_stream_end + 0.5
                    and c.get("pending", 1) == 0
                    and c.get("received", 0) + c.get("missing", 0) >= sent)

        while not settled() and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
        spin_for(1.5)  # one more /diagnostics period
        sampler.stop.set()
        sampler.sample()
        c = node_counts()
        accounted = sum(c.get(k, 0) for k in OUTCOMES)
        rss = [(round(t - t0, 1), round(r, 1)) for t, r, _ in sampler.samples]
        warm_t = min(args.warmup_s, 0.5 * duration)
        warm = next((r for t, r in rss if t >= warm_t), rss[0][1])
        first, last = rss[0][1], rss[-1][1]
        lat_all = [ms for _, ms in back]
        seqs = [s for s, _ in back]
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "node_command": " ".join(node_cmd[1:]),
            "machine": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load_start],
                        "loadavg_end": [round(x, 2) for x in load_end],
                        "loadavg_1min_mean": round(float(np.mean(
                            [ld for _, ld in sampler.loads] or [np.nan])), 2),
                        "loadavg_1min_max": round(max((ld for _, ld in sampler.loads),
                                                      default=np.nan), 2)},
            "rate_hz": args.rate, "minutes": args.minutes, "frames": len(messages),
            "beam_stride": args.beam_stride,
            "points_per_scan_mean": round(float(np.mean([m.width * m.height
                                                          for m in messages])), 0),
            "transports": args.transports, "node_startup_s": round(startup_s, 1),
            "sent": sent, "publisher_late": late,
            "received_back": len(back), "back_fraction": round(len(back) / max(sent, 1), 3),
            "back_out_of_order": int(sum(b < a for a, b in zip(seqs, seqs[1:], strict=False))),
            "node": c,
            "node_accounted": accounted,
            "all_accounted": bool(c) and c.get("received", -1) == accounted
            and c.get("received", 0) + c.get("missing", 0) == sent,
            "latency_ms": _percentiles(lat_all),
            "node_processing_ms": {k: (diags[-1][1].get(f"processing time {k} (ms)")
                                       if diags else None) for k in ("median", "p95")},
            "rss_mb": {"first": first, "after_warmup": warm, "warmup_s": warm_t, "last": last,
                       "max": max(r for _, r in rss),
                       "growth_pct_from_first": round(100.0 * (last - first) / first, 1),
                       "growth_pct_after_warmup": round(100.0 * (last - warm) / warm, 1)},
            "cpu_pct_node": (None if (cpu := sampler.cpu_percent(t0, t_stream_end + 1.0)) is None
                             else round(cpu, 1)),
            "rss_series": rss,
            "cpu_series": [(round(t - t0, 1), round(cs, 2)) for t, _, cs in sampler.samples],
            "last_status": diags[-1][1].get("message") if diags else None,
        }
    finally:
        sampler.stop.set()
        ex.shutdown()
        io.destroy_node()
        rclpy.shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report["node_exit_status"] = proc.returncode
    return report


def format_report(r: dict) -> str:
    c, lat, rss = r["node"], r["latency_ms"], r["rss_mb"]
    ok = "yes" if r["all_accounted"] else "NO"
    return "\n".join([
        f"soak: {r['minutes']:g} min at {r['rate_hz']:g} Hz, {r['frames']} KITTI scans cycled "
        f"(~{r['points_per_scan_mean']:.0f} points), node: {r['node_command']}",
        f"  machine: {r['machine']['cpus']} CPUs, 1-min load average at start "
        f"{r['machine']['loadavg_start'][0]}, at end {r['machine']['loadavg_end'][0]}, mean "
        f"{r['machine']['loadavg_1min_mean']}, max {r['machine']['loadavg_1min_max']}",
        f"  sent {r['sent']} (publisher late {r['publisher_late']}), received back "
        f"{r['received_back']} ({100 * r['back_fraction']:.1f} %)",
        f"  node: received {c.get('received')}, published {c.get('published')}, dropped "
        f"{c.get('dropped')} (newer scan arrived while busy), rejected {c.get('rejected')}, "
        f"failed {c.get('failed')}, skipped {c.get('skipped')}, pending {c.get('pending')}; "
        f"missing (never received) {c.get('missing')}",
        f"  every scan accounted for (published + dropped + rejected + failed + skipped + "
        f"pending = received; received + missing = sent): {ok}",
        f"  latency (output receive - input stamp) ms: p50 {lat['p50']}, p95 {lat['p95']}, "
        f"p99 {lat['p99']}, max {lat['max']}; node processing median "
        f"{r['node_processing_ms']['median']} ms, p95 {r['node_processing_ms']['p95']} ms",
        f"  node RSS MB: first {rss['first']}, after {rss['warmup_s']:g} s {rss['after_warmup']}"
        f", last {rss['last']}, max {rss['max']}; growth {rss['growth_pct_after_warmup']} % "
        f"after warm-up ({rss['growth_pct_from_first']} % from first)",
        f"  node CPU {r['cpu_pct_node']} % (100 = one core); exit status after SIGINT "
        f"{r.get('node_exit_status')}; last status '{r['last_status']}'",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--minutes", type=float, default=10.0, help="streaming time (default 10)")
    p.add_argument("--rate", type=float, default=10.0, help="scans per second (default 10)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="a node parameter (repeatable), e.g. -p model:=sspu_x4")
    p.add_argument("--kitti", default=str(KITTI), help=f"KITTI root (default {KITTI})")
    p.add_argument("--beam-stride", type=int, default=1,
                   help="keep every k-th laser ring of each scan (4: the 16-beam input a "
                   "VLP-16-class user has; default 1: the full 64 beams)")
    p.add_argument("--frames", type=int, default=100,
                   help="at most this many scans to cycle (default 100)")
    p.add_argument("--transports", default="LARGE_DATA",
                   help="FASTDDS_BUILTIN_TRANSPORTS for both ends, DEFAULT for Fast DDS's "
                        "defaults (default LARGE_DATA, as the launch file)")
    p.add_argument("--domain-id", type=int, default=None)
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS/CPU sampling period")
    p.add_argument("--progress-s", type=float, default=30.0, help="progress line period")
    p.add_argument("--warmup-s", type=float, default=60.0,
                   help="RSS growth is also measured from this point (default 60 s)")
    p.add_argument("--drain-s", type=float, default=30.0,
                   help="how long to wait for the node to finish after the last scan")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--log", default="soak_node.log", help="the node's output")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report (- stdout)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0:
        p.error("--rate and --minutes must be > 0")
    report = run(args)
    text = format_report(report)
    if args.json == "-":
        print(json.dumps(report, indent=1))
        print(text, file=sys.stderr)
    else:
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["all_accounted"] and report["node_exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
