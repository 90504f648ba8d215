"""Bad input over the wire: hypothesis-generated malformed PointCloud2 messages (wrong
offsets, datatypes, counts, point_step / row_step / width / height against the data
length, 10 M declared points over a few bytes, ...) and odd but valid ones (big-endian,
NaN/Inf, zero points, integer coordinates, padding) are sent over real DDS to the running
node (:class:`ros_graph.LiveNode`). The node stays up, rejects each malformed one (counted
on ``/diagnostics``, one throttled warning), processes each valid one, and publishes the
next real scan densified."""

from __future__ import annotations

import itertools
import math
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs not installed")

from cloud_strategies import (  # noqa: E402
    DECLARED_10M,
    WIRE_CORRUPTIONS,
    build_random_msg,
    corrupt_for_wire,
    layouts,
    malformed_wire_clouds,
)
from ros_graph import (  # noqa: E402
    LiveNode,
    message_from_namespace,
    scan_message,
    seq_of,
    xyzi_scan,
)

from sspu_ros.io.pointcloud2 import GENERATED_FIELD, decode  # noqa: E402
from sspu_ros.ros.node import WARN_THROTTLE_S  # noqa: E402

REJECT_WARNING = "rejected a malformed PointCloud2"
PER_KIND = 4  # hypothesis examples per kind of corruption
FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


def _send_and_settle(live: LiveNode, msg, timeout: float = 10.0) -> tuple[dict, dict]:
    """Publish one message and wait until the node has received and finished it; returns
    the node's counters (before, after)."""
    before = live.counts()
    live.pub.publish(msg)
    live.wait_for(lambda: (c := live.counts())["received"] == before["received"] + 1
                  and c["pending"] == 0, timeout, "the node to receive and finish the message")
    return before, live.counts()


def test_malformed_and_odd_clouds_over_dds(capfd):
    seqs = itertools.count()
    sent_malformed: list[str] = []
    with LiveNode() as live:
        live.wait_connected()
        t_start = time.monotonic()


        @settings(max_examples=15, **FUZZ)
        @given(layouts())
        @example(([_f("x", 0), _f("y", 4), _f("z", 8), _f("intensity", 12)], 16, 1, 0, 0,
                  False, 0))  # zero points
        @example(([_f("x", 0), _f("y", 4), _f("z", 8)], 12, 3, 0, 4, True, 1))  # 3 x 0
        @example(([_f("intensity", 0), _f("z", 4), _f("y", 8), _f("x", 12)], 18, 2, 20,
                  20 * 18 + 6, True, 2))  # big-endian, padded rows, odd point_step
        def odd_but_valid_is_densified(layout):
            seq = next(seqs)
            n_out = len(live.outputs)
            before, after = _send_and_settle(live, message_from_namespace(
                build_random_msg(layout), seq))
            changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            assert changed.get("published") == 1 and "failed" not in changed, (
                changed, live.node.stats.last_problem)
            live.wait_for(lambda: len(live.outputs) > n_out, 5.0, "the output")
            out = live.outputs[-1][1]
            assert seq_of(out.header) == seq
            assert GENERATED_FIELD in [f.name for f in out.fields]

        for kind in WIRE_CORRUPTIONS:  # every kind, a few random layouts each
            @settings(max_examples=PER_KIND, **FUZZ)
            @given(malformed_wire_clouds(corruptions=(kind,)))
            def malformed_is_rejected(case):
                corruption, ns = case
                before, after = _send_and_settle(live, message_from_namespace(ns, next(seqs)))
                sent_malformed.append(corruption)
                changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
                assert changed == {"received": 1, "rejected": 1}, (
                    corruption, changed, live.node.stats.last_problem)

            malformed_is_rejected()
        odd_but_valid_is_densified()
        n_bad = len(sent_malformed)
        for bad_value in (np.nan, np.inf, -np.inf):  # every coordinate non-finite: no points
            pts = xyzi_scan(n=50, seed=3)
            pts["z"] = bad_value
            before, after = _send_and_settle(live, scan_message(pts, seq=next(seqs)))
            assert after["published"] == before["published"] + 1, live.node.stats.last_problem

        # the next real scan comes back densified
        pts = xyzi_scan(n=400, seed=7)
        seq = next(seqs)
        n_out = len(live.outputs)
        _send_and_settle(live, scan_message(pts, seq=seq))
        live.wait_for(lambda: len(live.outputs) > n_out, 5.0, "the valid scan's output")
        out = live.outputs[-1][1]
        assert seq_of(out.header) == seq
        d = decode(out)
        assert d.xyz.shape[0] > len(pts) and d.points[GENERATED_FIELD][len(pts):].all()
        np.testing.assert_array_equal(d.xyz[: len(pts), 0], pts["x"])

        # alive, and /diagnostics counts every malformed one as rejected, nothing failed
        assert all(t.is_alive() for t in live._threads)
        n_sent = next(seqs)
        live.wait_for(lambda: (live.last_diagnostics() or {}).get("scans received") == str(
            n_sent) and live.last_diagnostics()["scans pending (waiting or in processing)"]
            == "0", 2.5, f"all {n_sent} messages on /diagnostics")
        diag = live.last_diagnostics()
        assert diag["scans rejected (malformed)"] == str(n_bad)
        assert diag["scans published"] == str(n_sent - n_bad)
        assert diag["scans failed (processing error)"] == "0", diag["last problem"]
        assert diag["scans missing (gaps in stamps)"] == "0"
        elapsed = time.monotonic() - t_start

    # one throttled warning, not one per message
    err = capfd.readouterr().err
    warnings = err.count(REJECT_WARNING)
    assert 1 <= warnings <= 1 + math.ceil(elapsed / WARN_THROTTLE_S), (warnings, n_bad, elapsed)
    kinds = set(sent_malformed)
    assert kinds == set(WIRE_CORRUPTIONS) and warnings < n_bad
    print(f"\nfuzz over DDS: {n_bad} malformed ({len(kinds)} kinds) rejected with {warnings} "
          f"warning line(s) in {elapsed:.1f} s; valid scan densified after them")


def test_declared_10m_points_allocate_nothing_of_that_size():
    """A header declaring 10 M points over 64 bytes goes through DDS and the node without
    anything near 10 M points (>= 120 MB) being allocated: it is rejected on the length."""
    ns = build_random_msg(([_f("x", 0), _f("y", 4), _f("z", 8), _f("intensity", 12)], 16, 1,
                           4, 64, False, 0))
    bad = corrupt_for_wire(ns, "declared_10M_points", 1, lambda strategy: 0)
    assert bad.width * bad.height == DECLARED_10M and len(bytes(bad.data)) == 64
    with LiveNode() as live:
        live.wait_connected()
        msg = message_from_namespace(bad, 1)
        tracemalloc.start()
        try:
            before, after = _send_and_settle(live, msg)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert after["rejected"] == before["rejected"] + 1
        assert "data has 64 bytes" in live.node.stats.last_problem
        assert peak < 16e6, f"{peak / 1e6:.0f} MB allocated while handling the message"
        print(f"\n10 M declared points: rejected, peak traced allocation {peak / 1e6:.2f} MB")


def _f(name, offset):
    from cloud_strategies import pf

    from sspu_ros.io.pointcloud2 import FLOAT32

    return pf(name, offset, FLOAT32)
