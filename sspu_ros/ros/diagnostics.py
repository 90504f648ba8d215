"""ROS-free statistics and diagnostic status of ``upsample_node``.

The node feeds one :class:`ScanStatistics` with every scan it receives (header stamp),
drops (a newer scan replaced it before processing started), skips, publishes (latencies),
rejects or fails on, and turns :meth:`ScanStatistics.report` into a
``diagnostic_msgs/DiagnosticStatus`` once a second. Everything here is plain Python and
numpy so that it is tested without ROS. It is not thread-safe: the node calls it under
one lock.

Every received scan is accounted for
------------------------------------
``received == published + skipped + dropped + rejected + failed + pending``, where
*pending* (0, 1 or 2) are the scans received but not finished yet: the one being
processed and the newest one waiting for it (:attr:`ScanStatistics.pending`).

Scans the node never saw
------------------------
A LiDAR publishes at a fixed rate, so consecutive header stamps are one period apart. A
gap of ``dt`` seconds between two received stamps means ``round(dt * rate) - 1`` scans
were lost on the way (DDS, a full queue): they are counted as *missing*, apart from the
*dropped* ones the node received and replaced by a newer scan (those leave no gap). Stamps
going backwards by more than ``reset_after_s`` (a bag played in a loop, a restarted
simulation) or forwards by more than ``reset_after_s`` (a sensor restarted after a long
pause) restart the count instead of counting a huge gap; smaller backward steps and
repeated stamps are counted as *out of order*.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ERROR", "OK", "STALE", "WARN", "DiagnosticReport", "LatencyWindow", "RateMeter",
           "ScanStatistics", "StampGapCounter"]

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class StampGapCounter:
    """Counts scans missing from a stream of header stamps published at a fixed rate.

    Args:
        expected_rate_hz: the sensor's scan rate (> 0).
        reset_after_s: a jump of the stamps larger than this (either way) restarts the
            count instead of being counted as missing scans.
    """

    def __init__(self, expected_rate_hz: float, reset_after_s: float = 60.0) -> None:
        self.expected_rate_hz = _positive(expected_rate_hz, "expected_rate_hz")
        self.reset_after_s = _positive(reset_after_s, "reset_after_s")
        self.last_stamp: float | None = None
        self.missing = 0        # scans that never arrived (gaps in the stamps)
        self.out_of_order = 0   # stamps not after the previous one (repeated or reordered)
        self.resets = 0         # stamp jumps beyond reset_after_s

    def update(self, stamp_s: float) -> int:
        """Record the stamp of a received scan (seconds); returns the scans missing just
        before it (0 for the first scan, an out-of-order one or a reset)."""
        stamp_s = float(stamp_s)
        if not math.isfinite(stamp_s):
            raise ValueError(f"header stamp must be a finite number of seconds, got {stamp_s}")
        last, self.last_stamp = self.last_stamp, stamp_s
        if last is None:
            return 0
        dt = stamp_s - last
        if abs(dt) > self.reset_after_s:
            self.resets += 1
            return 0
        if dt <= 0.0:
            self.out_of_order += 1
            self.last_stamp = last  # keep measuring gaps from the newest stamp seen
            return 0
        missing = max(0, math.floor(dt * self.expected_rate_hz + 0.5) - 1)
        self.missing += missing
        return missing


class RateMeter:
    """Arrival rate over a sliding time window (a monotonic clock, seconds).

    ``rate_hz(now)`` is ``None`` until the first arrival; while the window still reaches
    back before the first arrival (start-up) it is the number of intervals since the first
    arrival over the time since it, afterwards the arrivals inside the window over its
    length, so it falls to 0 when the input stops.
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = _positive(window_s, "window_s")
        self.times: deque[float] = deque()
        self.first: float | None = None

    def add(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()

    def rate_hz(self, now: float) -> float | None:
        if self.first is None:
            return None
        self._trim(now)
        if now - self.window_s < self.first:  # start-up: the window is not full yet
            elapsed = now - self.first
            return (len(self.times) - 1) / elapsed if elapsed > 0 else None
        return len(self.times) / self.window_s

    def last_age_s(self, now: float) -> float | None:
        """Seconds since the latest arrival in the window (None: none in the window)."""
        return now - self.times[-1] if self.times else None


class LatencyWindow:
    """The last ``size`` values (milliseconds) with their median and 95th percentile."""

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self.values.append(float(value_ms))

    def median_p95(self) -> tuple[float, float] | None:
        """(median, p95) of the window (linear interpolation), None when empty."""
        if not self.values:
            return None
        med, p95 = np.percentile(np.fromiter(self.values, float), [50.0, 95.0])
        return float(med), float(p95)


@dataclass
class DiagnosticReport:
    """One diagnostic status: level (OK/WARN/ERROR), a one-line message, key/value pairs."""

    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]

    def value(self, key: str) -> str:
        """The value of ``key`` (KeyError naming the keys present when missing)."""
        for k, v in self.values:
            if k == key:
                return v
        have = ", ".join(k for k, _ in self.values)
        raise KeyError(f"no diagnostic value '{key}' (have: {have})")


class ScanStatistics:
    """Everything ``/diagnostics`` reports about the node's scans.

    Args:
        expected_rate_hz: the input's nominal rate (gaps, rate warning).
        window_s: length of the input-rate window, seconds.
        latency_window: number of recent scans the latency percentiles cover.
        low_rate_fraction: WARN when the input rate is below this fraction of the
            expected one.
        clock: monotonic clock in seconds (arrival times, rate).
    """

    COUNTERS = ("received", "published", "skipped", "dropped", "rejected", "failed",
                "pending", "missing", "out_of_order", "incompatible")
    # the counters a received scan ends in (plus ``pending`` while it is not finished)
    OUTCOMES = ("published", "skipped", "dropped", "rejected", "failed")

    def __init__(self, expected_rate_hz: float, *, window_s: float = 5.0,
                 latency_window: int = 100, low_rate_fraction: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.gaps = StampGapCounter(expected_rate_hz)
        self.rate = RateMeter(window_s)
        self.output_rate = RateMeter(window_s)            # published scans
        self.latency = LatencyWindow(latency_window)      # now - header stamp
        self.processing = LatencyWindow(latency_window)   # decode + densify + publish
        self.low_rate_fraction = low_rate_fraction
        self.received = self.published = self.skipped = 0
        self.dropped = self.rejected = self.failed = 0
        self.drop_reasons: dict[str, int] = {}  # reason -> dropped scans
        self.incompatible = 0   # publishers whose QoS does not match the input's
        self.last_problem = ""
        self._reported = dict.fromkeys(self.COUNTERS, 0)

    # -------------------------------------------------------------- events
    @property
    def expected_rate_hz(self) -> float:
        return self.gaps.expected_rate_hz

    @expected_rate_hz.setter
    def expected_rate_hz(self, value: float) -> None:
        self.gaps.expected_rate_hz = _positive(value, "expected_rate_hz")

    @property
    def missing(self) -> int:
        """Scans never received (gaps in the header stamps)."""
        return self.gaps.missing

    @property
    def pending(self) -> int:
        """Scans received but not finished yet (waiting or being processed)."""
        return self.received - sum(int(getattr(self, k)) for k in self.OUTCOMES)

    @property
    def out_of_order(self) -> int:
        return self.gaps.out_of_order

    def on_received(self, stamp_s: float) -> int:
        """A scan arrived; returns how many scans are missing just before it."""
        self.received += 1
        self.rate.add(self.clock())
        return self.gaps.update(stamp_s)

    def on_dropped(self, reason: str) -> None:
        """A received scan was discarded unprocessed (e.g. a newer one replaced it while
        the node was busy)."""
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def on_skipped(self) -> None:
        """A scan was not processed because nobody subscribes to the output."""
        self.skipped += 1

    def on_published(self, latency_ms: float, processing_ms: float) -> None:
        self.published += 1
        self.output_rate.add(self.clock())
        self.latency.add(latency_ms)
        self.processing.add(processing_ms)

    def on_rejected(self, reason: str) -> None:
        self.rejected += 1
        self.last_problem = f"rejected: {reason}"

    def on_failed(self, reason: str) -> None:
        self.failed += 1
        self.last_problem = f"failed: {reason}"

    def on_incompatible_publisher(self, problem: str) -> None:
        """A publisher on the input topic cannot be matched (QoS); none of its scans arrive."""
        self.incompatible += 1
        self.last_problem = problem

    # -------------------------------------------------------------- report
    def counts(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.COUNTERS}

    def report(self, backend: str, extra: list[tuple[str, str]] | None = None) -> DiagnosticReport:
        """The status now; "rising" counters are those that grew since the previous call."""
        now = self.clock()
        counts = self.counts()
        new = {k: counts[k] - self._reported[k] for k in counts}
        self._reported = counts
        rate = self.rate.rate_hz(now)
        out_rate = self.output_rate.rate_hz(now)
        level, problems = OK, []
        if new["failed"]:
            level = ERROR
            problems.append(f"processing failed on {new['failed']} scan(s)")
        if rate is None:
            waited = now - self.started
            if waited > self.rate.window_s:
                level = max(level, WARN)
                problems.append(f"no scan received in {waited:.0f} s")
        elif rate == 0.0:
            level = max(level, WARN)
            problems.append(f"no scan in the last {self.rate.window_s:g} s")
        elif rate < self.low_rate_fraction * self.expected_rate_hz:
            level = max(level, WARN)
            period_ms = 1e3 / self.expected_rate_hz
            proc = self.processing.median_p95()
            if proc is not None and proc[0] > period_ms:  # the node itself is the bottleneck
                problems.append(f"processing ({proc[0]:.0f} ms median) is slower than the "
                                f"input period ({period_ms:.0f} ms): {out_rate or 0.0:.1f} Hz "
                                "processed, older scans are dropped")
            else:
                problems.append(f"input rate {rate:.1f} Hz far below the expected "
                                f"{self.expected_rate_hz:g} Hz")
        if new["rejected"]:
            level = max(level, WARN)
            problems.append(f"{new['rejected']} malformed scan(s) rejected")
        if new["incompatible"]:
            level = max(level, WARN)
            problems.append(f"{new['incompatible']} publisher(s) with incompatible QoS on the "
                            "input")
        if new["dropped"]:
            level = max(level, WARN)
            proc = self.processing.median_p95()
            slow = f" (processing {proc[0]:.0f} ms median)" if proc is not None else ""
            problems.append(f"{new['dropped']} scan(s) dropped: a newer one arrived while the "
                            f"node was busy{slow}; the newest is processed")
        if new["missing"] > 0:
            level = max(level, WARN)
            problems.append(f"{new['missing']} scan(s) never received (gaps in the stamps)")
        if problems:
            message = "; ".join(problems)
        elif rate is None:
            message = "waiting for the first scan"
        else:
            message = "densifying"
        values = [("backend", backend),
                  ("input rate (Hz)", "n/a" if rate is None else f"{rate:.2f}"),
                  ("output rate (Hz)", "n/a" if out_rate is None else f"{out_rate:.2f}"),
                  ("expected rate (Hz)", f"{self.expected_rate_hz:g}")]
        for label, window in (("pipeline latency", self.latency),
                              ("processing time", self.processing)):
            stats = window.median_p95()
            values += [(f"{label} median (ms)", "n/a" if stats is None else f"{stats[0]:.1f}"),
                       (f"{label} p95 (ms)", "n/a" if stats is None else f"{stats[1]:.1f}")]
        labels = {"received": "scans received", "published": "scans published",
                  "skipped": "scans skipped (no subscriber)",
                  "dropped": "scans dropped (newer scan arrived while busy)",
                  "pending": "scans pending (waiting or in processing)",
                  "missing": "scans missing (gaps in stamps)",
                  "rejected": "scans rejected (malformed)",
                  "failed": "scans failed (processing error)",
                  "out_of_order": "scans out of order (stamps)",
                  "incompatible": "incompatible publishers (QoS)"}
        values += [(labels[k], str(counts[k])) for k in self.COUNTERS]
        values.append(("drop reasons", "; ".join(f"{r}: {n}" for r, n in
                                                 sorted(self.drop_reasons.items())) or "none"))
        values.append(("last problem", self.last_problem or "none"))
        values += list(extra or [])
        return DiagnosticReport(level, message, values)


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value
