"""The demo's summary in words: real-time factor, bottleneck, and the args that would fix it."""

from __future__ import annotations

from edgeva.control.demo.report import diagnose

MODS = {
    "decoder-1": {"type": "decoder", "proc_ms_p50": 2.0},
    "detector-1": {"type": "detector", "proc_ms_p50": 128.0},
    "reid-1": {"type": "reid", "proc_ms_p50": 9.0},
    "annotate-1": {"type": "annotate", "proc_ms_p50": None},
}
APPS = {"tracking": {"dropped": 0}, "reid": {"dropped": 0}}


def test_slow_file_source_names_the_bottleneck_and_the_fix() -> None:
    v = diagnose(447, 60, 10.0, False, MODS, APPS, {"detector-1": {"interval": 2, "threads": 64}})
    assert v.startswith("could not keep up: back-pressure slowed the file source")
    assert "real-time factor 0.74 (447 of 600" in v
    assert "bottleneck: detector-1 (detector) at 128.0 ms/frame" in v
    assert "139.0 ms of CPU per frame against a 100 ms frame period" in v
    assert "interval: 3 (" in v and "threads" not in v  # from the running args: 2 -> 3, threads maxed


def test_kept_up_and_live_overload() -> None:
    fast = {k: dict(m, proc_ms_p50=m["proc_ms_p50"] and 5.0) for k, m in MODS.items()}
    v = diagnose(600, 60, 10.0, False, fast, APPS)
    assert v.startswith("kept up with the source; real-time factor 1.00") and "to fix" not in v
    v = diagnose(1800, 60, 30.0, True, MODS, {"tracking": {"dropped": 1200}})
    assert v.startswith("overloaded live source: the slowest stage took the newest frames, dropped {'tracking': 1200}")
    assert "to fix: detector interval: 2 (" in v
