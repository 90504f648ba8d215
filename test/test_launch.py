"""launch/upsample.launch.py: every launch argument maps to a declared parameter, a topic
remapping or a node/environment setting; with `launch` importable, the file builds a
LaunchDescription and its node action carries the parameters, remappings and the Fast DDS
environment.

And the real thing: the package colcon-built into a temporary workspace, then
``ros2 launch sspu_ros upsample.launch.py`` run by ``../shared/tools/ros2launch/ros2-launch``
(the unmodified ros2/launch and ros2/launch_ros sources; no wheel provides them): a scan
published on the remapped input comes back densified on the remapped output, Ctrl-C
(SIGINT) ends it cleanly, and ``--show-args`` matches the README's table of launch
arguments. Skipped, with the reason, where ``../shared/tools/ros2launch`` is absent.
"""

import ast
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sspu_ros.config import parameter_specs
from sspu_ros.ros.node import INPUT_TOPIC, NODE_NAME, OUTPUT_TOPIC

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "upsample.launch.py"
README = REPO / "README.md"
ROS2_LAUNCH = REPO.parent / "shared" / "tools" / "ros2launch" / "ros2-launch"
LAUNCH_SOURCES = ROS2_LAUNCH.parent / "python"
DOMAIN_IDS = range(80, 90)  # this test's DDS domains (loopback only)


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


@pytest.fixture
def launch_sources(monkeypatch):
    """Where no ROS 2 install provides ``launch``/``launch_ros``, the unmodified sources beside
    the ros2-launch wrapper (../shared/tools/ros2launch/python) serve, for this test only:
    no bytecode written there, and their modules leave sys.modules afterwards."""
    if importlib.util.find_spec("launch_ros") is not None or not LAUNCH_SOURCES.is_dir():
        yield
        return
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(LAUNCH_SOURCES))
    if getattr(sys.modules.get("launch"), "__file__", "") is None:  # the launch/ folder
        monkeypatch.delitem(sys.modules, "launch")
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(
                str(LAUNCH_SOURCES)):
            del sys.modules[name]


def _load_launch_module():
    # not find_spec: from the repo root, the launch/ folder itself is a namespace package
    try:
        import launch_ros.actions  # noqa: F401

        from launch import LaunchDescription  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ROS 2 'launch'/'launch_ros' are not importable ({e}): a ROS 2 install "
                    f"provides them, or their sources at {LAUNCH_SOURCES} (clone the repo "
                    "beside ../shared)")
    spec = importlib.util.spec_from_file_location("upsample_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_description_builds_the_node_with_large_data(launch_sources, monkeypatch):
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
    ctx.launch_configurations["ratio"] = "four"
    with pytest.raises(ValueError, match=r"launch argument ratio:='four' is not a valid int"):
        module._node(ctx)


# ---- the real `ros2 launch` (../shared/tools/ros2launch) on a colcon install space

@pytest.fixture(scope="module")
def ros2_launch() -> Path:
    if not os.access(ROS2_LAUNCH, os.X_OK):
        pytest.skip(f"the ros2-launch wrapper (real launch/launch_ros sources) not found at "
                    f"{ROS2_LAUNCH} (clone the repo beside ../shared); without it "
                    "`ros2 launch` needs a ROS 2 install")
    return ROS2_LAUNCH


def _launch_env(tmp_path: Path, domain_id: int) -> dict[str, str]:
    """The launch process's environment: this interpreter (it imports rclpy), loopback-only
    discovery in its own domain, logs under tmp_path, no bytecode written into ../shared,
    and no FASTDDS_BUILTIN_TRANSPORTS, so the launch file's own setting applies."""
    env = dict(os.environ, PYTHON=sys.executable, ROS_DOMAIN_ID=str(domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_HOME=str(tmp_path / "ros_home"),
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    for var in ("ROS_LOCALHOST_ONLY", "ROS_LOG_DIR", "FASTDDS_BUILTIN_TRANSPORTS"):
        env.pop(var, None)
    return env


def _show_args(ros2_launch: Path, install: Path, tmp_path: Path) -> dict[str, str]:
    """``ros2 launch sspu_ros upsample.launch.py --show-args`` -> {name: default as printed}."""
    run = subprocess.run([str(ros2_launch), "--install", str(install), "sspu_ros",
                          "upsample.launch.py", "--show-args"],
                         env=_launch_env(tmp_path, DOMAIN_IDS[0]), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    args, name = {}, None
    for line in run.stdout.splitlines():
        if m := re.fullmatch(r"    '(\w+)':", line):
            name = m.group(1)
            args[name] = None
        elif (m := re.fullmatch(r"\s+\(default: (.*)\)", line)) and name is not None:
            args[name] = m.group(1)
    assert args and None not in args.values(), run.stdout
    return args


def _as_readme_default(printed: str) -> str:
    """A default as --show-args prints it -> as the README's table writes it: ``''`` ->
    ``empty``, ``'x'`` -> ```x```, a path in the package's share folder -> ``the package's
    `a/b` ``."""
    if printed == "''":
        return "empty"
    if m := re.fullmatch(r"'([^']*)'", printed):
        return f"`{m.group(1)}`"
    # PathJoin('FindPackageShare(pkg='sspu_ros') + 'config' + 'upsample.yaml'')
    flat = printed.replace("'", "")
    if m := re.fullmatch(r"PathJoin\(FindPackageShare\(pkg=sspu_ros\)((?: \+ [^ +)]+)+)\)",
                         flat):
        return f"the package's `{'/'.join(m.group(1).split(' + ')[1:])}`"
    raise AssertionError(f"unexpected --show-args default {printed!r}")


def _readme_launch_arguments() -> dict[str, str]:
    """The README's table after 'Launch arguments (`ros2 launch ... --show-args`)':
    {argument: default cell}, one entry per argument of a row (`a`, `b`, `c`)."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Launch arguments ("))
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
        elif table:
            break
    assert table[0][:2] == ["argument", "default"], table[0]
    out = {}
    for row in table[2:]:  # after the header and the |---| line
        for name in re.findall(r"`(\w+)`", row[0]):
            out[name] = row[1]
    return out


def test_show_args_matches_the_readme_table(colcon_workspace, ros2_launch, tmp_path):
    printed = _show_args(ros2_launch, colcon_workspace / "install", tmp_path)
    readme = _readme_launch_arguments()
    assert list(printed) == _module_constants()["declared"]
    assert set(readme) == set(printed), \
        f"README table {sorted(readme)} vs --show-args {sorted(printed)}"
    for name, default in printed.items():
        assert readme[name] == _as_readme_default(default), \
            f"{name}: README says {readme[name]!r}, --show-args {default!r}"
    # every name:=value in the README's `ros2 launch` commands is a launch argument
    used = set(re.findall(r"ros2 launch sspu_ros upsample\.launch\.py((?: \w+:=\S+)+)",
                          README.read_text()))
    names = {a.split(":=")[0] for cmd in used for a in cmd.split()}
    assert names and names <= set(printed), names - set(printed)


def _ring_scan(n: int = 400) -> np.ndarray:
    """A 10 m ring of n points, x, y, z, intensity float32 (what test_node densifies)."""
    rng = np.random.default_rng(0)
    pts = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    ang = rng.uniform(0, 2 * np.pi, n)
    pts["x"], pts["y"] = 10 * np.cos(ang), 10 * np.sin(ang)
    pts["z"] = rng.uniform(-1, 1, n)
    pts["intensity"] = rng.uniform(0, 1, n)
    return pts


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.ros
def test_ros2_launch_densifies_on_the_remapped_topics_and_stops_on_sigint(
        colcon_workspace, ros2_launch, tmp_path, monkeypatch):
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
    pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from sspu_ros.io.pointcloud2 import GENERATED_FIELD, decode, encode_structured
    from sspu_ros.io.pointcloud2_message import to_pointcloud2

    domain_id = random.SystemRandom().choice(DOMAIN_IDS)
    in_topic, out_topic = "/launch_test/scan", "/launch_test/dense"
    log = tmp_path / "launch.log"
    t0 = time.monotonic()
    with open(log, "w") as log_file:
        # own process group (killed in `finally`), SIGINT not ignored even where pytest
        # itself runs with it ignored (a background job): launch handles it as Ctrl-C
        proc = subprocess.Popen(
            [str(ros2_launch), "--install", str(colcon_workspace / "install"), "sspu_ros",
             "upsample.launch.py", f"input_topic:={in_topic}", f"output_topic:={out_topic}",
             "model:=midpoint", "ratio:=2"],
            stdout=log_file, stderr=subprocess.STDOUT, env=_launch_env(tmp_path, domain_id),
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def launch_log() -> str:
        return log.read_text()[-4000:]

    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    ctx, t_sigint = rclpy.Context(), time.monotonic()
    try:
        rclpy.init(context=ctx, domain_id=domain_id)
        io = rclpy.create_node("launch_test_io", context=ctx)
        ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
        ex.add_node(io)
        received = []
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        io.create_subscription(PointCloud2, out_topic, received.append, reliable)
        pub = io.create_publisher(PointCloud2, in_topic, reliable)
        pts = _ring_scan()
        header = Header(frame_id="launch_test_lidar")
        header.stamp.sec, header.stamp.nanosec = 1_700_000_123, 456_000_000
        msg = to_pointcloud2(encode_structured(pts), header, PointCloud2, PointField)

        def spin_until(cond, timeout: float, every=None) -> bool:
            deadline, t_next = time.monotonic() + timeout, 0.0
            while not cond() and time.monotonic() < deadline:
                assert proc.poll() is None, \
                    f"ros2 launch exited with {proc.returncode}:\n{launch_log()}"
                if every is not None and time.monotonic() >= t_next:
                    every()
                    t_next = time.monotonic() + 1.0
                ex.spin_once(timeout_sec=0.05)
            return cond()

        assert spin_until(lambda: pub.get_subscription_count() > 0
                          and io.count_publishers(out_topic) > 0, 60.0), \
            f"the launched node never appeared on {in_topic} / {out_topic}:\n{launch_log()}"
        t_up = time.monotonic() - t0
        # depth-1 input and an output subscriber matched a moment later: resend each second
        assert spin_until(lambda: received, 30.0, every=lambda: pub.publish(msg)), \
            f"no densified cloud on {out_topic}:\n{launch_log()}"
        t_out = time.monotonic() - t0
        out = received[0]
        assert out.header.frame_id == "launch_test_lidar"
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (1_700_000_123, 456_000_000)
        d = decode(out)
        n = len(pts)
        flag = d.points[GENERATED_FIELD]
        assert n < d.xyz.shape[0] <= 2 * n
        assert (flag[:n] == 0).all() and (flag[n:] == 1).all()
        np.testing.assert_array_equal(d.xyz[:n, 0], pts["x"])
        ex.shutdown()
        io.destroy_node()
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)
        try:
            if proc.poll() is None:
                t_sigint = time.monotonic()
                proc.send_signal(signal.SIGINT)  # Ctrl-C to ros2 launch (not to the node)
                try:
                    proc.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"ros2 launch still running 45 s after SIGINT:\n"
                                f"{launch_log()}")
        finally:
            _kill_group(proc)  # whatever is left of the launch and its node
    text = log.read_text()
    assert proc.returncode == 0, f"ros2 launch exit status {proc.returncode}:\n{text[-4000:]}"
    assert "Traceback" not in text and "process has died" not in text, text[-4000:]
    assert re.search(r"\[upsample_node-1\]: process has finished cleanly", text), text[-4000:]
    # the remappings and the model/ratio overrides reached the node
    assert re.search(rf"\[{NODE_NAME}\]: densifying {in_topic} -> {out_topic} with model "
                     r"'midpoint' \(\w+\) x2;", text), text[-4000:]
    print(f"\nros2 launch: node up {t_up:.1f} s, first densified cloud {t_out:.1f} s after "
          f"the start, exit 0 {time.monotonic() - t_sigint:.1f} s after SIGINT")
