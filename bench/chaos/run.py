"""``edgeva bench chaos --minutes N [--seed S]``: four apps on two agents while things break.

The rig (``control.bench_chaos_rig``): the demo's tracking, roi and reid apps and a split app
(camera on agent A -> link -> agent B), a private mosquitto, the test RTSP camera, busy
processes beside them. Every 5-20 s (drawn from the seed, ``control.bench_chaos_plan``) one
fault: a random module SIGKILLed or SIGSTOPped past its hang timeout (the shared decoder and
detector included), an agent SIGKILLed and started again a second later (as systemd would),
the broker killed for 5-30 s, the agents' link cut both ways for 5-30 s, the camera stopped
for 5-30 s. Nothing is ever commanded: what comes back, comes back by itself.

It reports per fault each app's time to recovery (its events flowing again) and frames lost,
and checks:

- ``recovered_within_budget``: after the last fault, no app down longer than its budget
  (10 s + the restart back-off its modules were in + a camera's reconnect wait in progress);
- ``no_unexpected_exceptions``: no traceback in any agent's or the broker's log;
- ``frame_ids_in_order``: within an app, no frame id reordered or duplicated;
- ``shm_back_to_baseline`` / ``processes_back_to_baseline`` / ``rss_back_to_baseline``: at the
  end, as before the first fault (segments and bytes, process count, private memory within
  ``RSS_SLACK``), sampled once every app flows again (waiting up to ``END_WAIT_S``).

An app is down when it has been silent for 3x its longest silence while it flowed before the
faults (at least 2 s; ``down_gap_s``); its recovery from a fault is the end of the last such
silence that began before the next fault. Everything is kept under the folder ``logs`` names:
the agents' and the broker's logs, every event (``events.json``), every module state change
(``modules.json``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeva.bench.chaos.plan import (
    DOWN_GAP_S,
    KINDS,
    Fault,
    down_gap_s,
    frames_lost,
    order_faults,
    rate_series,
    reconnect_wait_s,
    recovery_s,
    schedule,
)
from edgeva.bench.chaos.rig import APP_FPS
from edgeva.bench.out import out_path, write_json
from edgeva.bench.proc import (
    become_subreaper,
    descendants,
    memory_mb,
    proc_state,
    reap_orphans,
    shm,
)

BUDGET_S = 10.0  # an app is back within this (plus any back-off) once a fault's cause is gone
TAIL_S = 25.0  # no fault in the last TAIL_S: the last fault's recovery is judged there
RSS_SLACK = 0.10  # private memory at the end within 10 % of the baseline
WARMUP_TIMEOUT_S = 240.0
SETTLE_S = 10.0
END_WAIT_S = 90.0  # at the end, at most this long for apps still down before the last sample
# Tracebacks that an injected fault explains (none so far: a fault must not make any).
ALLOWED: list[re.Pattern] = []


def _hang_timeout() -> float:
    from edgeva.schemas.runner import RunnerSpec

    return float(RunnerSpec.model_fields["hang_timeout"].default)


def _reconnect() -> tuple[float, float]:
    from edgeva.modules.decoder import DecoderConfig

    f = DecoderConfig.model_fields
    return float(f["reconnect_s"].default), float(f["reconnect_max_s"].default)


def _sample(rig: Any) -> dict:
    """Processes under the bench (not the busy ones), private memory of the agents and their
    modules, and the agents' /dev/shm segments."""
    reap_orphans(rig.popen_pids())
    busy = {p.pid for p in rig.busy}
    procs = [p for p in descendants(os.getpid()) if p != os.getpid() and p not in busy]
    rss = 0.0
    for proc in rig.agents.values():
        for pid in descendants(proc.pid):
            mem = memory_mb(pid)
            rss += mem[0] if mem else 0.0
    segs = [shm(prefix) for prefix in rig.prefixes.values()]
    return {"processes": len(procs), "rss_mb": round(rss, 1),
            "shm_mb": round(sum(s[1] for s in segs), 2), "segments": sum(s[2] for s in segs)}


def _exceptions(logs: dict[str, Path]) -> list[dict]:
    """Each traceback in the logs: which log and its last line (the exception)."""
    found = []
    for name, path in logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" not in line:
                continue
            j = i + 1
            # the exception is the first line out of the frames (a chained one: the last)
            while j < len(lines) and (lines[j].startswith((" ", "\t", "Traceback", "During handling",
                                                           "The above exception")) or not lines[j].strip()):
                j += 1
            exc = lines[j].strip() if j < len(lines) else "(log ends inside a traceback)"
            found.append({"log": name, "exception": exc[:300],
                          "allowed": any(p.search(exc) for p in ALLOWED)})
    return found


class _Injector:
    """Carries out one planned fault on the rig; returns its target and when its cause was removed."""

    def __init__(self, rig: Any, rng: random.Random, hang_s: float) -> None:
        self.rig, self.rng, self.hang_s = rig, rng, hang_s

    def __call__(self, f: Fault, t0: float) -> dict:
        return getattr(self, f.kind)(f, t0)

    def _module(self) -> tuple[str, str, int] | None:
        mods = self.rig.recorder.running()
        return self.rng.choice(mods) if mods else None

    def module_kill(self, f: Fault, t0: float) -> dict:
        target = self._module()
        if target is None:
            return {"target": None, "note": "no module was running"}
        try:
            os.kill(target[2], signal.SIGKILL)
        except ProcessLookupError:
            return {"target": f"{target[0]}/{target[1]}", "note": "gone before the kill"}
        return {"target": f"{target[0]}/{target[1]}", "pid": target[2], "cleared": time.monotonic() - t0}

    def module_stop(self, f: Fault, t0: float) -> dict:
        target = self._module()
        if target is None:
            return {"target": None, "note": "no module was running"}
        dev, name, pid = target
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return {"target": f"{dev}/{name}", "note": "gone before the stop"}
        t_stop = time.monotonic()
        time.sleep(f.duration)
        # The watchdog should have killed it after its hang timeout; if not, let it go on.
        still = proc_state(pid) == "T"
        if still:
            os.kill(pid, signal.SIGCONT)
        return {"target": f"{dev}/{name}", "pid": pid, "cleared": t_stop + self.hang_s - t0,
                "replaced_by_watchdog": not still}

    def agent_kill(self, f: Fault, t0: float) -> dict:
        dev = self.rng.choice(sorted(self.rig.agents))
        pid = self.rig.kill_agent(dev)
        time.sleep(f.duration)
        self.rig.start_agent(dev)
        return {"target": dev, "pid": pid, "cleared": time.monotonic() - t0}

    def broker_down(self, f: Fault, t0: float) -> dict:
        self.rig.broker.stop(kill=True)
        time.sleep(f.duration)
        self.rig.broker.start()
        return {"target": "mosquitto", "cleared": time.monotonic() - t0}

    def link_cut(self, f: Fault, t0: float) -> dict:
        for p in self.rig.proxies:
            p.cut(both=True)
        time.sleep(f.duration)
        for p in self.rig.proxies:
            p.heal()
        return {"target": f"{self.rig.dev_a}<->{self.rig.dev_b}", "cleared": time.monotonic() - t0}

    def camera_down(self, f: Fault, t0: float) -> dict:
        self.rig.camera.stop()
        time.sleep(f.duration)
        self.rig.camera.start()
        return {"target": self.rig.camera.url, "cleared": time.monotonic() - t0}


def _backoff_s(modules: list, app: str, lo: float, hi: float) -> float:
    """The longest restart back-off any module of ``app`` was in between ``lo`` and ``hi``."""
    return max((b or 0.0 for t, _d, _n, apps, st, b in modules
                if lo <= t <= hi and st == "backoff" and f"default/{app}" in apps), default=0.0)


def analyse(faults: list[dict], events: dict[str, list], modules: list, t0: float, t_end: float,
            t_flowing: float) -> dict[str, dict]:
    """Fill in each fault's recovery per app (seconds from the fault), frames lost (see
    ``frames_lost``), budget and whether it held; ``t0``: the clock's zero in monotonic time,
    ``t_flowing``: when every app flowed (the baseline is from there to ``t0``). Returns per app
    its down gap (``down_gap_s``) and frames lost before the first fault (under load alone)."""
    first, cap = _reconnect()
    rel = {app: [(a - t0, fid, ts) for a, fid, ts in evs] for app, evs in events.items()}
    gap = {app: down_gap_s([e[0] for e in evs], t_flowing - t0, 0.0) for app, evs in rel.items()}
    lost = {app: frames_lost(evs, [f["t"] for f in faults], APP_FPS, gap[app]) for app, evs in rel.items()}
    for i, f in enumerate(faults):
        t_next = faults[i + 1]["t"] if i + 1 < len(faults) else t_end
        f["apps"] = {}
        for app, evs in sorted(rel.items()):
            arrivals = [e[0] for e in evs]
            rec = recovery_s(arrivals, f["t"], t_next, t_end, gap[app])
            budget = BUDGET_S + _backoff_s(modules, app, t0 + f["t"], t0 + t_end)
            if f["kind"] == "camera_down" and app == "split":
                budget += reconnect_wait_s(f["duration_s"], first, cap)
            after = None if rec is None else round(max(0.0, f["t"] + rec - f["cleared_s"]), 2)
            f["apps"][app] = {"recovered_s": rec, "down_after_cleared_s": after, "budget_s": round(budget, 1),
                              "within_budget": after is not None and after <= budget,
                              "frames_lost": lost[app][1][i]}
        recs = [v["recovered_s"] for v in f["apps"].values()]
        f["recovered_s"] = None if not recs or None in recs else max(recs)
    return {app: {"down_gap_s": gap[app], "frames_lost_before_faults": lost[app][0]} for app in rel}


def run_chaos(minutes: float, seed: int, json_path: str | None, plot_path: str | None,
              kinds: list[str] | None, busy: int, nice: int, say: Callable[[str], None] = print) -> dict:
    """Run the chaos soak; returns ``{"faults", "checks", ...}`` (see the module docstring). The
    arguments are ``edgeva bench chaos``'s flags, whose defaults are in its parser (cli.py)."""
    from edgeva.bench.chaos.rig import Rig

    hang_s = _hang_timeout()
    plan = schedule(seed, minutes * 60, kinds or KINDS, TAIL_S, hang_s)
    subreaper = become_subreaper()
    say(f"chaos: {len(plan)} faults in {minutes:g} min (seed {seed}), {busy} busy processes"
        f"{f' at nice {nice}' if nice else ' (not niced)'}; hang timeout {hang_s:g} s")
    faults: list[dict] = []
    with Rig(busy, nice) as rig:
        rig.deploy()
        rig.start_busy()
        t_flowing = _warm_up(rig, say)
        base = _sample(rig)
        say(f"  baseline: {base['processes']} processes, {base['rss_mb']} MB private, "
            f"{base['segments']} segments {base['shm_mb']} MB in /dev/shm")
        inject = _Injector(rig, random.Random(seed), hang_s)
        t0 = time.monotonic()
        flowing, _ = rig.recorder.snapshot()
        gaps = {app: down_gap_s([e[0] - t0 for e in evs], t_flowing - t0, 0.0) for app, evs in flowing.items()}
        say("  an app is down after a silence of " + ", ".join(f"{a} {g:g} s" for a, g in sorted(gaps.items())))
        for n, f in enumerate(plan, 1):
            _sleep_until(t0 + f.t)
            _say_recovery(faults, rig, t0, gaps, say)
            say(f"  [{f.t:6.1f} s] fault {n}/{len(plan)}: {f.kind}" + (f" for {f.duration:g} s" if f.duration else ""))
            got = inject(f, t0)
            faults.append({"t": f.t, "kind": f.kind, "target": got.get("target"), "duration_s": f.duration,
                           "cleared_s": round(got.get("cleared", f.t), 2),
                           **{k: v for k, v in got.items() if k not in ("target", "cleared")}})
            say(f"           target {got.get('target')}" + (f" ({got['note']})" if "note" in got else ""))
        _sleep_until(t0 + minutes * 60)
        _say_recovery(faults, rig, t0, gaps, say)
        waited = _wait_flowing(rig, gaps)
        if waited:
            say(f"  waited {waited:.1f} s more for every app to flow before the last sample")
        t_end = time.monotonic() - t0
        end = _sample(rig)
        events, modules = rig.recorder.snapshot()
        logs = dict(rig.logs)
    per_app = analyse(faults, events, modules, t0, t_end, t_flowing)
    result = _result(minutes, seed, busy, nice, faults, events, t0, t_end, base, end, _exceptions(logs), subreaper)
    for app, v in per_app.items():
        result["apps"][app].update(v)
    result["logs"] = str(rig.tmp)
    # Every event, for a closer look at a failed check: (seconds, frame_id, source ts) per app.
    (rig.tmp / "events.json").write_text(json.dumps(
        {app: [(round(a - t0, 3), fid, ts) for a, fid, ts in evs] for app, evs in events.items()}))
    (rig.tmp / "modules.json").write_text(json.dumps([(round(t - t0, 3), *rest) for t, *rest in modules]))
    if json_path:
        write_json(json_path, result)
    if plot_path:
        from edgeva.bench.chaos.plot import write_plot

        write_plot(out_path(plot_path), result, events, t0)
    return result


def _sleep_until(when: float) -> None:
    while (left := when - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _warm_up(rig: Any, say: Callable[[str], None]) -> float:
    """Until every app's events flow (each at least 3 in the last 3 s), then SETTLE_S more, the
    apps' baseline; returns when they flowed (monotonic)."""
    apps = {"tracking", "roi", "reid", "split"}
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while True:
        events, _ = rig.recorder.snapshot()
        now = time.monotonic()
        flowing = {a for a, evs in events.items() if sum(1 for e in evs if e[0] > now - 3) >= 3}
        if apps <= flowing:
            break
        if now > deadline:
            raise RuntimeError(f"apps not flowing after {WARMUP_TIMEOUT_S:g} s: {sorted(apps - flowing)} "
                               f"(logs in {rig.tmp})")
        time.sleep(0.5)
    say(f"  all 4 apps flowing on {rig.dev_a} and {rig.dev_b}; {SETTLE_S:g} s of baseline")
    time.sleep(SETTLE_S)  # the rings fill, the processes settle; each app's rate without faults
    return now


def _wait_flowing(rig: Any, gaps: dict[str, float]) -> float:
    """Wait (up to END_WAIT_S) until every app had an event within its down gap: resources are
    compared with the baseline once the apps are back, not while an agent still restores them
    (the recovery check judges how long that took). Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < END_WAIT_S:
        events, _ = rig.recorder.snapshot()
        now = time.monotonic()
        if all(evs and now - evs[-1][0] <= gaps.get(app, DOWN_GAP_S) for app, evs in events.items()):
            break
        time.sleep(0.5)
    waited = time.monotonic() - start
    return round(waited, 1) if waited > 0.6 else 0.0


def _say_recovery(faults: list[dict], rig: Any, t0: float, gaps: dict[str, float],
                  say: Callable[[str], None]) -> None:
    """One line on the fault before this moment: each app's recovery so far."""
    if not faults:
        return
    f, now = faults[-1], time.monotonic() - t0
    events, _ = rig.recorder.snapshot()
    parts = []
    for app, evs in sorted(events.items()):
        rec = recovery_s([e[0] - t0 for e in evs], f["t"], now, now, gaps.get(app, DOWN_GAP_S))
        parts.append(f"{app} {'still down' if rec is None else f'{rec:.1f} s'}")
    say(f"           recovered: {', '.join(parts)}")


def _result(minutes: float, seed: int, busy: int, nice: int, faults: list[dict], events: dict, t0: float,
            t_end: float, base: dict, end: dict, exceptions: list[dict], subreaper: bool) -> dict:
    last = faults[-1] if faults else None
    order = {app: order_faults([(a - t0, fid, ts) for a, fid, ts in evs]) for app, evs in events.items()}
    checks = {
        "recovered_within_budget": last is None or all(v["within_budget"] for v in last["apps"].values()),
        "no_unexpected_exceptions": not any(not e["allowed"] for e in exceptions),
        "frame_ids_in_order": not any(order.values()),
        "shm_back_to_baseline": end["segments"] == base["segments"] and end["shm_mb"] <= base["shm_mb"] + 0.01,
        "processes_back_to_baseline": end["processes"] == base["processes"],
        "rss_back_to_baseline": end["rss_mb"] <= base["rss_mb"] * (1 + RSS_SLACK),
    }
    return {
        "minutes": minutes, "seed": seed, "busy": {"processes": busy, "nice": nice},
        "down_gap_floor_s": DOWN_GAP_S, "budget_s": BUDGET_S, "run_s": round(t_end, 1),
        "end_wait_s": round(t_end - minutes * 60, 1),
        "faults": faults,
        "checks": checks,
        "apps": {app: {"events": sum(1 for e in evs if e[0] >= t0), "order_faults": order[app][:20]}
                 for app, evs in sorted(events.items())},
        "baseline": base, "end": end, "orphans_counted": subreaper,
        "exceptions": exceptions[:50],
        "rates": {app: rate_series([e[0] - t0 for e in evs], 0.0, t_end) for app, evs in sorted(events.items())},
    }
