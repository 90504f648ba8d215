"""launch/upsample.launch.py: every launch argument maps to a declared parameter, a topic
remapping or a node/environment setting; with `launch` importable, the file builds a
LaunchDescription and its node action carries the parameters, remappings and the Fast DDS
environment."""

import ast
import importlib.util
from pathlib import Path

import pytest

from sspu_ros.config import parameter_specs
from sspu_ros.ros.node import INPUT_TOPIC, OUTPUT_TOPIC

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "upsample.launch.py"


def _module_constants() -> dict:
    tree = ast.parse(LAUNCH.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal (a dict of types): parsed below
    mapping = next(n for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "PARAMETER_ARGUMENTS")
    out["PARAMETER_ARGUMENTS"] = {k.value: v.elts[0].value
                                  for k, v in zip(mapping.value.keys, mapping.value.values,
                                                  strict=True)}
    declared = [c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", "") == "DeclareLaunchArgument"]
    used = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, "id", "") == "LaunchConfiguration"
            and isinstance(c.args[0], ast.Constant)}
    return out | {"declared": declared, "used": used}


def test_every_launch_argument_maps_to_a_parameter_a_remap_or_a_node_setting():
    c = _module_constants()
    params, remaps, node_args = (c["PARAMETER_ARGUMENTS"], c["REMAP_ARGUMENTS"],
                                 c["NODE_ARGUMENTS"])
    assert set(params.values()) <= set(parameter_specs()), "unknown parameter in the launch file"
    assert set(remaps.values()) == {INPUT_TOPIC, OUTPUT_TOPIC}
    declared = c["declared"]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(params) | set(remaps) | set(node_args)
    assert {"params_file", "model", "backend", "input_topic", "output_topic", "use_sim_time",
            "log_level", "dds_large_data"} <= set(declared)
    assert c["used"] <= set(declared), "LaunchConfiguration of an undeclared argument"
    assert c["FASTDDS_TRANSPORTS_ENV"] == "FASTDDS_BUILTIN_TRANSPORTS"


def _load_launch_module():
    # not find_spec: from the repo root, the launch/ folder itself is a namespace package
    try:
        import launch_ros.actions  # noqa: F401

        from launch import LaunchDescription  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ROS 2 'launch'/'launch_ros' are not importable ({e}); a ROS 2 install "
                    "provides them, the package registry does not")
    spec = importlib.util.spec_from_file_location("upsample_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_description_builds_the_node_with_large_data(monkeypatch):
    module = _load_launch_module()
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable

    from launch import LaunchContext, LaunchDescription

    ld = module.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    ctx = LaunchContext()
    args = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    overrides = {"params_file": "/tmp/p.yaml", "model": "midpoint", "backend": "",
                 "ratio": "", "input_topic": "/in", "output_topic": "/out",
                 "use_sim_time": "true", "log_level": "info", "dds_large_data": "true"}
    assert set(args) == set(overrides)
    ctx.launch_configurations.update(overrides)
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    actions = module._node(ctx)
    env = [a for a in actions if isinstance(a, SetEnvironmentVariable)]
    assert len(env) == 1
    ctx.launch_configurations["dds_large_data"] = "false"
    assert not [a for a in module._node(ctx) if isinstance(a, SetEnvironmentVariable)]
