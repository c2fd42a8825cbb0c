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

from edgeva.agent.dataplane.segment import segment_name
from edgeva.agent.supervisor import Instance, RestartPolicy, Supervisor
from edgeva.schemas import runner as R

pytestmark = pytest.mark.slow  # a few module starts: ~1 s each on a loaded machine

# A restart takes ~1 s (3 s on a loaded 2-core machine): waits well past that, short enough that a
# broken supervisor fails fast (tools/mutants.py runs these per mutant).
RESTART_WAIT_S = 12.0
READY_S = 15.0


class _Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.statuses: list[str] = []
        self.waits: list[tuple[float, float]] = []  # per back-off: (monotonic, wall) time left

    def on_event(self, inst: Instance, event: dict) -> None:
        with self.lock:
            self.events.append(event)
            if event.get("event") == "module_backoff":
                self.waits.append((inst.next_attempt - time.monotonic(), event["next_attempt_ts"] - time.time()))

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
    _until(lambda: inst.status == "running" and inst.pid not in (None, pid), RESTART_WAIT_S,
           lambda: f"{inst.status} {inst.error} {rec.statuses[n:]}")
    with rec.lock:
        return rec.statuses[n:]


@pytest.mark.parametrize("fast", [1, 3])
def test_exactly_fast_immediate_restarts_then_back_off(fast: int) -> None:
    rec = _Record()
    policy = RestartPolicy(fast=fast, window_s=120.0, first_s=0.4, cap_s=0.4, reset_s=600.0)
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=policy)
    try:
        inst = sup.start(_spec(f"dec{fast}"), timeout=READY_S)
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
        # the next attempt lies first_s ahead, on both clocks, when the back-off is announced
        (left_mono, left_wall), = rec.waits
        assert policy.first_s - 0.1 < left_mono <= policy.first_s and policy.first_s - 0.1 < left_wall <= policy.first_s
        assert inst.restarts == fast + 1 and inst.backoffs == 1
        with rec.lock:  # recovered once: after the back-off, not after the immediate restarts
            assert [e["event"] for e in rec.events].count("module_recovered") == 1, rec.events
        # running again for less than reset_s forgets nothing: the next crash waits too (after a
        # few supervisor ticks, which is when a reset would happen)
        time.sleep(0.6)
        went = _kill_and_wait_running(inst, rec)
        assert "backoff" in went and inst.backoffs == 2 and len(rec.backoffs()) == 2, went
    finally:
        sup.close()


def test_crashes_older_than_the_window_are_forgotten() -> None:
    rec = _Record()
    policy = RestartPolicy(fast=1, window_s=1.5, first_s=0.4, cap_s=0.4, reset_s=600.0)
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=policy)
    try:
        inst = sup.start(_spec("decw"), timeout=READY_S)
        assert "backoff" not in _kill_and_wait_running(inst, rec)
        time.sleep(policy.window_s + 0.2)  # that restart leaves the window
        assert "backoff" not in _kill_and_wait_running(inst, rec), "a crash outside the window counted"
        assert "backoff" in _kill_and_wait_running(inst, rec)  # the second within the window
        assert len(rec.backoffs()) == 1 and inst.restarts == 3
    finally:
        sup.close()


def test_restart_defaults_are_the_documented_ones() -> None:
    # docs/protocol.md: 5 restarts at once in 60 s, then 1 s doubling to 300 s, reset after 120 s
    p = RestartPolicy()
    assert (p.fast, p.window_s, p.first_s, p.cap_s, p.reset_s) == (5, 60.0, 1.0, 300.0, 120.0)
    assert [p.delay(n) for n in (0, 1, 8, 9, 41)] == [1.0, 2.0, 256.0, 300.0, 300.0]


def test_a_setup_failure_at_deploy_is_refused_with_its_reason_and_not_restarted(tmp_path) -> None:
    rec = _Record()
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change,
                     restart=RestartPolicy(fast=3, first_s=0.2, cap_s=0.2))
    try:
        spec = _spec("decbad").model_copy(update={"config": {
            "type": "decoder", "source": str(tmp_path / "missing.mp4")}})
        with pytest.raises(RuntimeError) as e:
            sup.start(spec, timeout=READY_S)
        inst = sup.instances["decbad"]
        assert inst.status == "failed" and "missing.mp4" in str(e.value), (inst.status, str(e.value))
        time.sleep(0.5)  # the supervisor's loop looks again: nothing restarts it
        assert inst.status == "failed" and inst.restarts == 0 and not rec.backoffs()
    finally:
        sup.close()


def test_stop_ends_the_module_and_nothing_restarts_it() -> None:
    rec = _Record()
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=RestartPolicy(first_s=0.2, cap_s=0.2))
    try:
        inst = sup.start(_spec("decstop"), timeout=READY_S)
        pid = inst.pid
        sup.stop("decstop", timeout=5)
        assert inst.status == "stopped" and not inst.proc.is_alive() and "decstop" not in sup.instances
        time.sleep(0.6)  # longer than a back-off: no restart of a stopped module
        assert inst.pid == pid and inst.restarts == 0 and inst.status == "stopped"
        sup.stop("decstop")  # stopping twice: nothing to do
    finally:
        sup.close()


def test_update_reaches_the_running_module_and_says_whether_it_applied() -> None:
    sup = Supervisor(lambda *_: None, lambda *_: None, lambda *_: None)
    try:
        inst = sup.start(_spec("decupd"), timeout=READY_S)
        # a decoder takes a new frame rate in place (live); the module answered, not a timeout
        res = sup.update("decupd", {"type": "decoder", "source": "synthetic", "fps": 7, "width": 32, "height": 24})
        assert res == R.UpdatedMsg(applied=True, message=""), res
        assert inst.status == "running" and inst.restarts == 0 and inst.update_result is res
    finally:
        sup.close()


def test_a_module_stuck_in_a_call_is_killed_restarted_and_said_where() -> None:
    rec = _Record()
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change, restart=RestartPolicy(first_s=0.2, cap_s=0.2))
    try:
        spec = _spec("dechang").model_copy(update={"hang_timeout": 1.0,
                                                   "config": {**_spec("x").config, "fps": 20}})
        inst = sup.start(spec, timeout=READY_S)
        sup.send(inst, R.GoMsg())
        time.sleep(1.5)  # past its first calls (they get a longer grace)
        pid = inst.pid
        os.kill(pid, signal.SIGSTOP)
        _until(lambda: inst.status == "running" and inst.pid not in (None, pid), RESTART_WAIT_S,
               lambda: f"{inst.status} {inst.error} {rec.statuses}")
        with rec.lock:
            hung = [e for e in rec.events if e.get("event") == "module_hung"]
        assert len(hung) == 1 and hung[0]["restarted"] is True and hung[0]["module"] == "dechang", hung
        assert hung[0]["stuck_s"] >= 1.0 and hung[0]["deadline_s"] == 1.0
        assert inst.restarts == 1 and inst.hung is None  # cleared by the restart
    finally:
        sup.close()


def test_a_setup_failure_while_restoring_backs_off_instead_of_failing(tmp_path) -> None:
    rec = _Record()
    sup = Supervisor(rec.on_event, lambda *_: None, rec.on_change,
                     restart=RestartPolicy(fast=3, first_s=5.0, cap_s=5.0))
    try:
        spec = _spec("decboot").model_copy(update={"config": {
            "type": "decoder", "source": str(tmp_path / "missing.mp4")}})
        inst = sup.start(spec, timeout=READY_S, retry_setup=True)  # returns: retried later, not raised
        assert inst.status == "backoff" and "missing.mp4" in (inst.error or ""), (inst.status, inst.error)
        (ev,) = rec.backoffs()
        assert ev["backoff_s"] == 5.0 and "failed in setup" in ev["error"]
    finally:
        sup.close()


def test_the_supervisors_constants_and_a_fresh_instance() -> None:
    from edgeva.agent.supervisor import READY_TIMEOUT_S, STOP_TIMEOUT_S, WATCH_EVERY_S

    assert (READY_TIMEOUT_S, STOP_TIMEOUT_S, WATCH_EVERY_S) == (30.0, 5.0, 0.25)
    inst = Instance(_spec("fresh"))
    assert (inst.status, inst.live, inst.retry_setup, inst.ran, inst.slot_size, inst.bad_messages) == (
        "starting", False, False, False, 0, 0)
    assert (inst.restarts, inst.backoffs, inst.backoff_s, inst.error, inst.hung) == (0, 0, 0.0, None, None)
    assert inst.restart_times.maxlen == 64 and inst.proc_history.maxlen == 3600  # an hour of reports


def test_a_restart_is_unattended_and_failing_callbacks_stop_nothing() -> None:
    calls = {"event": 0, "change": 0}

    def bad_event(inst, event) -> None:
        calls["event"] += 1
        raise RuntimeError("callback bug")

    def bad_change(inst) -> None:
        calls["change"] += 1
        raise RuntimeError("callback bug")

    sup = Supervisor(bad_event, lambda *_: None, bad_change, restart=RestartPolicy(first_s=0.2, cap_s=0.2))
    try:
        assert sup.callback_errors == 0
        inst = sup.start(_spec("decun"), timeout=READY_S)
        assert inst.spec.unattended is False  # an operator waits on the first start
        pid = inst.pid
        os.kill(pid, signal.SIGKILL)
        _until(lambda: inst.status == "running" and inst.pid not in (None, pid), RESTART_WAIT_S,
               lambda: f"{inst.status} {inst.error}")
        assert inst.spec.unattended is True  # nobody waits on a restart: sources wait for input
        assert sup.callback_errors >= 2 and calls["change"] >= 2
    finally:
        sup.close()
