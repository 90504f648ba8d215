"""``upsample_node``: the thin rclpy shell over the ROS-free core.

Subscribes ``~/input/pointcloud`` (sensor_msgs/PointCloud2), densifies the scan with the
configured upsampler (:func:`sspu_ros.densify.densifier.densify_points`) and publishes
``~/output/pointcloud`` with the input's header, the input's fields for the original
points, the generated points appended and a ``generated`` uint8 flag field.

Parameters are declared from the one schema (``config/upsample.schema.json``) with the
defaults of ``config/upsample.yaml``; read-only ones (model, ratio, backend, QoS) are
refused at runtime, the others are validated in the set-parameters callback. A malformed
cloud is rejected with a throttled warning; no exception in processing stops the node.
Scans that never arrived (gaps in the input stamps at ``expected_rate_hz``), rates,
latencies and counters go to ``/diagnostics`` once a second
(:mod:`sspu_ros.ros.diagnostics`, ROS-free). SIGINT shuts down cleanly (exit status 0).

Threads (:func:`create_executor`: a ``MultiThreadedExecutor``, one thread per callback
group): the input subscription (its own group) only stores the newest scan in a one-scan
slot and wakes the processing; a scan still waiting there when a newer one arrives is
counted as *dropped* (with its reason). Processing (decode, densify, publish) runs on the
processing group, always on the newest scan. ``/diagnostics`` and the parameter services
stay in the node's default group, so they answer while a slow scan is processed. Every
received scan ends in exactly one counter: ``received == published + skipped + dropped +
rejected + failed + pending`` (pending: the scan being processed and the one waiting).
"""

from __future__ import annotations

import array
import sys
import threading
import time
import traceback
from typing import Any

from ..config import (
    ParameterSpec,
    default_parameters,
    parameter_specs,
    validate_parameter,
    validate_parameters,
)
from ..densify.beams import ScanHints
from ..densify.densifier import densify_points
from ..errors import ConfigError, ModelError, PointCloudFormatError
from ..io.pointcloud2 import decode, encode_densified
from ..io.pointcloud2_message import to_pointcloud2
from ..runtime.loading import load_upsampler
from .diagnostics import ScanStatistics

NODE_NAME = "upsample_node"
INPUT_TOPIC = "~/input/pointcloud"
OUTPUT_TOPIC = "~/output/pointcloud"
# ~/debug/<name> (std_msgs/Float64), per processed scan: preprocess (decode + densify's
# crop/ground/clusters/patches), inference (the upsampler), postprocess (merge, outliers,
# encode, publish), total, and the pipeline latency (node clock minus the input stamp).
DEBUG_TOPICS = ("processing_time/preprocess_ms", "processing_time/inference_ms",
                "processing_time/postprocess_ms", "processing_time/total_ms",
                "pipeline_latency_ms")
WARN_THROTTLE_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0
DIAGNOSTIC_NAME = f"{NODE_NAME}: densification"
# executor threads: processing, input, default group (diagnostics, parameter services)
EXECUTOR_THREADS = 3
DROP_SUPERSEDED = "superseded by a newer scan while busy"
SHUTDOWN_WAIT_S = 10.0


def create_executor(context=None, num_threads: int = EXECUTOR_THREADS):
    """The executor the node needs (rclpy must be initialised): multi-threaded, so that
    the input, ``/diagnostics`` and the parameter services are served while a scan is
    processed. Add the node (and any other node of the same context) and spin it."""
    from rclpy.executors import MultiThreadedExecutor

    return MultiThreadedExecutor(num_threads=num_threads, context=context)


def _descriptor(spec: ParameterSpec):
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    d = ParameterDescriptor(name=spec.name, type=_ros_type(spec, ParameterType),
                            description=spec.description, read_only=spec.read_only,
                            additional_constraints=f"allowed: {spec.allowed()}")
    lo = spec.schema.get("minimum", spec.schema.get("exclusiveMinimum"))
    hi = spec.schema.get("maximum", spec.schema.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        if spec.type == "integer":
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif spec.type == "number":
            d.floating_point_range = [
                FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def _ros_type(spec: ParameterSpec, ParameterType) -> int:  # noqa: N803 - a message class
    scalar = {"integer": "INTEGER", "number": "DOUBLE", "boolean": "BOOL", "string": "STRING"}
    if spec.type == "array":
        kind = scalar.get(spec.item_type or "", "")
        if not kind:
            raise ConfigError(f"parameter '{spec.name}': arrays of {spec.item_type!r} cannot "
                              "be ROS 2 parameters")
        return getattr(ParameterType, f"PARAMETER_{kind}_ARRAY")
    return getattr(ParameterType, f"PARAMETER_{scalar[spec.type]}")


def _plain(value: Any) -> Any:
    """ROS parameter value -> plain Python (array parameters arrive as array.array)."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


def _incompatible_qos_handler(callback) -> dict[str, Any]:
    """``event_callbacks`` kwargs for a subscription (rclpy >= Iron, or Humble's qos_event);
    empty where neither exists."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        try:
            from rclpy.qos_event import SubscriptionEventCallbacks
        except ImportError:
            return {}
    return {"event_callbacks": SubscriptionEventCallbacks(incompatible_qos=callback)}


def _qos(reliability: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = (ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
           else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)


def create_node(**node_kwargs: Any):
    """Build the node (rclpy must be initialised). Raises ConfigError / ModelError on a bad
    configuration or model, before any topic is created."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import ParameterType, SetParametersResult
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Float64

    class UpsampleNode(Node):
        def __init__(self) -> None:
            super().__init__(NODE_NAME, **node_kwargs)
            self.specs = parameter_specs()
            self.params = validate_parameters(self._declare_parameters())
            self.upsampler = load_upsampler(self.params["model"], self.params["ratio"],
                                            config=self.params)
            self.backend = str(getattr(self.upsampler, "backend", self.upsampler.name))
            p = self.params
            # stats and the newest-scan slot are shared by the executor's threads
            self.lock = threading.Lock()
            self.stats = ScanStatistics(p["expected_rate_hz"])
            self._latest = None  # the newest received scan not yet taken for processing
            self.n_fallback = 0  # beam model: scans densified by the patch fallback
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self.input_group = MutuallyExclusiveCallbackGroup()
            self.processing_group = MutuallyExclusiveCallbackGroup()
            self.pub = self.create_publisher(
                PointCloud2, OUTPUT_TOPIC,
                _qos(p["qos.output.reliability"], p["qos.output.depth"]))
            self._wake = self.create_guard_condition(self._process_pending,
                                                     callback_group=self.processing_group)
            self.sub = self.create_subscription(
                PointCloud2, INPUT_TOPIC, self._on_input,
                _qos(p["qos.input.reliability"], p["qos.input.depth"]),
                callback_group=self.input_group,
                **_incompatible_qos_handler(self._on_incompatible_publisher))
            self.debug = {name: self.create_publisher(Float64, f"~/debug/{name}", 1)
                          for name in DEBUG_TOPICS}
            self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 1)
            # a steady clock: diagnostics keep coming with use_sim_time and no /clock
            self.diagnostics_timer = self.create_timer(
                DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                clock=Clock(clock_type=ClockType.STEADY_TIME))
            self.get_logger().info(
                f"densifying {self.sub.topic_name} -> {self.pub.topic_name} with model "
                f"'{self.upsampler.name}' ({self.backend}) x{self.upsampler.ratio}; input "
                f"{p['qos.input.reliability']} depth {p['qos.input.depth']}, output "
                f"{p['qos.output.reliability']} depth {p['qos.output.depth']}")

        # counters kept as attributes for tests and introspection
        n_received = property(lambda self: self.stats.received)
        n_published = property(lambda self: self.stats.published)
        n_rejected = property(lambda self: self.stats.rejected)
        n_failed = property(lambda self: self.stats.failed)
        n_dropped = property(lambda self: self.stats.dropped)
        n_missing = property(lambda self: self.stats.missing)
        n_skipped = property(lambda self: self.stats.skipped)

        def _declare_parameters(self) -> dict[str, Any]:
            defaults = default_parameters()
            values: dict[str, Any] = {}
            unset = []
            for name, spec in self.specs.items():
                default = defaults[name]
                try:
                    if spec.type == "array" and not default:
                        # rclpy cannot infer an array type from an empty default
                        param = self.declare_parameter(
                            name, Parameter.Type(_ros_type(spec, ParameterType)),
                            _descriptor(spec))
                        if param.value is None:
                            unset.append(Parameter(name, param.type_, []))
                    else:
                        param = self.declare_parameter(name, default, _descriptor(spec))
                except Exception as e:  # noqa: BLE001 - rclpy type/range exceptions
                    raise ConfigError(self._declare_error(name, spec, defaults, e)) from None
                values[name] = default if param.value is None else _plain(param.value)
            writable = [prm for prm in unset if not self.specs[prm.name].read_only]
            if writable:  # before the set-parameters callback exists
                self.set_parameters(writable)
            return values

        def _declare_error(self, name: str, spec: ParameterSpec, defaults: dict[str, Any],
                           error: Exception) -> str:
            """One clear message for an override (-p, --params-file) rclpy refused."""
            override = getattr(self, "_parameter_overrides", {}).get(name)
            if override is None:
                return f"parameter '{name}': {error}; allowed: {spec.allowed()}"
            value = _plain(override.value)
            try:
                validate_parameter(name, value, defaults, runtime=False)
            except ConfigError as e:
                return str(e)
            if spec.type == "number" and isinstance(value, int):
                return (f"parameter '{name}' = {value} is an integer, but the parameter is a "
                        f"floating-point number: write {value}.0 (allowed: {spec.allowed()})")
            return (f"parameter '{name}' = {value!r} has the wrong type ({error}); allowed: "
                    f"{spec.allowed()}")

        def _on_set_parameters(self, params) -> SetParametersResult:
            current = dict(self.params)
            try:
                for prm in params:
                    current[prm.name] = validate_parameter(prm.name, _plain(prm.value),
                                                           current)
            except ConfigError as e:
                return SetParametersResult(successful=False, reason=str(e))
            self.params = current  # one assignment: a scan reads one consistent dict
            with self.lock:
                self.stats.expected_rate_hz = current["expected_rate_hz"]
            return SetParametersResult(successful=True)

        def _on_incompatible_publisher(self, info) -> None:
            policy = getattr(getattr(info, "last_policy_kind", None), "name", "unknown")
            policy = policy.removeprefix("RMW_QOS_POLICY_")
            hint = ("it publishes best effort (e.g. SensorDataQoS): set "
                    "qos.input.reliability: best_effort in the parameter file"
                    if policy == "RELIABILITY" else "make the QoS of both ends compatible")
            problem = (f"a publisher on {self.sub.topic_name} offers QoS incompatible with "
                       f"this node's input ({policy}); none of its scans arrive: {hint}")
            with self.lock:
                self.stats.on_incompatible_publisher(problem)
            self.get_logger().error(problem, throttle_duration_sec=WARN_THROTTLE_S)

        def _on_input(self, msg) -> None:
            """Subscription callback (input group): keep the newest scan, wake processing."""
            self._store(msg)
            self._wake.trigger()

        def _on_cloud(self, msg) -> None:
            """Receive and process one scan in the calling thread (tests, tools)."""
            self._store(msg)
            self._process_pending()

        def _store(self, msg) -> None:
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            with self.lock:
                self.stats.on_received(stamp)
                replaced, self._latest = self._latest, msg
                if replaced is not None:
                    self.stats.on_dropped(DROP_SUPERSEDED)
            if replaced is not None:
                self.get_logger().warning(
                    "dropping older scans: processing is slower than the input; the newest "
                    "scan is processed (counts on /diagnostics)",
                    throttle_duration_sec=WARN_THROTTLE_S)

        def _process_pending(self) -> None:
            """Processing group: process the newest stored scan until none is left."""
            while True:
                with self.lock:
                    msg, self._latest = self._latest, None
                if msg is None:
                    return
                try:
                    self._process(msg)
                except Exception as e:  # noqa: BLE001 - never let one scan kill the node
                    with self.lock:
                        self.stats.on_failed(repr(e))
                    if not self.context.ok():  # shutting down (SIGINT) while processing
                        return
                    self.get_logger().error(
                        f"processing a scan failed: {e!r}\n{traceback.format_exc()}",
                        throttle_duration_sec=WARN_THROTTLE_S)

        def _process(self, msg) -> None:
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            params = self.params  # this scan's parameters, whatever is set meanwhile
            if (not params["process_without_subscribers"]
                    and self.pub.get_subscription_count() == 0):
                with self.lock:
                    self.stats.on_skipped()
                return
            t0 = time.perf_counter()
            try:
                cloud = decode(msg)
            except PointCloudFormatError as e:
                with self.lock:
                    self.stats.on_rejected(str(e))
                self.get_logger().warning(f"rejected a malformed PointCloud2 ({e})",
                                          throttle_duration_sec=WARN_THROTTLE_S)
                return
            t1 = time.perf_counter()
            result = densify_points(cloud.xyz, self.upsampler, params,
                                    hints=ScanHints.from_decoded(cloud))
            t2 = time.perf_counter()
            if result.fallback:
                self._on_fallback(result.fallback)
            encoded = encode_densified(cloud, result.generated, neighbors=result.sources)
            self.pub.publish(to_pointcloud2(encoded, msg.header, PointCloud2, PointField))
            t3 = time.perf_counter()
            now = self.get_clock().now().nanoseconds * 1e-9
            latency_ms = (now - stamp) * 1e3
            with self.lock:
                self.stats.on_published(latency_ms, (t3 - t0) * 1e3)
            # decode + densify's own preprocess (crop, ground, clusters, patches); the
            # upsampler; densify's merge/outliers + encode + publish
            core = getattr(result, "timings_ms", None) or {}
            self._publish_debug({
                "processing_time/preprocess_ms": (t1 - t0) * 1e3 + core.get("preprocess", 0.0),
                "processing_time/inference_ms": core.get("inference", (t2 - t1) * 1e3),
                "processing_time/postprocess_ms": (t3 - t2) * 1e3 + core.get("postprocess", 0.0),
                "processing_time/total_ms": (t3 - t0) * 1e3,
                "pipeline_latency_ms": latency_ms,
            })
            self.get_logger().debug(
                f"{cloud.xyz.shape[0]} points (+{result.generated.shape[0]} generated) in "
                f"{(t3 - t0) * 1e3:.1f} ms")

        def _on_fallback(self, reason: str) -> None:
            """A scan without a beam structure went to the patch fallback: said once in
            full, then at most every WARN_THROTTLE_S with the running count."""
            with self.lock:
                self.n_fallback += 1
                first, n = self.n_fallback == 1, self.n_fallback
            fb = getattr(self.upsampler, "fallback", None)
            how = (f"densified with point patches ('{fb.name}', lidar.fallback_model)"
                   if fb is not None else "passed through (lidar.fallback_model: none)")
            if first:
                self.get_logger().warning(
                    f"no beam structure in the scan ({reason}); {how}. Set lidar.sensor to "
                    "the sensor's preset, or publish the driver's ring field")
            else:
                self.get_logger().warning(
                    f"{n} scans without a beam structure so far; {how}",
                    throttle_duration_sec=WARN_THROTTLE_S)

        def _publish_debug(self, values: dict[str, float]) -> None:
            for name, value in values.items():
                self.debug[name].publish(Float64(data=float(value)))

        def _publish_diagnostics(self) -> None:
            try:
                extra = [("model", str(self.upsampler.name)),
                         ("scans densified by the patch fallback (no beam structure)",
                          str(self.n_fallback)),
                         ("ratio", str(self.upsampler.ratio)),
                         ("input topic", self.sub.topic_name),
                         ("output subscribers", str(self.pub.get_subscription_count()))]
                with self.lock:
                    report = self.stats.report(self.backend, extra=extra)
                status = DiagnosticStatus(
                    level=bytes([report.level]), name=DIAGNOSTIC_NAME,
                    message=report.message, hardware_id=self.sub.topic_name,
                    values=[KeyValue(key=k, value=v) for k, v in report.values])
                out = DiagnosticArray(status=[status])
                out.header.stamp = self.get_clock().now().to_msg()
                self.diagnostics_pub.publish(out)
            except Exception as e:  # noqa: BLE001 - diagnostics must not kill the node
                self.get_logger().error(f"publishing diagnostics failed: {e!r}",
                                        throttle_duration_sec=WARN_THROTTLE_S)

    return UpsampleNode()


def main(argv: list[str] | None = None) -> int:
    try:
        import rclpy
        from rclpy.executors import ExternalShutdownException
    except ImportError as e:
        print(f"upsample_node: rclpy is not available ({e}); source your ROS 2 install "
              "(source /opt/ros/<distro>/setup.bash) or pip install -e '.[ros]'",
              file=sys.stderr)
        return 1
    try:
        rclpy.init(args=argv if argv is not None else sys.argv)
    except Exception as e:  # noqa: BLE001 - RCLError: bad --ros-args, unreadable params file
        print(f"upsample_node: cannot start: {e}", file=sys.stderr)
        return 2
    try:
        try:
            node = create_node()
        except (ConfigError, ModelError) as e:
            print(f"upsample_node: cannot start: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - e.g. a model file a loader cannot parse
            print(f"upsample_node: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        executor = create_executor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown(timeout_sec=SHUTDOWN_WAIT_S)  # lets a scan in progress end
            node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
