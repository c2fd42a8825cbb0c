"""``edgeva bench chaos``: the schedule and the arithmetic on their own, then a short real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeva.bench.chaos.plan import (
    KINDS,
    down_gap_s,
    frames_lost,
    order_faults,
    rate_series,
    reconnect_wait_s,
    recovery_s,
    schedule,
)
from tests.agent_harness import ROOT


def test_schedule_is_the_seeds_and_keeps_its_rules():
    plan = schedule(7, 600)
    assert plan == schedule(7, 600) and plan != schedule(8, 600)
    assert {f.kind for f in plan} == set(KINDS)  # 10 minutes: every kind comes up
    for a, b in zip(plan, plan[1:], strict=False):
        assert 5.0 <= b.t - (a.t + a.duration) <= 20.0 + 0.1  # one at a time, 5-20 s apart
    for f in plan:
        if f.kind in ("broker_down", "link_cut", "camera_down"):
            assert 5.0 <= f.duration <= 30.0
        if f.kind == "module_stop":
            assert f.duration > 10.0  # past the hang timeout
    assert plan[-1].t + plan[-1].duration <= 600 - 20.0  # the tail is left for the last recovery
    assert {f.kind for f in schedule(3, 300, ["camera_down"])} == {"camera_down"}
    with pytest.raises(ValueError, match="reboot"):
        schedule(1, 60, ["reboot"])


def test_recovery_from_event_times():
    steady = [i * 0.1 for i in range(200)]  # 10 events/s for 20 s
    assert recovery_s(steady, 5.0, 15.0, 20.0) == 0.0  # never silenced
    hole = [t for t in steady if not 5.0 < t < 9.0]  # silent from 5.0 to 9.0
    assert recovery_s(hole, 5.2, 15.0, 20.0) == 3.8  # back at 9.0, measured from the fault
    assert recovery_s(hole, 4.0, 15.0, 20.0) == 5.0
    # the silence that the next fault (at 5.0) began is not this fault's
    assert recovery_s(hole, 1.0, 5.05, 20.0) == 0.0
    # still down at the end of the run
    assert recovery_s([t for t in steady if t < 12.0], 11.0, 20.0, 20.0) is None
    # a short stall (below the gap that counts as down) is not a recovery
    assert recovery_s([t for t in steady if not 6.0 < t < 7.0], 5.5, 15.0, 20.0) == 0.0
    # two silences after one fault: back for good at the end of the second
    two = [t for t in steady if not (5.0 < t < 8.0 or 10.0 < t < 13.0)]
    assert recovery_s(two, 5.0, 19.0, 20.0) == 8.0
    # an app already down when the fault came: back at the end of that silence
    assert recovery_s(hole, 7.0, 15.0, 20.0) == 2.0
    assert recovery_s([], 1.0, 5.0, 10.0) is None
    # a loaded machine: events in bursts 1.5 s apart are not an outage, but 6 s of nothing is
    bursts = [i * 1.5 for i in range(14)] + [26.0, 27.5]
    gap = down_gap_s(bursts, 0.0, 15.0)
    assert gap == 4.5
    assert recovery_s(bursts, 3.0, 15.0, 28.0, gap) == 0.0
    assert recovery_s(bursts, 19.0, 25.0, 28.0, gap) == 7.0
    assert down_gap_s(steady, 0.0, 20.0) == 2.0  # never below the floor
    assert rate_series(steady, 0.0, 3.05) == [10, 10, 10]


def test_frames_lost_and_order_across_a_source_restart():
    # (arrival, frame_id, source ts): 10 fps, ids 0-9, then 15-19 (5 lost), then the source
    # restarts from 0 two seconds later (about 19 frames not made), then a duplicate and a reorder
    evs = [(i * 0.1, i, 100 + i * 0.1) for i in range(10)]
    evs += [(1.5 + k * 0.1, 15 + k, 101.5 + k * 0.1) for k in range(5)]
    evs += [(4.0 + k * 0.1, k, 103.9 + k * 0.1) for k in range(3)]
    # a fault at 1.0 s: the hole after 0.9 s is its own; one at 3.0 s: the restart's hole (its
    # silence began at 1.9 s, less than the 2 s down-gap before it) is that fault's
    assert frames_lost(evs, [1.0, 3.0], 10.0) == (0, [5, 19])
    assert frames_lost(evs, [1.0], 10.0) == (0, [24])
    assert frames_lost(evs, [0.2], 10.0) == (0, [24])  # the only fault: everything after it
    assert frames_lost(evs, [], 10.0) == (24, [])  # no fault: lost under load alone
    # a backlog that arrives after the first live frame (a broker outage): nothing lost
    late = [(0.0, 0, 100.0), (0.1, 1, 100.1), (9.0, 9, 100.9), (9.1, 2, 100.2), *[
        (9.2 + k * 0.01, 3 + k, 100.3 + k * 0.1) for k in range(6)], (9.3, 10, 101.0)]
    assert frames_lost(late, [5.0], 10.0) == (0, [0])
    assert [o["frame_id"] for o in order_faults(late)] == [2]
    # frames 2-8 missing (the silence began at 0.1 s, before the fault), 2 came late, then
    # again: a duplicate fills nothing
    assert frames_lost([*late[:3], (9.1, 2, 100.2), (9.15, 2, 100.2)], [5.0], 10.0) == (6, [0])
    assert order_faults(evs) == []  # a restarted source counting from 0 is not a reorder
    dup = [*evs, (5.0, 2, 104.1)]
    assert order_faults(dup) == [{"t": 5.0, "frame_id": 2, "after": 2, "kind": "duplicate"}]
    back = [*evs, (5.0, 1, 104.0)]
    assert order_faults(back)[0]["kind"] == "reordered"


def test_reconnect_wait_bounds_a_camera_return():
    # waits 1, 2, 4, 8, 16, 30, ...: attempts at 1, 3, 7, 15, 31 s
    assert reconnect_wait_s(0.5, 1.0, 30.0) == 1.0
    assert reconnect_wait_s(10.0, 1.0, 30.0) == 8.0
    assert reconnect_wait_s(20.0, 1.0, 30.0) == 16.0
    assert reconnect_wait_s(200.0, 1.0, 30.0) == 30.0


def test_tracebacks_found_in_logs(tmp_path):
    from edgeva.bench.chaos.run import _exceptions

    log = tmp_path / "agent.log"
    log.write_text("INFO started\nWARNING module x crashed (exit code -9); restart 1\n"
                   "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n    g()\n"
                   "IndexError: index 9 is out of bounds\nINFO fine\n")
    (tmp_path / "quiet.log").write_text("INFO nothing wrong\n")
    found = _exceptions({"agent": log, "quiet": tmp_path / "quiet.log", "gone": tmp_path / "missing.log"})
    assert found == [{"log": "agent", "exception": "IndexError: index 9 is out of bounds", "allowed": False}]


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~65 s alone; its own run is bounded by the subprocess timeout below
def test_short_chaos_run_reports_faults_and_checks(tmp_path):
    out, plot = tmp_path / "chaos.json", tmp_path / "chaos.png"
    kinds = "module_kill,agent_kill,camera_down"
    plan = schedule(1, 42, kinds.split(","), tail_s=25.0)
    assert [f.kind for f in plan] == ["module_kill", "agent_kill"]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeva.cli", "bench", "chaos", "--minutes", "0.7", "--seed", "1",
         "--faults", kinds, "--busy", "0", "--json", str(out), "--plot", str(plot)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert out.exists(), proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert [(f["t"], f["kind"]) for f in res["faults"]] == [(f.t, f.kind) for f in plan]
    for f in res["faults"]:
        assert {"t", "kind", "target", "recovered_s"} <= set(f), f
        assert set(f["apps"]) == {"tracking", "roi", "reid", "split"}, f
        assert f["target"], f
    assert "fault 1/2: module_kill" in proc.stdout and "fault 2/2: agent_kill" in proc.stdout
    assert set(res["checks"]) == {"recovered_within_budget", "no_unexpected_exceptions", "frame_ids_in_order",
                                  "shm_back_to_baseline", "processes_back_to_baseline", "rss_back_to_baseline"}
    assert all(isinstance(v, bool) for v in res["checks"].values())
    # What must hold even on a busy machine: nothing left behind, frames in order, clean logs.
    for name in ("frame_ids_in_order", "no_unexpected_exceptions", "shm_back_to_baseline",
                 "processes_back_to_baseline"):
        assert res["checks"][name], (name, res["exceptions"], res["apps"], res["baseline"], res["end"])
    assert proc.returncode == (0 if all(res["checks"].values()) else 1), proc.stdout[-2000:]
    assert plot.stat().st_size > 10_000
