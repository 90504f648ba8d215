"""The rclpy node over real DDS (in-process): header kept, points added, flag field,
malformed clouds rejected without stopping the node, parameters validated."""

import os
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_graph import ros_domain_id, xyzi_scan  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sspu_ros.io.pointcloud2 import GENERATED_FIELD, decode, encode_structured  # noqa: E402
from sspu_ros.io.pointcloud2_message import to_pointcloud2  # noqa: E402
from sspu_ros.ros.node import create_node, main  # noqa: E402

_scan = xyzi_scan


@pytest.fixture
def graph():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    node = create_node(context=ctx, parameter_overrides=[])
    io = rclpy.create_node("test_io", context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(io)
    received = []
    io.create_subscription(PointCloud2, "/upsample_node/output/pointcloud", received.append,
                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    from std_msgs.msg import Float64

    from sspu_ros.ros.node import DEBUG_TOPICS

    debug = {name: [] for name in DEBUG_TOPICS}
    for name in DEBUG_TOPICS:
        io.create_subscription(Float64, f"/upsample_node/debug/{name}",
                               lambda m, n=name: debug[n].append(m.data), 10)
    pub = io.create_publisher(PointCloud2, "/upsample_node/input/pointcloud",
                              QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def send_and_wait(msg, n_expected, timeout=10.0, until=lambda: True):
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0 or node.pub.get_subscription_count() == 0:
            ex.spin_once(timeout_sec=0.05)
            assert time.monotonic() < deadline, "discovery timed out"
        settle = time.monotonic() + 0.3  # let both ends finish matching (best effort)
        while time.monotonic() < settle:
            ex.spin_once(timeout_sec=0.05)
        pub.publish(msg)
        while (len(received) < n_expected or not until()) and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        for _ in range(5):
            ex.spin_once(timeout_sec=0.02)

    node.test_debug = debug
    node.test_io, node.test_executor = io, ex
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
    n_gen = d.xyz.shape[0] - len(pts)
    assert 0 < n_gen <= 3 * len(pts)  # the ring's clusters are densified, ratio 4
    assert (flag[: len(pts)] == 0).all() and (flag[len(pts):] == 1).all()
    np.testing.assert_array_equal(d.xyz[: len(pts), 0], pts["x"])
    # generated intensities are interpolated from input points: inside the input's range
    gen_i = d.intensity[len(pts):]
    assert pts["intensity"].min() - 1e-4 <= gen_i.min()
    assert gen_i.max() <= pts["intensity"].max() + 1e-4
    times = {k: v[-1] for k, v in node.test_debug.items() if v}
    assert set(times) == set(node.debug), f"debug topics received: {sorted(times)}"
    parts = sum(times[f"processing_time/{p}_ms"] for p in ("preprocess", "inference",
                                                           "postprocess"))
    assert 0 < parts <= times["processing_time/total_ms"] + 1e-6
    assert times["pipeline_latency_ms"] > 1e9  # header stamp is t = 12 s, the clock is now


def _sim_scan_with_rings():
    from sspu_ros.simulation.lidar_sim import procedural_scene, simulate_scan

    scan = simulate_scan(procedural_scene(1, n_objects=8, max_distance=20.0), beams=16,
                         azimuth_step_deg=0.5, seed=0)
    pts = np.zeros(len(scan), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("intensity", "<f4"), ("ring", "<u2")])
    pts["x"], pts["y"], pts["z"] = scan.xyz.T
    pts["intensity"], pts["ring"] = scan.intensity, scan.ring
    return pts, scan


def test_default_model_adds_virtual_beams_and_falls_back_without_beam_structure(graph):
    node, send_and_wait, received = graph
    assert node.params["model"] == "sspu_lidar_x4" and node.upsampler.kind == "beams"
    pts, scan = _sim_scan_with_rings()
    send_and_wait(_msg(pts), 1)
    assert len(received) == 1 and node.n_fallback == 0
    d = decode(received[0])
    gen = d.xyz[len(pts):]
    assert len(gen) > 100
    # new points between the beams, not on them
    elev = np.degrees(np.arctan2(gen[:, 2], np.hypot(gen[:, 0], gen[:, 1])))
    gap = np.min(np.abs(elev[:, None] - scan.elevations_deg[None]), axis=1)
    assert np.median(gap) > 0.3  # beams are 1.8 deg apart; virtual ones 0.45 deg off
    # a cloud without beams (no ring field, not a scan): densified by the fallback
    send_and_wait(_msg(_scan()), 2)
    assert len(received) == 2 and node.n_fallback == 1
    assert len(decode(received[1]).xyz) > 400


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
    os.environ.setdefault("ROS_DOMAIN_ID", str(ros_domain_id()))
    rc = main(["upsample_node", "--ros-args", "-p", "model:=no_such_model"])
    assert rc == 2
    assert "model 'no_such_model' not found" in capsys.readouterr().err


def _spin_until(node, cond, timeout=5.0):
    ex = rclpy.executors.SingleThreadedExecutor(context=node.context)
    ex.add_node(node)
    deadline = time.monotonic() + timeout
    try:
        while not cond() and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
    finally:
        ex.remove_node(node)
        ex.shutdown()


def test_gaps_in_input_stamps_are_counted_as_missing():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    try:
        node = create_node(context=ctx, parameter_overrides=[
            Parameter("process_without_subscribers", value=True)])
        stamps = [(20, 0), (20, 100_000_000), (20, 500_000_000), (20, 400_000_000),
                  (20, 600_000_000)]
        for i, stamp in enumerate(stamps):
            node._on_cloud(_msg(_scan(n=50, seed=i), stamp=stamp))
        # 20.1 s -> 20.5 s at 10 Hz: 20.2, 20.3 and 20.4 never arrived; 20.4 then comes late
        assert node.n_missing == 3 and node.stats.out_of_order == 1
        assert node.n_received == 5 and node.n_published == 5
        node.set_parameters([Parameter("expected_rate_hz", value=20.0)])
        node._on_cloud(_msg(_scan(n=50), stamp=(20, 800_000_000)))  # 20.65 and 20.7 missing
        assert node.n_missing == 6 and node.n_dropped == 0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_read_only_parameters_are_refused_with_a_reason_and_rate_applies(graph):
    node = graph[0]
    for name, value in [("model", "midpoint"), ("ratio", 2),
                        ("qos.input.reliability", "reliable"), ("qos.output.depth", 5)]:
        res = node.set_parameters([Parameter(name, value=value)])[0]
        assert not res.successful and "read-only" in res.reason, (name, res.reason)
    assert node.params["ratio"] == 4
    res = node.set_parameters([Parameter("expected_rate_hz", value=20.0)])[0]
    assert res.successful and node.stats.expected_rate_hz == 20.0
    res = node.set_parameters([Parameter("crop.min_range", value=100.0)])[0]
    assert not res.successful and "must be smaller than 'crop.max_range'" in res.reason


def test_incompatible_publisher_is_reported_with_the_fix(graph):
    node = graph[0]
    assert node.params["qos.input.reliability"] == "reliable"
    node.test_io.create_publisher(PointCloud2, "/upsample_node/input/pointcloud",
                                  rclpy.qos.qos_profile_sensor_data)  # best effort
    deadline = time.monotonic() + 5.0
    while node.stats.incompatible == 0 and time.monotonic() < deadline:
        node.test_executor.spin_once(timeout_sec=0.05)
    assert node.stats.incompatible >= 1
    assert "input (RELIABILITY)" in node.stats.last_problem
    assert "qos.input.reliability: best_effort" in node.stats.last_problem


def test_array_parameters_are_declared_with_array_types(graph):
    from rcl_interfaces.msg import ParameterType

    node = graph[0]
    arrays = [s for s in node.specs.values() if s.type == "array"]
    if not arrays:
        pytest.skip("the schema has no array parameters")
    for spec in arrays:
        param = node.get_parameter(spec.name)
        assert param.type_.value in (ParameterType.PARAMETER_DOUBLE_ARRAY,
                                     ParameterType.PARAMETER_INTEGER_ARRAY,
                                     ParameterType.PARAMETER_STRING_ARRAY,
                                     ParameterType.PARAMETER_BOOL_ARRAY), spec.name


def test_scans_are_skipped_without_subscribers():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    try:
        node = create_node(context=ctx)
        node.pub.get_subscription_count = lambda: 0  # nobody listens
        node._on_cloud(_msg(_scan()))
        assert node.n_skipped == 1 and node.n_published == 0
        node.set_parameters([Parameter("process_without_subscribers", value=True)])
        node._on_cloud(_msg(_scan(), stamp=(12, 100_000_345)))
        assert node.n_published == 1 and node.n_skipped == 1
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_processing_errors_are_counted_and_do_not_raise():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    try:
        node = create_node(context=ctx, parameter_overrides=[
            Parameter("process_without_subscribers", value=True)])

        def boom(*args, **kwargs):
            raise RuntimeError("upsampler exploded")

        import sspu_ros.ros.node as node_module

        original = node_module.densify_points
        node_module.densify_points = boom
        try:
            node._on_cloud(_msg(_scan()))
        finally:
            node_module.densify_points = original
        assert node.n_failed == 1 and "upsampler exploded" in node.stats.last_problem
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_diagnostics_are_published_with_counters():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    try:
        node = create_node(context=ctx)
        got = []
        sub_node = rclpy.create_node("diag_listener", context=ctx)
        sub_node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        bad = _msg(_scan())
        bad.point_step = 8
        node.pub.get_subscription_count = lambda: 1  # process although nobody listens
        node._on_cloud(bad)
        ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        ex.add_node(sub_node)
        deadline = time.monotonic() + 5.0
        while not got and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        ex.shutdown()
        assert got, "no /diagnostics message within 5 s"
        status = got[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.name == "upsample_node: densification"
        assert status.level == DiagnosticStatus.WARN and "1 malformed" in status.message
        assert values["scans rejected (malformed)"] == "1"
        assert values["backend"] == str(getattr(node.upsampler, "backend", node.upsampler.name))
        assert "point_step" in values["last problem"]
        sub_node.destroy_node()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def _node_env():
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id()),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def test_sigint_shuts_down_cleanly():
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "sspu_ros.ros.node", "--ros-args", "-p",
                             "process_without_subscribers:=true"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_node_env())
    lines = []
    try:
        deadline = time.monotonic() + 30
        for line in proc.stdout:  # wait until it is spinning
            lines.append(line)
            if "densifying" in line or time.monotonic() > deadline:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text


def test_broken_model_and_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    os.environ.setdefault("ROS_DOMAIN_ID", str(ros_domain_id()))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    for args, expected in [(["-p", f"model:={broken}"], "cannot start"),
                           (["--params-file", str(tmp_path / "missing.yaml")],
                            "Couldn't parse params file"),
                           (["-p", "crop.max_range:=60"], "write 60.0")]:
        rc = main(["upsample_node", "--ros-args", *args])
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = [ln for ln in err.splitlines() if ln.startswith("upsample_node:")]
        assert len(lines) == 1 and expected in lines[0], err
        assert "Traceback" not in err


def test_degenerate_clouds_pass_through_without_failures():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id())
    try:
        node = create_node(context=ctx, parameter_overrides=[
            Parameter("process_without_subscribers", value=True)])
        nan = _scan(n=20)
        nan["x"] = np.nan
        for i, pts in enumerate([_scan(n=0), _scan(n=3), nan, _scan(n=5000, seed=3)]):
            node._on_cloud(_msg(pts, stamp=(30, i * 100_000_000)))
        assert node.n_failed == 0, node.stats.last_problem
        assert node.n_rejected == 0 and node.n_published == 4
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
