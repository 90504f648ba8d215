"""Bag tools: kitti2bag, densify-bag (any PointCloud2 layout, other topics copied unchanged),
ROS 1 input, play + record through a live ROS 2 graph, and the small parsers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ros_graph import ros_domain_id

from sspu_ros.cli.main import main
from sspu_ros.io.bags import (
    POINTCLOUD2,
    BagWriter,
    parse_frames,
    pointcloud2_message,
    read_kitti_timestamps,
    read_pointclouds,
    typestore,
)
from sspu_ros.io.kitti import read_velodyne
from sspu_ros.io.pointcloud2 import FLOAT32, UINT16, Field, fields_dtype
from sspu_ros.ros.bag_player import restamp_cdr

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data" / "kitti" / "raw_2011_09_26_drive_0001"

# Velodyne-driver layout: 22 bytes, ring at an unaligned offset.
ODD = (Field("x", 0, FLOAT32), Field("y", 4, FLOAT32), Field("z", 8, FLOAT32),
       Field("intensity", 16, FLOAT32), Field("ring", 20, UINT16))
# Padded layout: xyz at 8 (not 0), 32-byte records.
PADDED = (Field("intensity", 0, FLOAT32), Field("x", 8, FLOAT32), Field("y", 12, FLOAT32),
          Field("z", 16, FLOAT32))


def _scan(rng, n=600):
    """(n, 3) float32: a flat ground plus a box, a scan-like toy cloud."""
    ground = np.c_[rng.uniform(2, 20, n // 2), rng.uniform(-10, 10, n // 2),
                   rng.normal(-1.7, 0.01, n // 2)]
    box = np.c_[rng.uniform(4, 6, (n - n // 2, 1)), rng.uniform(-1, 1, (n - n // 2, 1)),
                rng.uniform(-1.5, 0, (n - n // 2, 1))]
    return np.vstack([ground, box]).astype(np.float32)


def _cloud_msg(xyz, fields, point_step, stamp_ns, *, bigendian=False, store=None):
    from sspu_ros.io.pointcloud2 import EncodedCloud

    dt = fields_dtype(fields, point_step, bigendian)
    data = np.zeros(len(xyz) * point_step, np.uint8)
    pts = data.view(dt)
    pts["x"], pts["y"], pts["z"] = xyz.T
    pts["intensity"] = np.arange(len(xyz)) % 100
    if "ring" in dt.names:
        pts["ring"] = np.arange(len(xyz)) % 16
    enc = EncodedCloud(fields=fields, height=1, width=len(xyz), point_step=point_step,
                       row_step=len(xyz) * point_step, is_bigendian=bigendian, is_dense=True,
                       data=data)
    return pointcloud2_message(enc, stamp_ns=stamp_ns, frame_id="lidar", store=store)


def _write_bag(path, scans, *, fields=ODD, point_step=22, storage=None, bigendian=False):
    """A bag with /points (PointCloud2, the given layout) and /note (std_msgs/String)."""
    with BagWriter(path, storage=storage) as w:
        string = w.store.types["std_msgs/msg/String"]
        pc = w.add_connection("/points", POINTCLOUD2)
        note = w.add_connection("/note", "std_msgs/msg/String")
        for i, xyz in enumerate(scans):
            stamp = 1_000_000_000 + i * 100_000_000
            w.write_msg(pc, stamp, _cloud_msg(xyz, fields, point_step, stamp,
                                              bigendian=bigendian, store=w.store))
            w.write_msg(note, stamp + 1, string(data=f"note {i}"))
    return path


def _expected_generated(xyz) -> int:
    """Generated points the default config's densifier adds to one scan."""
    from sspu_ros.config import load_config
    from sspu_ros.densify.densifier import densify_points
    from sspu_ros.runtime.loading import load_upsampler

    cfg = load_config()
    return int(densify_points(xyz, load_upsampler(cfg["model"], cfg["ratio"]),
                              cfg).generated.shape[0])


def _raw_messages(path):
    from sspu_ros.io.bags import open_bag

    with open_bag(path) as r:
        return [(c.topic, t, bytes(raw)) for c, t, raw in r.messages()]


# --------------------------------------------------------------------------- parsers


def test_parse_frames():
    assert parse_frames("2:5") == slice(2, 5)
    assert parse_frames(":5") == slice(None, 5)
    assert parse_frames("3:") == slice(3, None)
    assert parse_frames(None) == slice(None)
    for bad in ("5", "5:2", "a:b", "1:2:3", "-1:3"):
        with pytest.raises(ValueError, match="frames"):
            parse_frames(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_parse_frames_never_fails_otherwise(text):
    try:
        s = parse_frames(text)
    except ValueError:
        return
    assert isinstance(s, slice)


def test_kitti_timestamps_exact(tmp_path):
    f = tmp_path / "timestamps.txt"
    f.write_text("1970-01-01 00:00:01.5\n2011-09-26 13:02:25.951199337\n\n")
    assert read_kitti_timestamps(f).tolist() == [1_500_000_000, 1317042145951199337]
    f.write_text("2011-09-26 13:02:25.95x\n")
    with pytest.raises(ValueError, match=r"timestamps.txt:1: not a KITTI timestamp"):
        read_kitti_timestamps(f)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 999_999_999))
def test_restamp_cdr_round_trip(sec, nsec):
    ts = typestore()
    msg = _cloud_msg(np.zeros((2, 3), np.float32), ODD, 22, 5)
    raw = ts.serialize_cdr(msg, POINTCLOUD2)
    out = ts.deserialize_cdr(restamp_cdr(raw, sec * 1_000_000_000 + nsec), POINTCLOUD2)
    assert (out.header.stamp.sec, out.header.stamp.nanosec) == (sec, nsec)
    assert out.header.frame_id == "lidar" and bytes(out.data) == bytes(msg.data)


# --------------------------------------------------------------------------- kitti2bag


@pytest.mark.skipif(not RAW.is_dir(), reason=f"KITTI raw drive not found at {RAW}")
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_kitti2bag_on_the_raw_drive(tmp_path, storage, capsys):
    out = tmp_path / "bag"
    assert main(["kitti2bag", str(RAW), str(out), "--storage", storage, "--frames", "1:3",
                 "--no-progress"]) == 0
    assert "2 scans" in capsys.readouterr().out
    stamps = read_kitti_timestamps(RAW / "velodyne_points" / "timestamps.txt")
    got = list(read_pointclouds(out, "/kitti/velo"))
    assert len(got) == 2
    for item, frame in zip(got, (1, 2), strict=True):
        scan = read_velodyne(RAW / "velodyne_points" / "data" / f"{frame:010d}.bin")
        h = item.msg.header
        assert h.frame_id == "velo_link"
        assert h.stamp.sec * 10**9 + h.stamp.nanosec == item.timestamp == stamps[frame]
        assert [f.name for f in item.cloud.fields] == ["x", "y", "z", "intensity"]
        assert item.msg.point_step == 16
        np.testing.assert_array_equal(item.cloud.xyz, scan[:, :3])
        np.testing.assert_array_equal(item.cloud.intensity, scan[:, 3])


def test_kitti2bag_errors(tmp_path, capsys):
    assert main(["kitti2bag", str(tmp_path), str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a KITTI raw drive folder" in capsys.readouterr().err
    velo = tmp_path / "d" / "velodyne_points"
    (velo / "data").mkdir(parents=True)
    np.zeros((3, 4), np.float32).tofile(velo / "data" / "0000000004.bin")
    (velo / "timestamps.txt").write_text("2011-09-26 13:02:25.0\n" * 3)
    assert main(["kitti2bag", str(tmp_path / "d"), str(tmp_path / "o"), "--no-progress"]) == 2
    assert "0000000004.bin has no line in the timestamps (3 lines)" in capsys.readouterr().err


# --------------------------------------------------------------------------- densify-bag


@pytest.mark.parametrize("layout", ["odd", "padded"])
def test_densify_bag_keeps_every_topic_and_adds_the_dense_one(tmp_path, layout):
    rng = np.random.default_rng(1)
    scans = [_scan(rng) for _ in range(3)]
    fields, step = (ODD, 22) if layout == "odd" else (PADDED, 32)
    src = _write_bag(tmp_path / "in", scans, fields=fields, point_step=step, storage="sqlite3")
    dst = tmp_path / "out"
    assert main(["densify-bag", str(src), str(dst), "--topic", "/points", "--no-progress"]) == 0
    before, after = _raw_messages(src), _raw_messages(dst)
    # every input message is still there, byte for byte, in order
    assert [m for m in after if m[0] != "/points/densified"] == before
    dense = list(read_pointclouds(dst, "/points/densified"))
    originals = list(read_pointclouds(src, "/points"))
    assert len(dense) == 3
    assert (dst / "out_0.db3").exists() or list(dst.glob("*.db3"))  # storage kept
    for d, o in zip(dense, originals, strict=True):
        assert d.timestamp == o.timestamp
        assert (d.msg.header.stamp.sec, d.msg.header.stamp.nanosec, d.msg.header.frame_id) == \
            (o.msg.header.stamp.sec, o.msg.header.stamp.nanosec, o.msg.header.frame_id)
        flag = d.cloud.points["generated"]
        n = len(o.cloud.xyz)
        assert (flag[:n] == 0).all() and (flag[n:] == 1).all()
        assert len(flag) - n == _expected_generated(o.cloud.xyz) > 0
        np.testing.assert_array_equal(d.cloud.xyz[:n], o.cloud.xyz)
        names = [f.name for f in fields]
        assert [f.name for f in d.cloud.fields] == names + ["generated"]
        if layout == "odd":
            np.testing.assert_array_equal(d.cloud.points["ring"][:n], o.cloud.points["ring"])


def test_densify_bag_reads_ros1_big_endian_and_replaces_topic(tmp_path):
    rng = np.random.default_rng(2)
    src = _write_bag(tmp_path / "in.bag", [_scan(rng, 400) for _ in range(2)],
                     bigendian=True)
    dst = tmp_path / "out"
    assert main(["densify-bag", str(src), str(dst), "--topic", "/points", "--out-topic",
                 "/points", "--no-progress"]) == 0
    assert (dst / "metadata.yaml").is_file() and list(dst.glob("*.mcap"))  # ROS 1 -> mcap
    notes = [m for m in _raw_messages(dst) if m[0] == "/note"]
    assert [typestore().deserialize_cdr(m[2], "std_msgs/msg/String").data for m in notes] == \
        ["note 0", "note 1"]
    clouds = list(read_pointclouds(dst, "/points"))
    originals = list(read_pointclouds(src, "/points"))
    assert len(clouds) == 2
    for c, o in zip(clouds, originals, strict=True):
        assert c.cloud.points["generated"].sum() == _expected_generated(o.cloud.xyz) > 0


def test_densify_bag_user_errors(tmp_path, capsys):
    src = _write_bag(tmp_path / "in", [_scan(np.random.default_rng(3), 200)])
    assert main(["densify-bag", str(src), str(tmp_path / "o"), "--topic", "/nope"]) == 2
    err = capsys.readouterr().err
    assert "no PointCloud2 topic named /nope; its PointCloud2 topics: /points" in err
    assert main(["densify-bag", str(src), str(src), "--topic", "/points"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["densify-bag", str(tmp_path / "missing"), str(tmp_path / "o2"), "--topic",
                 "/points"]) == 2
    assert "no such bag" in capsys.readouterr().err


# --------------------------------------------------------------------------- play + record


def _rclpy_available() -> bool:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _rclpy_available(), reason="rclpy not importable (pip install '.[ros]')")
def test_play_then_record_round_trip(tmp_path):
    """`sspu record` (one process) captures what `sspu play` (another) publishes."""
    rng = np.random.default_rng(4)
    scans = [_scan(rng, 500) for _ in range(5)]
    src = _write_bag(tmp_path / "in", scans)
    out = tmp_path / "rec"
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id()),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    sspu = [sys.executable, "-m", "sspu_ros"]
    rec = subprocess.Popen(sspu + ["record", str(out), "--topics", "/replay", "--count", "5",
                                   "--type", f"/replay={POINTCLOUD2}"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        play = subprocess.run(sspu + ["play", str(src), "--remap", "/points:=/replay",
                                      "--rate", "4", "--wait", "10", "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert play.returncode == 0, play.stderr
        assert "/replay: 5" in play.stdout
        stdout, stderr = rec.communicate(timeout=30)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, stderr
    got = list(read_pointclouds(out, "/replay"))
    assert len(got) == 5
    for g, xyz in zip(got, scans, strict=True):
        np.testing.assert_array_equal(g.cloud.xyz, xyz)
        assert g.msg.point_step == 22 and g.msg.header.frame_id == "lidar"
    # recorded at receive time, spaced roughly as played (0.1 s / rate 4)
    gaps = np.diff([g.timestamp for g in got]) / 1e9
    assert (gaps > 0.005).all() and (gaps < 0.5).all()


# --------------------------------------------------------------------------- real ROS 1 bags

# A type only the bag defines (as a vendor driver's status message), with a ROS 1 Header.
STATUS_MSG = """std_msgs/Header header
uint8 mode
string firmware
float32[] temperatures
"""
STATUS = "luminar_msgs/msg/Status"


def _ros1_store():
    """ROS 1 Noetic definitions (std_msgs/Header with seq) plus the bag-only type."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    store.register(get_types_from_msg(STATUS_MSG, STATUS))
    return store


def _ros1_header(store, i, stamp_ns):
    time_t = store.types["builtin_interfaces/msg/Time"]
    return store.types["std_msgs/msg/Header"](
        seq=i, stamp=time_t(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="lidar")


def _write_ros1_bag(path, scans):
    """What a ROS 1 driver records: /points (PointCloud2, ROS 1 Header with seq), /status
    (a type defined only by the bag's connection header), /rosout-like /note (String)."""
    from rosbags.rosbag1 import Writer

    from sspu_ros.io.pointcloud2 import EncodedCloud

    store = _ros1_store()
    with Writer(path) as w:
        pc = w.add_connection("/points", POINTCLOUD2, typestore=store, callerid="/driver")
        st = w.add_connection("/status", STATUS, typestore=store, latching=1)
        note = w.add_connection("/note", "std_msgs/msg/String", typestore=store)
        for i, xyz in enumerate(scans):
            stamp = 1_600_000_000 * 10**9 + i * 100_000_000
            dt = fields_dtype(ODD, 22, False)
            data = np.zeros(len(xyz) * 22, np.uint8)
            pts = data.view(dt)
            pts["x"], pts["y"], pts["z"] = xyz.T
            pts["intensity"], pts["ring"] = 7.0, np.arange(len(xyz)) % 16
            enc = EncodedCloud(fields=ODD, height=1, width=len(xyz), point_step=22,
                               row_step=len(xyz) * 22, is_bigendian=False, is_dense=True,
                               data=data)
            from sspu_ros.io.pointcloud2_message import to_pointcloud2

            msg = to_pointcloud2(enc, _ros1_header(store, i, stamp), store.types[POINTCLOUD2],
                                 store.types["sensor_msgs/msg/PointField"])
            w.write(pc, stamp, store.serialize_ros1(msg, POINTCLOUD2))
            status = store.types[STATUS](header=_ros1_header(store, i, stamp), mode=i % 3,
                                         firmware=f"fw-{i}",
                                         temperatures=np.array([20.5 + i, 21.0], np.float32))
            w.write(st, stamp + 1, store.serialize_ros1(status, STATUS))
            w.write(note, stamp + 2, store.serialize_ros1(
                store.types["std_msgs/msg/String"](data=f"note {i}"), "std_msgs/msg/String"))
    return path


@pytest.mark.parametrize("out_name", ["out.bag", "out_mcap", "out_db3"])
def test_densify_bag_of_a_ros1_driver_recording_copies_every_message(tmp_path, out_name, capsys):
    """The Luminar case: a ROS 1 bag (Header with seq, a type only the bag defines, other
    topics) densified into ROS 1 (.bag), mcap and sqlite3: every message is there, the
    bag-defined type round-trips, the dense clouds are proper messages of the output's ROS."""
    from sspu_ros.io.bags import open_bag

    rng = np.random.default_rng(7)
    scans = [_scan(rng, 400) for _ in range(3)]
    src = _write_ros1_bag(tmp_path / "driver.bag", scans)
    dst = tmp_path / out_name
    storage = ["--storage", "sqlite3"] if out_name == "out_db3" else []
    assert main(["densify-bag", str(src), str(dst), "--no-progress", *storage]) == 0
    out = capsys.readouterr().out
    assert "/points densified" in out and "skipped" not in out
    assert dst.is_file() == (out_name == "out.bag")
    assert not list(tmp_path.glob(".*partial*"))  # the temporary name is gone
    with open_bag(dst) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        assert types == {"/points": POINTCLOUD2, "/status": STATUS,
                         "/note": "std_msgs/msg/String", "/points/densified": POINTCLOUD2}
        msgs = [(c.topic, t, r.deserialize(raw, c.msgtype)) for c, t, raw in r.messages()]
        assert r.is2 == (out_name != "out.bag")
    by_topic = {}
    for topic, t, m in msgs:
        by_topic.setdefault(topic, []).append((t, m))
    assert {k: len(v) for k, v in by_topic.items()} == {
        "/points": 3, "/status": 3, "/note": 3, "/points/densified": 3}
    for i, (t, m) in enumerate(by_topic["/status"]):
        assert (m.mode, m.firmware, m.header.frame_id) == (i % 3, f"fw-{i}", "lidar")
        np.testing.assert_array_equal(m.temperatures, np.array([20.5 + i, 21.0], np.float32))
        assert t == 1_600_000_000 * 10**9 + i * 100_000_000 + 1
    assert [m.data for _, m in by_topic["/note"]] == ["note 0", "note 1", "note 2"]
    for i, ((t, d), (_, o)) in enumerate(zip(by_topic["/points/densified"], by_topic["/points"],
                                             strict=True)):
        assert t == 1_600_000_000 * 10**9 + i * 100_000_000
        assert (d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id) == \
            (o.header.stamp.sec, o.header.stamp.nanosec, "lidar")
        assert d.width > o.width and [f.name for f in d.fields][-1] == "generated"
        if out_name == "out.bag":  # a ROS 1 Header keeps its sequence number
            assert d.header.seq == o.header.seq == i


def test_ros1_output_is_a_standard_ros1_pointcloud2(tmp_path):
    """ROS 1 tools check the md5sum of sensor_msgs/PointCloud2: the dense topic must carry
    the standard ROS 1 definition (Header with seq), whatever the input's ROS version."""
    from rosbags.typesys import Stores, get_typestore

    from sspu_ros.io.bags import open_bag

    noetic = get_typestore(Stores.ROS1_NOETIC)
    want = noetic.generate_msgdef(POINTCLOUD2)[1]
    src = _write_bag(tmp_path / "in", [_scan(np.random.default_rng(8), 300)])  # rosbag2
    dst = tmp_path / "out.bag"
    assert main(["densify-bag", str(src), str(dst), "--no-progress"]) == 0
    with open_bag(dst) as r:
        md5 = {c.topic: c.digest for c in r.connections}
        notes = [r.deserialize(raw, c.msgtype).data for c, _, raw in r.messages()
                 if c.topic == "/note"]
    assert md5["/points"] == md5["/points/densified"] == want
    assert notes == ["note 0"]


def test_densify_bag_topic_is_optional_only_with_one_pointcloud2_topic(tmp_path, capsys):
    src = _write_bag(tmp_path / "in", [_scan(np.random.default_rng(9), 300)])
    assert main(["densify-bag", str(src), str(tmp_path / "o"), "--no-progress"]) == 0
    assert "/points densified" in capsys.readouterr().out
    two = tmp_path / "two"
    with BagWriter(two) as w:
        for topic in ("/a", "/b"):
            c = w.add_connection(topic, POINTCLOUD2)
            w.write_msg(c, 1, _cloud_msg(_scan(np.random.default_rng(1), 50), ODD, 22, 1))
    assert main(["densify-bag", str(two), str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 PointCloud2 topics (/a, /b): choose one with --topic" in err
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))


def test_a_message_that_cannot_be_converted_is_reported_and_the_rest_copied(tmp_path, capsys):
    """A corrupt message of one topic: one line names the topic and why; every other
    message is written and the output is complete."""
    from rosbags.rosbag1 import Writer

    from sspu_ros.io.bags import open_bag

    src = tmp_path / "bad.bag"
    store = _ros1_store()
    good = _write_ros1_bag(tmp_path / "good.bag", [_scan(np.random.default_rng(3), 300)])
    with open_bag(good) as r:
        msgs = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in r.messages()]
    with Writer(src) as w:
        conns = {}
        for topic, msgtype, t, raw in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=store)
            w.write(conns[topic], t, raw)
        # a truncated /status message (a string length running past the end)
        w.write(conns["/status"], msgs[-1][2] + 5, b"\x01\x00\x00\x00" + b"\xff" * 10)
    dst = tmp_path / "out"
    assert main(["densify-bag", str(src), str(dst), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("/status") == 1
    assert f"topic /status ({STATUS}): 1 message(s) skipped" in captured.err
    with open_bag(dst) as r:
        counts = {}
        for c, _, _ in r.messages():
            counts[c.topic] = counts.get(c.topic, 0) + 1
    assert counts == {"/points": 1, "/status": 1, "/note": 1, "/points/densified": 1}


def test_an_interrupted_densify_bag_leaves_no_bag_that_looks_finished(tmp_path, monkeypatch):
    import sspu_ros.densify.bag as dbag

    src = _write_bag(tmp_path / "in", [_scan(np.random.default_rng(5), 300) for _ in range(3)])
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = dbag.densify_message
    monkeypatch.setattr(dbag, "densify_message", interrupt)
    for name in ("out", "out.bag"):
        calls.clear()
        assert main(["densify-bag", str(src), str(tmp_path / name), "--no-progress"]) == 130
        assert not (tmp_path / name).exists()
        assert [p.name for p in tmp_path.iterdir()] == ["in"]
