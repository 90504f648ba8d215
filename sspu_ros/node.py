"""``upsample_node``: the thin rclpy shell over the ROS-free core.

Subscribes ``~/input/pointcloud`` (sensor_msgs/PointCloud2), densifies the scan with the
configured upsampler (:func:`sspu_ros.densify.densify_points`) and publishes
``~/output/pointcloud`` with the input's header, the input's fields for the original
points, the generated points appended and a ``generated`` uint8 flag field.

Parameters are declared from the one schema (``config/upsample.schema.json``) with the
defaults of ``config/upsample.yaml``. A malformed cloud is rejected with a throttled
warning; no exception in processing stops the node.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

from .config import (
    ConfigError,
    ParameterSpec,
    default_parameters,
    parameter_specs,
    validate_parameter,
    validate_parameters,
)
from .densify import densify_points
from .pointcloud2 import PointCloudFormatError, decode, encode_densified
from .ros_msgs import to_pointcloud2
from .upsampler import ModelError, load_upsampler

NODE_NAME = "upsample_node"
# ~/debug/<name> (std_msgs/Float64), per processed scan: decode / densify / encode+publish
# times and the pipeline latency (node clock now minus the input header stamp).
DEBUG_TOPICS = ("processing_time/preprocess_ms", "processing_time/inference_ms",
                "processing_time/postprocess_ms", "processing_time/total_ms",
                "pipeline_latency_ms")
WARN_THROTTLE_S = 5.0


def _descriptor(spec: ParameterSpec):
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    types = {"integer": ParameterType.PARAMETER_INTEGER,
             "number": ParameterType.PARAMETER_DOUBLE,
             "boolean": ParameterType.PARAMETER_BOOL,
             "string": ParameterType.PARAMETER_STRING}
    d = ParameterDescriptor(name=spec.name, type=types[spec.type],
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


def _qos(reliability: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = (ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
           else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)


def create_node(**node_kwargs: Any):
    """Build the node (rclpy must be initialised). Raises ConfigError / ModelError on a bad
    configuration or model, before any topic is created."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Float64

    class UpsampleNode(Node):
        def __init__(self) -> None:
            super().__init__(NODE_NAME, **node_kwargs)
            self.specs = parameter_specs()
            defaults = default_parameters()
            values = {}
            for name, spec in self.specs.items():
                try:
                    param = self.declare_parameter(name, defaults[name], _descriptor(spec))
                except Exception as e:  # noqa: BLE001 - rclpy type/range exceptions
                    raise ConfigError(
                        f"parameter '{name}': {e}; allowed: {spec.allowed()}") from None
                values[name] = param.value
            self.params = validate_parameters(values)
            self.upsampler = load_upsampler(self.params["model"], self.params["ratio"])
            self.add_on_set_parameters_callback(self._on_set_parameters)
            p = self.params
            self.pub = self.create_publisher(
                PointCloud2, "~/output/pointcloud",
                _qos(p["qos.output.reliability"], p["qos.output.depth"]))
            self.sub = self.create_subscription(
                PointCloud2, "~/input/pointcloud", self._on_cloud,
                _qos(p["qos.input.reliability"], p["qos.input.depth"]))
            self.debug = {name: self.create_publisher(Float64, f"~/debug/{name}", 1)
                          for name in DEBUG_TOPICS}
            self.n_received = self.n_published = self.n_rejected = self.n_failed = 0
            self.get_logger().info(
                f"densifying {self.sub.topic_name} -> {self.pub.topic_name} with model "
                f"'{self.upsampler.name}' x{self.upsampler.ratio}")

        def _on_set_parameters(self, params) -> SetParametersResult:
            current = dict(self.params)
            try:
                for prm in params:
                    current[prm.name] = validate_parameter(prm.name, prm.value, current)
            except ConfigError as e:
                return SetParametersResult(successful=False, reason=str(e))
            self.params = current
            return SetParametersResult(successful=True)

        def _on_cloud(self, msg) -> None:
            self.n_received += 1
            if (not self.params["process_without_subscribers"]
                    and self.pub.get_subscription_count() == 0):
                return
            t0 = time.perf_counter()
            try:
                cloud = decode(msg)
                t1 = time.perf_counter()
                result = densify_points(cloud.xyz, self.upsampler, self.params)
                t2 = time.perf_counter()
                encoded = encode_densified(cloud, result.generated, neighbors=result.sources)
                out = to_pointcloud2(encoded, msg.header, PointCloud2, PointField)
            except PointCloudFormatError as e:
                self.n_rejected += 1
                self.get_logger().warning(f"rejected a malformed PointCloud2 ({e})",
                                       throttle_duration_sec=WARN_THROTTLE_S)
                return
            except Exception as e:  # noqa: BLE001 - never let one scan kill the node
                self.n_failed += 1
                self.get_logger().error(
                    f"processing a scan failed: {e!r}\n{traceback.format_exc()}",
                    throttle_duration_sec=WARN_THROTTLE_S)
                return
            self.pub.publish(out)
            t3 = time.perf_counter()
            self.n_published += 1
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            now = self.get_clock().now().nanoseconds * 1e-9
            self._publish_debug({
                "processing_time/preprocess_ms": (t1 - t0) * 1e3,
                "processing_time/inference_ms": (t2 - t1) * 1e3,
                "processing_time/postprocess_ms": (t3 - t2) * 1e3,
                "processing_time/total_ms": (t3 - t0) * 1e3,
                "pipeline_latency_ms": (now - stamp) * 1e3,
            })
            self.get_logger().debug(
                f"{cloud.xyz.shape[0]} points (+{result.generated.shape[0]} generated) in "
                f"{(t3 - t0) * 1e3:.1f} ms")

        def _publish_debug(self, values: dict[str, float]) -> None:
            for name, value in values.items():
                self.debug[name].publish(Float64(data=float(value)))

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
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        try:
            node = create_node()
        except (ConfigError, ModelError) as e:
            print(f"upsample_node: cannot start: {e}", file=sys.stderr)
            return 2
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
