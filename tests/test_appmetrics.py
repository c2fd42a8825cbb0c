"""AppStats: the per-app latency figures the agent publishes each metrics tick."""

from __future__ import annotations

from edgeva.agent.appmetrics import AppStats


def test_an_interval_without_a_module_report_holds_the_last_percentiles_then_goes_null():
    # modules report their samples on a clock of their own: a tick may fall between two reports
    s = AppStats()
    for i in range(10):
        s.add(i, 40.0 + i, now=100.0)
    first = s.snapshot(now=100.5, hold_s=5.0).latency_ms
    assert first.p50 == 44.5
    held = s.snapshot(now=102.0, hold_s=5.0).latency_ms
    assert held == first, "a tick between two reports must not publish null latency"
    assert s.snapshot(now=106.0, hold_s=5.0).latency_ms.p50 is None, "an app passing no frames shows none"
    s.add(10, 90.0, now=107.0)
    assert s.snapshot(now=107.5, hold_s=5.0).latency_ms.p50 == 90.0, "a new interval replaces the held one"


def test_peek_does_not_end_the_interval():
    s = AppStats()
    s.add(0, 10.0, now=1.0)
    s.add(1, 30.0, now=1.0)
    assert s.snapshot(now=1.1, peek=True).latency_ms.p50 == 20.0
    s.add(2, 20.0, now=1.2)
    assert s.snapshot(now=1.3).latency_ms.p50 == 20.0
    assert len(s.interval) == 0 and s.frames == 3
