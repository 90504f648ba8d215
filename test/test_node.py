"""The rclpy node over real DDS (in-process): header kept, points added, flag field,
malformed clouds rejected without stopping the node, parameters validated."""

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sspu_ros.node import create_node, main  # noqa: E402
from sspu_ros.pointcloud2 import GENERATED_FIELD, decode, encode_structured  # noqa: E402
from sspu_ros.ros_msgs import to_pointcloud2  # noqa: E402


def _scan(n=400, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    ang = rng.uniform(0, 2 * np.pi, n)
    pts["x"], pts["y"] = 10 * np.cos(ang), 10 * np.sin(ang)
    pts["z"] = rng.uniform(-1, 1, n)
    pts["intensity"] = pts["x"]
    return pts


@pytest.fixture
def graph():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    node = create_node(context=ctx, parameter_overrides=[])
    io = rclpy.create_node("test_io", context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(io)
    received = []
    io.create_subscription(PointCloud2, "/upsample_node/output/pointcloud", received.append,
                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    from std_msgs.msg import Float64

    from sspu_ros.node import DEBUG_TOPICS

    debug = {name: [] for name in DEBUG_TOPICS}
    for name in DEBUG_TOPICS:
        io.create_subscription(Float64, f"/upsample_node/debug/{name}",
                               lambda m, n=name: debug[n].append(m.data), 10)
    pub = io.create_publisher(PointCloud2, "/upsample_node/input/pointcloud",
                              QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))

    def send_and_wait(msg, n_expected, timeout=10.0, until=lambda: True):
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0 or node.pub.get_subscription_count() == 0:
            ex.spin_once(timeout_sec=0.05)
            assert time.monotonic() < deadline, "discovery timed out"
        pub.publish(msg)
        while (len(received) < n_expected or not until()) and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        for _ in range(5):
            ex.spin_once(timeout_sec=0.02)

    node.test_debug = debug
    yield node, send_and_wait, received
    ex.shutdown()
    node.destroy_node()
    io.destroy_node()
    rclpy.shutdown(context=ctx)


def _msg(pts, stamp=(12, 345)):
    header = Header(frame_id="velo_link")
    header.stamp.sec, header.stamp.nanosec = stamp
    return to_pointcloud2(encode_structured(pts), header, PointCloud2, PointField)


def test_node_densifies_keeps_header_and_flags_generated_points(graph):
    node, send_and_wait, received = graph
    pts = _scan()
    send_and_wait(_msg(pts), 1, until=lambda: all(node.test_debug.values()))
    assert len(received) == 1
    out = received[0]
    assert out.header.frame_id == "velo_link"
    assert (out.header.stamp.sec, out.header.stamp.nanosec) == (12, 345)
    d = decode(out)
    names = [f.name for f in out.fields]
    assert names[:4] == ["x", "y", "z", "intensity"] and GENERATED_FIELD in names
    flag = d.points[GENERATED_FIELD]
    assert d.xyz.shape[0] == 4 * len(pts)  # every point inside the default crop, ratio 4
    assert (flag[: len(pts)] == 0).all() and (flag[len(pts):] == 1).all()
    np.testing.assert_array_equal(d.xyz[: len(pts), 0], pts["x"])
    # intensity = x on the input: a midpoint's intensity, interpolated from its two source
    # points (equal distances, equal weights), is exactly its x again
    np.testing.assert_allclose(d.intensity[len(pts):], d.xyz[len(pts):, 0], atol=1e-4)
    times = {k: v[-1] for k, v in node.test_debug.items() if v}
    assert set(times) == set(node.debug), f"debug topics received: {sorted(times)}"
    parts = sum(times[f"processing_time/{p}_ms"] for p in ("preprocess", "inference",
                                                           "postprocess"))
    assert 0 < parts <= times["processing_time/total_ms"] + 1e-6
    assert times["pipeline_latency_ms"] > 1e9  # header stamp is t = 12 s, the clock is now


def test_malformed_cloud_is_rejected_and_node_keeps_publishing(graph):
    node, send_and_wait, received = graph
    bad = _msg(_scan())
    bad.point_step = 8  # smaller than the fields
    send_and_wait(bad, 1, timeout=2.0)
    assert received == [] and node.n_rejected == 1
    send_and_wait(_msg(_scan(seed=1)), 1)
    assert len(received) == 1 and node.n_published == 1


def test_runtime_parameters_are_validated(graph):
    node = graph[0]
    ok = node.set_parameters([Parameter("crop.max_range", value=30.0)])[0]
    assert ok.successful and node.params["crop.max_range"] == 30.0
    bad = node.set_parameters([Parameter("crop.max_range", value=-1.0)])[0]
    assert not bad.successful and "crop.max_range" in bad.reason
    ro = node.set_parameters([Parameter("model", value="midpoint")])[0]
    assert not ro.successful


def test_bad_model_exits_nonzero_with_one_message(capsys):
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    rc = main(["upsample_node", "--ros-args", "-p", "model:=no_such_model"])
    assert rc == 2
    assert "model 'no_such_model' not found" in capsys.readouterr().err
