"""The node's ROS-free statistics: gaps in stamps, input rate, latency percentiles, and the
diagnostic level/message they produce."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sspu_ros.ros.diagnostics import (
    ERROR,
    OK,
    WARN,
    LatencyWindow,
    RateMeter,
    ScanStatistics,
    StampGapCounter,
)


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


# ------------------------------------------------------------------ gaps


def test_gap_counter_counts_missing_scans_exactly():
    g = StampGapCounter(10.0)
    stamps = [100.0, 100.1, 100.2, 100.5, 100.6, 101.6]  # 2 missing, then 9 missing
    assert [g.update(s) for s in stamps] == [0, 0, 0, 2, 0, 9]
    assert g.missing == 11 and g.out_of_order == 0


def test_gap_counter_tolerates_jitter_below_half_a_period():
    g = StampGapCounter(10.0)
    assert [g.update(s) for s in [0.0, 0.149, 0.2, 0.351]] == [0, 0, 0, 1]


def test_gap_counter_out_of_order_and_repeated_stamps():
    g = StampGapCounter(10.0)
    for s in [5.0, 5.1, 5.1, 5.05, 5.2]:
        g.update(s)
    # the repeat and the step back are out of order; 5.2 follows 5.1 (the newest seen)
    assert g.out_of_order == 2 and g.missing == 0 and g.last_stamp == 5.2


def test_gap_counter_resets_on_large_jumps():
    g = StampGapCounter(10.0, reset_after_s=60.0)
    for s in [1000.0, 1000.1, 10.0, 10.1, 10.3, 5000.0, 5000.1]:
        g.update(s)
    assert g.resets == 2 and g.missing == 1 and g.out_of_order == 0


def test_gap_counter_rejects_bad_input():
    with pytest.raises(ValueError, match="expected_rate_hz"):
        StampGapCounter(0.0)
    with pytest.raises(ValueError, match="finite"):
        StampGapCounter(10.0).update(float("nan"))


@settings(max_examples=60, deadline=None)
@given(rate=st.sampled_from([5.0, 10.0, 20.0]),
       keep=st.lists(st.booleans(), min_size=2, max_size=200))
def test_gap_counter_recovers_the_dropped_scans_of_a_regular_stream(rate, keep):
    keep[0] = True  # nothing can be known before the first received scan
    last = max(i for i, k in enumerate(keep) if k)
    g = StampGapCounter(rate)
    t0 = 1.7e9  # realistic epoch stamps: float precision must not matter
    for i, k in enumerate(keep):
        if k:
            g.update(t0 + i / rate)
    assert g.missing == sum(1 for k in keep[: last + 1] if not k)


# ------------------------------------------------------------------ rate and latency


def test_rate_meter_startup_steady_and_stopped():
    r = RateMeter(window_s=5.0)
    assert r.rate_hz(0.0) is None
    for i in range(11):  # 10 Hz for 1 s
        r.add(i * 0.1)
    assert r.rate_hz(1.0) == pytest.approx(10.0)
    for i in range(11, 80):  # full window at 10 Hz
        r.add(i * 0.1)
    assert r.rate_hz(7.9) == pytest.approx(10.0, rel=0.03)
    assert r.rate_hz(20.0) == 0.0 and r.last_age_s(20.0) is None


def test_latency_window_median_and_p95():
    w = LatencyWindow(size=100)
    assert w.median_p95() is None
    for v in range(1, 201):  # only the last 100 (101..200) count
        w.add(v)
    med, p95 = w.median_p95()
    assert med == pytest.approx(150.5) and p95 == pytest.approx(np.percentile(
        np.arange(101, 201), 95))


# ------------------------------------------------------------------ report


def _feed(stats, clock, n, rate=10.0, t_stamp=50.0, step=None):
    step = step or 1.0 / rate
    for i in range(n):
        clock.t += step
        stats.on_received(t_stamp + i / rate)
        stats.on_published(latency_ms=20.0 + i % 5, processing_ms=10.0)


def test_report_ok_when_healthy():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    rep = s.report("midpoint")
    assert rep.level == OK and rep.message == "waiting for the first scan"
    _feed(s, clock, 60)
    rep = s.report("onnxruntime")
    assert rep.level == OK, rep.message
    assert rep.value("backend") == "onnxruntime"
    assert float(rep.value("input rate (Hz)")) == pytest.approx(10.0, rel=0.05)
    assert rep.value("scans received") == "60" and rep.value("scans published") == "60"
    assert rep.value("pipeline latency median (ms)") == "22.0"
    assert rep.value("scans missing (gaps in stamps)") == "0"
    with pytest.raises(KeyError, match="no diagnostic value 'nope'"):
        rep.value("nope")


def test_report_warns_on_low_rate_and_no_input():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    clock.t += 6.0
    rep = s.report("midpoint")
    assert rep.level == WARN and "no scan received in 6 s" in rep.message
    for i in range(30):  # 2 Hz for 15 s, stamps consistent with 2 Hz at a 10 Hz sensor
        clock.t += 0.5
        s.on_received(i * 0.5)
    rep = s.report("midpoint")
    assert rep.level == WARN and "input rate 2.0 Hz far below the expected 10 Hz" in rep.message
    assert rep.value("scans missing (gaps in stamps)") == str(29 * 4)
    clock.t += 10.0
    rep = s.report("midpoint")
    assert rep.level == WARN and "no scan in the last 5 s" in rep.message


def test_report_warns_only_while_rejections_rise_and_errors_on_failures():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    _feed(s, clock, 60)
    s.report("midpoint")
    s.on_rejected("point_step 8 is smaller than the fields")
    rep = s.report("midpoint")
    assert rep.level == WARN and "1 malformed scan(s) rejected" in rep.message
    assert rep.value("last problem") == "rejected: point_step 8 is smaller than the fields"
    _feed(s, clock, 10, t_stamp=56.0)
    rep = s.report("midpoint")
    assert rep.level == OK and rep.value("scans rejected (malformed)") == "1"
    s.on_failed("RuntimeError('boom')")
    rep = s.report("midpoint")
    assert rep.level == ERROR and "processing failed on 1 scan(s)" in rep.message


def test_report_warns_on_missing_scans_and_counts_skips():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    _feed(s, clock, 60)
    s.report("midpoint")
    clock.t += 0.3
    s.on_received(56.2)  # previous stamp 55.9: 2 scans missing
    s.on_skipped()
    rep = s.report("midpoint")
    assert rep.level == WARN and "2 scan(s) never received" in rep.message
    assert rep.value("scans skipped (no subscriber)") == "1"
    assert not math.isnan(float(rep.value("processing time p95 (ms)")))


def test_report_warns_on_incompatible_publishers():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    _feed(s, clock, 60)
    s.report("midpoint")
    s.on_incompatible_publisher("a publisher offers QoS incompatible (RELIABILITY)")
    rep = s.report("midpoint")
    assert rep.level == WARN and "1 publisher(s) with incompatible QoS" in rep.message
    assert rep.value("incompatible publishers (QoS)") == "1"
    assert "RELIABILITY" in rep.value("last problem")


def test_report_blames_slow_processing_rather_than_the_input():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    for i in range(20):  # 2 Hz taken, 500 ms each
        clock.t += 0.5
        s.on_received(i * 0.5)
        s.on_published(latency_ms=600.0, processing_ms=480.0)
    rep = s.report("midpoint")
    assert rep.level == WARN
    assert "processing (480 ms median) is slower than the input period (100 ms)" in rep.message
    assert "input rate" not in rep.message


def test_dropped_scans_are_counted_with_reasons_and_every_scan_is_accounted_for():
    clock = FakeClock()
    s = ScanStatistics(10.0, clock=clock)
    _feed(s, clock, 20)
    s.report("midpoint")
    for i in range(5):  # 5 more arrive while one is processed: 3 replaced, 1 waiting
        clock.t += 0.1
        s.on_received(52.0 + i / 10)
    for _ in range(3):
        s.on_dropped("superseded by a newer scan")
    s.on_rejected("bad point_step")
    assert s.pending == 1
    rep = s.report("midpoint")
    assert rep.level == WARN and "3 scan(s) dropped" in rep.message
    assert "never received" not in rep.message  # the stamps have no gap
    assert rep.value("scans dropped (newer scan arrived while busy)") == "3"
    assert rep.value("scans pending (waiting or in processing)") == "1"
    assert rep.value("scans missing (gaps in stamps)") == "0"
    assert rep.value("drop reasons") == "superseded by a newer scan: 3"
    assert 5.0 < float(rep.value("output rate (Hz)")) < 10.0  # none published lately
    counts = s.counts()
    assert counts["received"] == sum(counts[k] for k in ScanStatistics.OUTCOMES) + s.pending
