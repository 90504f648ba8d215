"""Live test over real DDS: ``upsample_node`` runs as a separate process (default
configuration, the launch file's topic remappings and ``FASTDDS_BUILTIN_TRANSPORTS=
LARGE_DATA``), this test publishes real KITTI scans at 10 Hz and checks what comes back:
headers, points added inside the labelled objects, the ``generated`` flag, the debug
topics, ``/diagnostics``, and that a malformed cloud sent in between is rejected while
the node keeps publishing. A unique ROS_DOMAIN_ID per run avoids cross-talk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_graph import ros_domain_id  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Float64, Header  # noqa: E402

from sspu_ros.io.kitti import (  # noqa: E402
    boxes_to_lidar,
    points_in_boxes,
    read_calib,
    read_labels,
    read_velodyne,
)
from sspu_ros.io.pointcloud2 import GENERATED_FIELD, decode, encode_structured  # noqa: E402
from sspu_ros.io.pointcloud2_message import to_pointcloud2  # noqa: E402
from sspu_ros.ros.node import DEBUG_TOPICS, DIAGNOSTIC_NAME  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KITTI = REPO.parent / "shared" / "data" / "kitti" / "object"
FRAMES = ("000000", "000001", "000002", "000003", "000010")
INPUT, OUTPUT = "/points_raw", "/points_dense"
RATE_HZ = 10.0
BAD = 12  # sequence number of the malformed cloud
STAMP0 = 1_700_000_000  # header stamps: STAMP0 + i / RATE_HZ, i = scan sequence number


def _scans():
    if not (KITTI / "velodyne").is_dir():
        pytest.skip(f"KITTI object scans not found at {KITTI} (clone the repo beside "
                    "../shared)")
    scans = []
    for f in FRAMES:
        paths = [KITTI / d / f"{f}.{ext}" for d, ext in
                 (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt"))]
        if not all(p.is_file() for p in paths):
            pytest.skip(f"KITTI frame {f} incomplete under {KITTI} (need velodyne, label_2, "
                        "calib)")
        xyzi = read_velodyne(paths[0])
        pts = np.zeros(len(xyzi), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                         ("intensity", "<f4")])
        for k, name in enumerate(("x", "y", "z", "intensity")):
            pts[name] = xyzi[:, k]
        boxes = boxes_to_lidar(read_labels(paths[1]), read_calib(paths[2]))
        scans.append((f, pts, xyzi[:, :3].copy(), boxes))
    return scans


def _header(seq: int) -> Header:
    h = Header(frame_id="velo_link")
    h.stamp.sec, h.stamp.nanosec = STAMP0 + seq // 10, (seq % 10) * 100_000_000
    return h


def _seq_of(header) -> int:
    return (header.stamp.sec - STAMP0) * 10 + round(header.stamp.nanosec / 1e8)


@pytest.fixture
def live_env(monkeypatch):
    env = {"ROS_DOMAIN_ID": str(ros_domain_id()),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    return env


def test_node_process_densifies_live_kitti_scans(live_env, tmp_path):
    scans = _scans()
    log = tmp_path / "node.log"
    t_launch = time.monotonic()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sspu_ros.ros.node", "--ros-args",
             "-r", f"~/input/pointcloud:={INPUT}", "-r", f"~/output/pointcloud:={OUTPUT}"],
            stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)  # the participant reads the environment set by live_env
    io = rclpy.create_node("live_test_io", context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(io)
    outputs, diagnostics = [], []
    debug = {name: [] for name in DEBUG_TOPICS}
    io.create_subscription(PointCloud2, OUTPUT, outputs.append,
                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    io.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    for name in DEBUG_TOPICS:
        io.create_subscription(Float64, f"/upsample_node/debug/{name}",
                               lambda m, n=name: debug[n].append(m.data), 10)
    # a reliable publisher (as e.g. the Velodyne driver) serves either input reliability
    pub = io.create_publisher(PointCloud2, INPUT,
                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    messages = [to_pointcloud2(encode_structured(pts), _header(0), PointCloud2, PointField)
                for _, pts, _, _ in scans]

    def node_log() -> str:
        return log.read_text()[-4000:]

    def spin_until(cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            assert proc.poll() is None, f"node exited with {proc.returncode}:\n{node_log()}"
            ex.spin_once(timeout_sec=0.05)
        return cond()

    def stream(first: int, n: int) -> None:
        """Publish scans first .. first+n-1 at RATE_HZ (scan seq -> KITTI frame seq % 5)."""
        t_next = time.monotonic()
        for seq in range(first, first + n):
            msg = messages[seq % len(scans)]
            msg.header = _header(seq)
            pub.publish(msg)
            t_next += 1.0 / RATE_HZ
            while (left := t_next - time.monotonic()) > 0:
                ex.spin_once(timeout_sec=left)

    def ours() -> list:  # this node's statuses (hardware_id: its input topic)
        return [st for arr in diagnostics for st in arr.status
                if st.name == DIAGNOSTIC_NAME and st.hardware_id == INPUT]

    def diag_value(key: str) -> int:
        vals = [kv.value for st in ours() for kv in st.values if kv.key == key]
        return int(vals[-1]) if vals else -1

    def state() -> str:
        last = ours()
        diag = ({kv.key: kv.value for kv in last[-1].values} | {"message": last[-1].message}
                if last else "none")
        return (f"outputs {[_seq_of(m.header) for m in outputs]}; diagnostics {diag}\n"
                f"node log:\n{node_log()}")

    def idle() -> bool:  # the latest scan sent came back (depth-1 input keeps the newest)
        return bool(outputs) and _seq_of(outputs[-1].header) == last_sent

    try:
        assert spin_until(lambda: pub.get_subscription_count() > 0
                          and io.count_publishers(OUTPUT) > 0, 40.0), \
            f"node did not come up:\n{node_log()}"
        t_start = time.monotonic()
        # 1. 12 scans (1.2 s) at 10 Hz; the node keeps the newest while busy
        stream(0, 12)
        last_sent = 11
        assert spin_until(idle, 20.0), f"the last scan never came back: {state()}"
        n_phase1 = len(outputs)
        # 2. a malformed cloud (point_step smaller than its fields) in the stream
        bad = to_pointcloud2(encode_structured(scans[0][1][:1000]), _header(BAD), PointCloud2,
                             PointField)
        bad.point_step = 8
        for _ in range(3):  # best effort: resend if the node never saw it
            pub.publish(bad)
            if spin_until(lambda: diag_value("scans rejected (malformed)") >= 1, 2.5):
                break
        assert diag_value("scans rejected (malformed)") >= 1, state()
        # 3. the node keeps publishing after it
        stream(BAD + 1, 6)
        last_sent = BAD + 6
        assert spin_until(idle, 20.0), f"no output after the malformed cloud: {state()}"
        elapsed = time.monotonic() - t_start
        assert spin_until(lambda: all(debug.values()), 3.0), \
            f"debug topics without values: {[k for k, v in debug.items() if not v]}"
        assert proc.poll() is None, node_log()

        # ---- the outputs
        seqs = [_seq_of(m.header) for m in outputs]
        assert len(set(seqs)) == len(seqs)
        assert all(0 <= s <= last_sent and s != BAD for s in seqs), seqs
        assert any(s > BAD for s in seqs[n_phase1:])
        for msg, seq in zip(outputs, seqs, strict=True):
            name, pts, xyz, boxes = scans[seq % len(scans)]
            assert msg.header.frame_id == "velo_link"
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == \
                (_header(seq).stamp.sec, _header(seq).stamp.nanosec)
            out = decode(msg)
            n = len(pts)
            flag = out.points[GENERATED_FIELD]
            assert out.xyz.shape[0] > n and (flag[:n] == 0).all() and (flag[n:] == 1).all()
            np.testing.assert_array_equal(out.xyz[:n], xyz)
            np.testing.assert_array_equal(out.intensity[:n], pts["intensity"])
            in_boxes = int((points_in_boxes(xyz, boxes) >= 0).sum())
            out_in_boxes = int((points_in_boxes(out.xyz, boxes) >= 0).sum())
            assert out_in_boxes > in_boxes, (name, in_boxes, out_in_boxes)

        # ---- diagnostics (1 Hz)
        assert spin_until(lambda: diag_value("scans published") >= len(outputs), 3.0)
        status = ours()[-1]
        values = {kv.key: kv.value for kv in status.values}
        assert int(values["scans received"]) >= len(outputs) + 1
        # every scan received is accounted for (the node is idle: nothing pending)
        assert int(values["scans received"]) == sum(int(values[k]) for k in (
            "scans published", "scans skipped (no subscriber)",
            "scans dropped (newer scan arrived while busy)", "scans rejected (malformed)",
            "scans failed (processing error)", "scans pending (waiting or in processing)")), values
        assert values["backend"] and values["pipeline latency median (ms)"] != "n/a"
        print(f"\nlive DDS: node up in {t_start - t_launch:.1f} s; sent {last_sent} scans + 1 "
              f"malformed at {RATE_HZ:g} Hz, all back in {elapsed:.1f} s; "
              f"node received {values['scans received']}, published "
              f"{values['scans published']}, dropped (newer scan while busy) "
              f"{values['scans dropped (newer scan arrived while busy)']}, missing (gaps) "
              f"{values['scans missing (gaps in stamps)']}, rejected "
              f"{values['scans rejected (malformed)']}; processing median "
              f"{values['processing time median (ms)']} ms, p95 "
              f"{values['processing time p95 (ms)']} ms; status '{status.message}'")
    finally:
        ex.shutdown()
        io.destroy_node()
        rclpy.shutdown(context=ctx)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"node exit status {proc.returncode} after SIGINT:\n{node_log()}"
    assert "Traceback" not in log.read_text(), node_log()
