"""``upsample_node`` running in-process over real DDS, for tests.

:class:`LiveNode` runs the node in its own rclpy context (its own DDS participant), spun
by the node's own multi-threaded executor (:func:`sspu_ros.ros.node.create_executor`) in
a background thread, exactly as ``main()`` spins it; a test node in a second context
(a second participant: samples go through the DDS transport, not a shortcut) publishes
the input, collects the output and ``/diagnostics`` and calls the parameter services.
Discovery stays on loopback (``conftest.py``) on a domain from :func:`ros_domain_id`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import numpy as np

DOMAINS_ENV = "SSPU_TEST_ROS_DOMAINS"  # e.g. "60-79": the ROS_DOMAIN_IDs tests may use


def ros_domain_id() -> int:
    """A random ROS_DOMAIN_ID in ``$SSPU_TEST_ROS_DOMAINS`` ("lo-hi", default 100-200)."""
    lo, _, hi = os.environ.get(DOMAINS_ENV, "100-200").partition("-")
    return random.SystemRandom().randint(int(lo), int(hi or lo))


def xyzi_scan(n: int = 400, seed: int = 0) -> np.ndarray:
    """(n,) x, y, z, intensity float32 points on a 10 m ring (one cluster per arc)."""
    rng = np.random.default_rng(seed)
    pts = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    ang = rng.uniform(0, 2 * np.pi, n)
    pts["x"], pts["y"] = 10 * np.cos(ang), 10 * np.sin(ang)
    pts["z"] = rng.uniform(-1, 1, n)
    pts["intensity"] = pts["x"]
    return pts


def stamp_of(seq: int, rate_hz: float = 10.0, t0: int = 1_700_000_000) -> tuple[int, int]:
    """(sec, nanosec) of scan ``seq`` of a sensor at ``rate_hz`` starting at ``t0``."""
    ns = t0 * 10**9 + round(seq * 1e9 / rate_hz)
    return divmod(ns, 10**9)


def scan_message(pts: np.ndarray, seq: int = 0, frame_id: str = "velo_link"):
    """A sensor_msgs/PointCloud2 of structured points, stamped :func:`stamp_of` (seq)."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2 import encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = stamp_of(seq)
    return to_pointcloud2(encode_structured(pts), header, PointCloud2, PointField)


def message_from_namespace(msg, seq: int = 0, frame_id: str = "velo_link"):
    """A sensor_msgs/PointCloud2 with the layout and bytes of a PointCloud2-like object
    (``test/cloud_strategies.py``), malformed or not, stamped :func:`stamp_of` (seq)."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2_message import bytes_to_uint8_array

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = stamp_of(seq)
    out = PointCloud2(header=header, height=msg.height, width=msg.width,
                      is_bigendian=bool(msg.is_bigendian), point_step=msg.point_step,
                      row_step=msg.row_step, is_dense=False,
                      fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype,
                                         count=f.count) for f in msg.fields])
    out.data = bytes_to_uint8_array(np.frombuffer(bytes(msg.data), np.uint8))
    return out


def seq_of(header, rate_hz: float = 10.0, t0: int = 1_700_000_000) -> int:
    return round(((header.stamp.sec - t0) * 10**9 + header.stamp.nanosec) * rate_hz / 1e9)


class LiveNode:
    """The node spinning in a background thread and a test node talking to it over DDS.

    ``outputs``: (receive time, PointCloud2) of ``~/output/pointcloud``; ``diagnostics``:
    (receive time, {key: value} | {"message", "level"}) of the node's ``/diagnostics``
    status. Use as a context manager.
    """

    def __init__(self, parameter_overrides=(), output_depth: int = 50) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        from sspu_ros.ros.node import DIAGNOSTIC_NAME, create_executor, create_node

        self.domain_id = ros_domain_id()
        self.node_context, self.io_context = rclpy.Context(), rclpy.Context()
        for ctx in (self.node_context, self.io_context):
            rclpy.init(context=ctx, domain_id=self.domain_id)
        self.node = create_node(context=self.node_context,
                                parameter_overrides=list(parameter_overrides))
        self.executor = create_executor(self.node_context)
        self.executor.add_node(self.node)
        self.io = rclpy.create_node("test_io", context=self.io_context)
        self.io_executor = rclpy.executors.SingleThreadedExecutor(context=self.io_context)
        self.io_executor.add_node(self.io)
        self.outputs: list = []
        self.diagnostics: list = []
        reliable = QoSProfile(depth=output_depth, reliability=ReliabilityPolicy.RELIABLE)
        self.io.create_subscription(PointCloud2, "/upsample_node/output/pointcloud",
                                    lambda m: self.outputs.append((time.monotonic(), m)),
                                    reliable)

        def on_diagnostics(arr) -> None:
            for st in arr.status:
                if st.name == DIAGNOSTIC_NAME:
                    values = {kv.key: kv.value for kv in st.values}
                    values.update(message=st.message, level=st.level[0])
                    self.diagnostics.append((time.monotonic(), values))

        self.io.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        self.pub = self.io.create_publisher(
            PointCloud2, "/upsample_node/input/pointcloud",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.params = AsyncParameterClient(self.io, "upsample_node")
        self._threads = [threading.Thread(target=self._spin, args=(ex,), daemon=True)
                         for ex in (self.executor, self.io_executor)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _spin(executor) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    # ------------------------------------------------------------------ waiting
    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0,
                 what: str = "condition") -> float:
        """Poll ``cond`` until true; returns the seconds waited (AssertionError on timeout,
        with ``what`` and the node's counters)."""
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, (
                f"timed out after {timeout} s: {what}; node counters {self.counts()}")
            time.sleep(0.01)
        return time.monotonic() - t0

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Input and output matched both ways and the parameter services found."""
        self.wait_for(lambda: self.pub.get_subscription_count() > 0
                      and self.node.pub.get_subscription_count() > 0
                      and self.io.count_publishers("/diagnostics") > 0,
                      timeout, "discovery of the node")
        assert self.params.wait_for_services(timeout_sec=timeout), "no parameter services"
        time.sleep(0.3)  # let both ends finish matching

    def last_diagnostics(self, after: float = 0.0) -> dict | None:
        """The newest status received after ``after`` (monotonic), or None."""
        return next((v for t, v in reversed(self.diagnostics) if t > after), None)

    def counts(self) -> dict[str, int]:
        """The node's counters right now (in-process, under its lock)."""
        with self.node.lock:
            return self.node.stats.counts()

    def call(self, future, timeout: float = 5.0):
        """The result of a service future (the test node's executor completes it)."""
        self.wait_for(future.done, timeout, "a service response")
        return future.result()

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        import rclpy

        for ex in (self.io_executor, self.executor):
            ex.shutdown(timeout_sec=10.0)
        for t in self._threads:
            t.join(timeout=10.0)
        self.io.destroy_node()
        self.node.destroy_node()
        for ctx in (self.io_context, self.node_context):
            rclpy.shutdown(context=ctx)

    def __enter__(self) -> LiveNode:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
