"""The EncodedCloud -> message adapter, with real rclpy and rosbags message classes."""

from __future__ import annotations

import array
import functools

import numpy as np
import pytest

from sspu_ros.io.pointcloud2 import (
    FLOAT32,
    GENERATED_FIELD,
    UINT8,
    UINT16,
    Field,
    decode,
    encode_densified,
    encode_structured,
)
from sspu_ros.io.pointcloud2_message import bytes_to_uint8_array, fields_to_msgs, to_pointcloud2

VELODYNE_DTYPE = np.dtype({
    "names": ["x", "y", "z", "intensity", "ring", "time"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
    "offsets": [0, 4, 8, 12, 16, 18],
    "itemsize": 22,
})


def sample_encoded():
    """A densified Velodyne-layout cloud: 50 originals (2 NaN) + 7 generated points."""
    rng = np.random.default_rng(7)
    pts = np.zeros(50, VELODYNE_DTYPE)
    for name in ("x", "y", "z", "intensity", "time"):
        pts[name] = rng.normal(size=50) * 5
    pts["ring"] = rng.integers(0, 64, 50)
    pts["x"][[3, 17]] = np.nan
    cloud = decode(_ns(encode_structured(pts)))
    gen = cloud.xyz[:7] + 0.01
    return encode_densified(cloud, gen), pts


def _ns(enc):
    from types import SimpleNamespace

    return SimpleNamespace(height=enc.height, width=enc.width, fields=enc.fields,
                           is_bigendian=enc.is_bigendian, point_step=enc.point_step,
                           row_step=enc.row_step, data=enc.data, is_dense=enc.is_dense)


def check_decoded(msg, enc, pts):
    d = decode(msg)
    assert d.n_invalid == 0 and d.width == 55 and d.point_step == 24
    assert d.points[GENERATED_FIELD].tolist() == [0] * 48 + [1] * 7
    keep = np.isfinite(pts["x"])
    for name in ("x", "y", "z", "intensity", "ring", "time"):
        np.testing.assert_array_equal(d.points[name][:48], pts[name][keep])
    assert bytes(msg.data) == enc.data.tobytes()


# ------------------------------------------------------------------------------------------
# rclpy


@pytest.fixture
def rclpy_msgs():
    sensor_msgs = pytest.importorskip(
        "sensor_msgs.msg", reason="rclpy / sensor_msgs not installed (pip extra 'ros')")
    std_msgs = pytest.importorskip("std_msgs.msg", reason="std_msgs not installed")
    return sensor_msgs, std_msgs


@pytest.mark.ros
def test_rclpy_pointcloud2(rclpy_msgs):
    sensor_msgs, std_msgs = rclpy_msgs
    enc, pts = sample_encoded()
    header = std_msgs.Header(frame_id="velodyne")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = to_pointcloud2(enc, header, sensor_msgs.PointCloud2, sensor_msgs.PointField)
    assert isinstance(msg, sensor_msgs.PointCloud2)
    assert msg.header.frame_id == "velodyne" and msg.header.stamp.nanosec == 345
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 55, 24, 55 * 24)
    assert msg.is_dense is True and msg.is_bigendian is False
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1),
        ("intensity", 12, FLOAT32, 1), ("ring", 16, UINT16, 1), ("time", 18, FLOAT32, 1),
        (GENERATED_FIELD, 22, UINT8, 1)]
    check_decoded(msg, enc, pts)
    # decode reads the message's array.array('B') without a copy
    assert np.shares_memory(decode(msg).points, np.frombuffer(msg.data, np.uint8))


@pytest.mark.ros
def test_rclpy_with_field_checks_on(rclpy_msgs):
    """Every attribute passes rclpy's own type checks (always on in older distributions)."""
    sensor_msgs, std_msgs = rclpy_msgs
    enc, pts = sample_encoded()
    msg_cls = functools.partial(sensor_msgs.PointCloud2, check_fields=True)
    field_cls = functools.partial(sensor_msgs.PointField, check_fields=True)
    msg = to_pointcloud2(enc, std_msgs.Header(frame_id="f"), msg_cls, field_cls)
    check_decoded(msg, enc, pts)


@pytest.mark.ros
def test_rclpy_serialization_round_trip(rclpy_msgs):
    sensor_msgs, std_msgs = rclpy_msgs
    serialization = pytest.importorskip("rclpy.serialization", reason="rclpy not installed")
    enc, pts = sample_encoded()
    msg = to_pointcloud2(enc, std_msgs.Header(frame_id="lidar"), sensor_msgs.PointCloud2,
                         sensor_msgs.PointField)
    raw = serialization.serialize_message(msg)
    back = serialization.deserialize_message(raw, sensor_msgs.PointCloud2)
    assert back.header.frame_id == "lidar"
    check_decoded(back, enc, pts)


@pytest.mark.ros
def test_rclpy_empty_cloud(rclpy_msgs):
    sensor_msgs, std_msgs = rclpy_msgs
    enc = encode_structured(np.zeros(0, VELODYNE_DTYPE))
    msg = to_pointcloud2(enc, std_msgs.Header(), sensor_msgs.PointCloud2, sensor_msgs.PointField)
    assert len(msg.data) == 0 and msg.width == 0
    assert decode(msg).xyz.shape == (0, 3)


# ------------------------------------------------------------------------------------------
# rosbags


@pytest.fixture
def typestore():
    typesys = pytest.importorskip("rosbags.typesys", reason="rosbags not installed")
    return typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)


def test_rosbags_pointcloud2_and_cdr_round_trip(typestore):
    types = typestore.types
    cls = types["sensor_msgs/msg/PointCloud2"]
    field_cls = types["sensor_msgs/msg/PointField"]
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="os_lidar")
    enc, pts = sample_encoded()
    msg = to_pointcloud2(enc, header, cls, field_cls)
    assert isinstance(msg, cls) and msg.header.frame_id == "os_lidar"
    assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
    assert np.shares_memory(msg.data, enc.data)  # handed over without a copy
    assert all(isinstance(f, field_cls) for f in msg.fields)
    check_decoded(msg, enc, pts)

    raw = typestore.serialize_cdr(msg, cls.__msgtype__)
    back = typestore.deserialize_cdr(raw, cls.__msgtype__)
    assert back.header.stamp.sec == 3 and back.width == 55
    assert [f.name for f in back.fields][-1] == GENERATED_FIELD
    check_decoded(back, enc, pts)


def test_fields_to_msgs_both_kinds(typestore):
    fields = (Field("x", 0, FLOAT32), Field("n", 4, FLOAT32, 3))
    field_cls = typestore.types["sensor_msgs/msg/PointField"]
    out = fields_to_msgs(fields, field_cls)
    assert [(f.name, f.offset, f.datatype, f.count) for f in out] == [
        ("x", 0, FLOAT32, 1), ("n", 4, FLOAT32, 3)]


def test_bytes_to_uint8_array():
    a = bytes_to_uint8_array(np.arange(5, dtype=np.uint8))
    assert a.typecode == "B" and a.tolist() == [0, 1, 2, 3, 4]
