"""``sspu demo``: the sample recording, the no-ROS run and the live run through the node."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sspu_ros.cli.main import main
from sspu_ros.io.bags import read_pointclouds
from sspu_ros.ros.demo import INPUT_TOPIC, OUTPUT_TOPIC, START_NS, make_sample_recording


def _rclpy_available() -> bool:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return False
    return True


def test_sample_recording_layout(tmp_path):
    scans = make_sample_recording(tmp_path / "rec", frames=3, beams=8, seed=1)
    got = list(read_pointclouds(tmp_path / "rec", INPUT_TOPIC))
    assert len(got) == 3
    for i, (item, scan) in enumerate(zip(got, scans, strict=True)):
        stamp = item.msg.header.stamp.sec * 10**9 + item.msg.header.stamp.nanosec
        assert stamp == item.timestamp == START_NS + i * 100_000_000  # 10 Hz
        assert item.msg.header.frame_id == "lidar"
        assert [f.name for f in item.cloud.fields] == ["x", "y", "z", "intensity", "ring"]
        np.testing.assert_array_equal(item.cloud.xyz, scan.xyz)
        np.testing.assert_array_equal(item.cloud.points["ring"], scan.ring)
        assert set(np.unique(scan.ring)) <= set(range(8))
        assert (scan.object_id > 0).sum() > 100  # the scene's objects are hit


def _check_outputs(out, summary_mode):
    summary = json.loads((out / "latency.json").read_text())
    assert summary["mode"] == summary_mode
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    dense = list(read_pointclouds(out / "densified_recording", OUTPUT_TOPIC))
    assert len(dense) == summary["scans_densified"] >= 1
    inputs = {(c.msg.header.stamp.sec, c.msg.header.stamp.nanosec): c
              for c in read_pointclouds(out / "sample_recording", INPUT_TOPIC)}
    for d in dense:
        flag = d.cloud.points["generated"]
        n = int((flag == 0).sum())
        assert (flag[:n] == 0).all() and flag[n:].all() and len(flag) > n
        assert d.msg.header.frame_id == "lidar"
        # the default model adds points between the 16 beams (1.8 deg apart), not on them
        gen = d.cloud.xyz[n:]
        elev = np.degrees(np.arctan2(gen[:, 2], np.hypot(gen[:, 0], gen[:, 1])))
        beams = np.degrees(np.arctan2(d.cloud.xyz[:n, 2], np.hypot(*d.cloud.xyz[:n, :2].T)))
        beams = np.unique(np.round(beams, 1))
        off = np.abs(elev[:, None] - beams[None]).min(axis=1)
        assert np.median(off) > 0.3
        if summary_mode == "no-ros":  # stamps kept: the originals come back byte for byte
            src = inputs[(d.msg.header.stamp.sec, d.msg.header.stamp.nanosec)]
            np.testing.assert_array_equal(d.cloud.xyz[:n], src.cloud.xyz)
    close = summary["close_up"]
    assert close["object_points_after"] > close["object_points_before"] > 0
    assert summary["node_total_ms"]["n"] == summary["scans_densified"]
    return summary


def test_demo_no_ros(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-ros", "--frames", "3"]) == 0
    printed = capsys.readouterr().out
    assert "--no-ros: densifying each scan in this process" in printed
    summary = _check_outputs(tmp_path, "no-ros")
    assert summary["scans_densified"] == summary["scans_played"] == 3
    assert summary["end_to_end_ms"] is None


@pytest.mark.skipif(not _rclpy_available(), reason="rclpy not importable (pip install '.[ros]')")
def test_demo_live_through_the_node(tmp_path, capsys):
    """Node process + play + record; < 60 s on 2 cores."""
    assert main(["demo", "--out", str(tmp_path), "--frames", "6"]) == 0
    printed = capsys.readouterr().out
    assert "started the node" in printed and "end-to-end latency" in printed
    summary = _check_outputs(tmp_path, "ros")
    assert summary["scans_played"] == 6
    assert summary["end_to_end_ms"]["n"] == summary["scans_densified"]
    assert summary["end_to_end_ms"]["median"] > 0
    assert summary["node_exit_status"] == 0  # SIGINT: clean shutdown


def test_demo_user_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "0"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--model", "nope", "--no-ros",
                 "--frames", "1"]) == 2
    assert "model 'nope' not found" in capsys.readouterr().err
