"""The node under load (real DDS, in-process, :class:`ros_graph.LiveNode`): while a slow
scan is processed, ``/diagnostics``, the parameter services and the input queue stay live;
the newest scan is processed next and the older ones are counted as dropped; every
received scan is accounted for."""

from __future__ import annotations

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs not installed")

from rclpy.parameter import Parameter  # noqa: E402
from ros_graph import LiveNode, scan_message, seq_of, xyzi_scan  # noqa: E402

import sspu_ros.ros.node as node_module  # noqa: E402

SLOW_S = 3.0  # the first scan's processing time (a monkeypatched slow upsampler)
OUTCOMES = ("published", "skipped", "dropped", "rejected", "failed", "pending")


@pytest.fixture
def slow_densify(monkeypatch):
    """densify_points sleeping ``first_s`` (SLOW_S) on the first scan and ``each_s`` (0)
    on the others; ``windows`` holds each call's (start, end) (monotonic)."""
    real = node_module.densify_points
    windows: list[list[float]] = []
    started = threading.Event()

    def slow(*args, **kwargs):
        window = [time.monotonic(), float("inf")]
        windows.append(window)
        started.set()
        time.sleep(slow.first_s if len(windows) == 1 else slow.each_s)
        try:
            return real(*args, **kwargs)
        finally:
            window[1] = time.monotonic()

    monkeypatch.setattr(node_module, "densify_points", slow)
    slow.windows, slow.started, slow.first_s, slow.each_s = windows, started, SLOW_S, 0.0
    return slow


def test_diagnostics_parameters_and_input_stay_live_during_a_slow_scan(slow_densify):
    with LiveNode() as live:
        live.wait_connected()
        live.pub.publish(scan_message(xyzi_scan(seed=0), seq=0))
        assert slow_densify.started.wait(10.0), "the first scan was never processed"
        # 4 more scans while the first is processed: 1, 2, 3 are replaced, 4 is the newest
        for seq in range(1, 5):
            live.pub.publish(scan_message(xyzi_scan(seed=seq), seq=seq))
            time.sleep(0.05)
        # On a loaded machine DDS may replace a scan in the depth-1 input queue before the
        # input thread takes it: then it is counted as missing (a gap in the stamps), never
        # silently. The last one sent cannot be replaced.
        live.wait_for(lambda: (c := live.counts())["received"] + c["missing"] == 5, 3.0,
                      "the input callback took the scans while processing")
        c_busy = live.counts()
        t_counted = time.monotonic()
        assert c_busy["dropped"] + c_busy["missing"] == 3 and c_busy["pending"] == 2, c_busy

        # the parameter services answer within a fraction of the slow scan
        t0 = time.monotonic()
        got = live.call(live.params.get_parameters(["crop.max_range", "model"]), 1.0)
        get_s = time.monotonic() - t0
        assert got.values[0].double_value == live.node.params["crop.max_range"]
        t0 = time.monotonic()
        res = live.call(live.params.set_parameters(
            [Parameter("expected_rate_hz", value=20.0)]), 1.0)
        set_s = time.monotonic() - t0
        assert res.results[0].successful and live.node.stats.expected_rate_hz == 20.0
        bad = live.call(live.params.set_parameters([Parameter("crop.max_range", value=-1.0)]))
        assert not bad.results[0].successful and "crop.max_range" in bad.results[0].reason
        # /diagnostics keeps its 1 Hz while the scan is processed, with live counts
        live.wait_for(lambda: live.last_diagnostics(after=t_counted), 1.5,
                      "a /diagnostics message during the slow scan")
        t_diag, diag = next((t, v) for t, v in live.diagnostics if t > t_counted)
        assert diag["scans received"] == str(c_busy["received"])
        assert diag["scans dropped (newer scan arrived while busy)"] == str(c_busy["dropped"])
        assert diag["scans pending (waiting or in processing)"] == "2"
        assert f"{c_busy['dropped']} scan(s) dropped" in diag["message"]
        assert get_s < 0.5 and set_s < 0.5, (get_s, set_s)
        t_answered = time.monotonic()

        # then the newest scan (4) is processed, nothing else
        live.wait_for(lambda: len(live.outputs) == 2, 10.0, "the newest scan's output")
        busy_until = slow_densify.windows[0][1]
        assert t_diag < busy_until, "the diagnostics came only after the slow scan"
        assert t_answered < busy_until, "the parameter calls did not overlap the slow scan"
        assert slow_densify.windows[1][0] >= busy_until  # scan 4 after scan 0, not parallel
        time.sleep(0.3)
        assert [seq_of(m.header) for _, m in live.outputs] == [0, 4]
        c = live.counts()
        assert c == c | {"published": 2, "dropped": c_busy["dropped"], "pending": 0,
                         "failed": 0, "rejected": 0}, c
        assert c["received"] == sum(c[k] for k in OUTCOMES) == 5 - c["missing"]
        assert live.node.stats.drop_reasons == {node_module.DROP_SUPERSEDED: c["dropped"]}
        live.wait_for(lambda: (live.last_diagnostics() or {}).get("scans published") == "2",
                      2.5, "/diagnostics after the slow scan")


def test_counters_add_up_over_a_burst_faster_than_processing(slow_densify):
    """A 20 Hz burst of 30 scans into a node slower than that: received == published +
    dropped + ... at every moment, and every scan sent is received or counted missing."""
    with LiveNode() as live:
        live.wait_connected()
        slow_densify.first_s = slow_densify.each_s = 0.12  # > the 50 ms input period
        n = 30
        for seq in range(n):
            if seq == n - 1:
                time.sleep(0.3)  # the last one, after a pause, reveals any gap before it
            live.pub.publish(scan_message(xyzi_scan(n=2000, seed=seq), seq=seq))
            time.sleep(0.05)
            c = live.counts()
            assert c["received"] == sum(c[k] for k in OUTCOMES), c
            assert c["pending"] in (0, 1, 2), c
        live.wait_for(lambda: (c := live.counts())["received"] + c["missing"] == n
                      and c["pending"] == 0, 15.0, f"all {n} scans received and finished")
        c = live.counts()
        assert c["published"] + c["dropped"] == c["received"], c
        assert c["failed"] == c["rejected"] == 0, c
        assert c["dropped"] >= n // 3, c  # processing at < 8 Hz of a 20 Hz input
        assert c["missing"] <= n // 10, c  # DDS replaced a few in the depth-1 queue at most
        # the newest scan comes out last (the output is reliable but depth 1, as documented:
        # an output not yet acknowledged when the next is published may be replaced)
        live.wait_for(lambda: live.outputs and seq_of(live.outputs[-1][1].header) == n - 1,
                      5.0, "the newest scan's output")
        seqs = [seq_of(m.header) for _, m in live.outputs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) <= c["published"]
        live.wait_for(lambda: (live.last_diagnostics() or {}).get("scans published")
                      == str(c["published"]), 2.5, "/diagnostics with the final counts")
        d = live.last_diagnostics()
        total = sum(int(d[k]) for k in ("scans published", "scans skipped (no subscriber)",
                                        "scans dropped (newer scan arrived while busy)",
                                        "scans rejected (malformed)",
                                        "scans failed (processing error)",
                                        "scans pending (waiting or in processing)"))
        assert int(d["scans received"]) == total == n - int(d["scans missing (gaps in stamps)"])
