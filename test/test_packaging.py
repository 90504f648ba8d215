"""The package builds with colcon (ament_python) and installs what a ROS 2 user expects."""

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from sspu_ros.config import parameter_specs

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python_with_runtime_deps():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "sspu_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "python3-numpy",
            "python3-yaml"} <= deps


def test_launch_file_parses_and_its_arguments_map_to_declared_parameters():
    tree = ast.parse((REPO / "launch" / "upsample.launch.py").read_text())
    mapping = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "PARAMETER_ARGUMENTS")
    params = {elt.elts[0].value for elt in mapping.value.values}
    assert params and params <= set(parameter_specs())


def test_colcon_build_installs_the_ros_layout(colcon_workspace):
    share = colcon_workspace / "install" / "sspu_ros" / "share"
    lib = colcon_workspace / "install" / "sspu_ros" / "lib"
    for rel in ["sspu_ros/package.xml", "sspu_ros/launch/upsample.launch.py",
                "sspu_ros/config/upsample.yaml", "sspu_ros/config/upsample.schema.json",
                "sspu_ros/models", "ament_index/resource_index/packages/sspu_ros"]:
        assert (share / rel).exists(), rel
    for exe in ["upsample_node", "sspu"]:
        assert (lib / "sspu_ros" / exe).is_file(), exe
    # The installed CLI finds the installed config (not the source tree's).
    site = next((lib).glob("python3*/site-packages"))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(lib / "sspu_ros" / "sspu"), "config", "path"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == share / "sspu_ros" / "config"
