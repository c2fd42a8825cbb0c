"""Pins of the supervisor's restart limit (issue 25): exactly ``RestartPolicy.fast`` immediate
restarts within ``window_s``, and the next crash backs off; a crash older than the window is
forgotten. Unit level: a ``Supervisor`` with short timings, a real decoder process killed with
SIGKILL (an off-by-one in the limit either backs off one crash early or restarts one more time
at once; tests/test_restarts.py sees it only through the agent, 20 crashes long)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agent.dataplane.segment import segment_name
from agent.supervisor import Instance, RestartPolicy, Supervisor
from schemas import runner as R

pytestmark = pytest.mark.slow  # a few module starts: ~1 s each on a loaded machine


class _Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.statuses: list[str] = []

    def on_event(self, inst: Instance, event: dict) -> None:
        with self.lock:
            self.events.append(event)

    def on_change(self, inst: Instance) -> None:
        with self.lock:
            self.statuses.append(inst.status)

    def backoffs(self) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == "module_backoff"]


def _spec(name: str) -> R.RunnerSpec:
    cfg = {"type": "decoder", "source": "synthetic", "fps": 5, "width": 32, "height": 24}
    return R.RunnerSpec(name=name, type="decoder", config=cfg, device="t", inputs=[],
                        output_ring=segment_name(f"pin{os.getpid()}", name))


def _until(pred, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.02)


def _kill_and_wait_running(inst: Instance, rec: _Record) -> list[str]:
    """SIGKILL the module, wait for its replacement to run; the statuses it went through."""
    pid, n = inst.pid, len(rec.statuses)
    os.kill(pid, signal.SIGKILL)
    _until(lambda: inst.status == "running" and inst.pid not in (None, pid), 30,
           lambda: f"{inst.status} {inst.error} {rec.statuses[n:]}")
    with rec.lock:
        return rec.statuses[n:]


@pytest.mark.parametrize("fast", [1, 3])
def test_exactly_fast_immediate_restarts_then_back_off(fast: int) -> None:
    rec = _Record()
    policy = RestartPolicy(fast=fast, window_s=120.0, first_s=0.4, cap_s=0.4, reset_s=600.0)
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=policy)
    try:
        inst = sup.start(_spec(f"dec{fast}"))
        for k in range(1, fast + 1):
            went = _kill_and_wait_running(inst, rec)
            assert "backoff" not in went and not rec.backoffs(), f"crash {k} of {fast} backed off: {went}"
            assert inst.restarts == k and inst.backoffs == 0
        t_kill = time.monotonic()
        went = _kill_and_wait_running(inst, rec)  # crash fast + 1: waits first_s, then runs
        assert "backoff" in went, f"crash {fast + 1} was restarted at once: {went}"
        assert time.monotonic() - t_kill >= policy.first_s
        (ev,) = rec.backoffs()
        assert ev["restarts"] == fast and ev["backoff_s"] == policy.first_s and "crashed" in ev["error"]
        assert inst.restarts == fast + 1 and inst.backoffs == 1
    finally:
        sup.close()


def test_crashes_older_than_the_window_are_forgotten() -> None:
    rec = _Record()
    policy = RestartPolicy(fast=1, window_s=1.5, first_s=0.4, cap_s=0.4, reset_s=600.0)
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=policy)
    try:
        inst = sup.start(_spec("decw"))
        assert "backoff" not in _kill_and_wait_running(inst, rec)
        time.sleep(policy.window_s + 0.2)  # that restart leaves the window
        assert "backoff" not in _kill_and_wait_running(inst, rec), "a crash outside the window counted"
        assert "backoff" in _kill_and_wait_running(inst, rec)  # the second within the window
        assert len(rec.backoffs()) == 1 and inst.restarts == 3
    finally:
        sup.close()
