"""The supervisor's restart policy, status reporting and bookkeeping, pinned fast (issue 25).

The module processes are real (forked, with real pipes, sentinels, heartbeats and signals), but
each plays a short script instead of a module: ready, crash with a code, fail setup, hang in a
call, ignore a stop... so a restart takes milliseconds and every test well under a second or
two. What is checked is what the agent sees: the status changes in order, the events, the
counters, the exit codes, the waits between restarts."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

import edgeva.agent.runner
import edgeva.agent.supervisor as S
from edgeva.agent.dataplane.ring import RingProducer
from edgeva.agent.dataplane.segment import SHM_DIR, segment_name
from edgeva.agent.heartbeat import PROCESS, Heartbeat
from edgeva.agent.supervisor import Instance, RestartPolicy, Supervisor
from edgeva.schemas import runner as R
from tests.load import budget

WAIT_S = 5.0  # a scripted restart takes milliseconds; generous for a loaded 2-core machine
ROOT = Path(__file__).resolve().parents[1]


def _send(conn, msg) -> None:
    conn.send_bytes(msgpack.packb(msg.model_dump(), use_bin_type=True))


def _busy(hb: Heartbeat, frame: int) -> None:
    """Say "inside process(frame)" on the heartbeat, after one finished call (no first-call grace)."""
    hb.enter(PROCESS, 0)
    hb.leave()
    hb.enter(PROCESS, frame)


def _serve(conn, cfg: dict, hb: Heartbeat) -> None:
    """Answer updates; on a stop, do what the script says (exit 0 by default)."""
    while True:
        try:
            msg = msgpack.unpackb(conn.recv_bytes(), raw=False)
        except (EOFError, OSError):
            os._exit(0)
        if msg["op"] == "update" and cfg.get("answer", True):
            _send(conn, R.UpdatedMsg(applied=bool(msg["config"].get("apply")), message="in place"))
        elif msg["op"] == "stop":
            if cfg.get("on_stop") == "hang":  # stuck in a call: only a signal ends it
                _busy(hb, 1)
                while True:
                    time.sleep(1)
            os._exit(0)


def _scripted(spec_json: str, conn, heartbeat=None) -> None:
    """Stands in for edgeva.agent.runner.run_module: plays ``config["runs"][n]`` on the module's n-th
    start (the last run repeats), and notes each start in ``<dir>/<name>.starts``."""
    spec = R.RunnerSpec.model_validate_json(spec_json)
    cfg = spec.config
    hb = Heartbeat(heartbeat)
    starts = Path(cfg["dir"]) / f"{spec.name}.starts"
    with starts.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "unattended": spec.unattended}) + "\n")
    n = len(starts.read_text().splitlines()) - 1
    keep = []
    for op, *a in cfg["runs"][min(n, len(cfg["runs"]) - 1)]:
        if op == "ready":
            _send(conn, R.ReadyMsg(ring=spec.output_ring, slot_size=4096, live=bool(cfg.get("live"))))
        elif op == "failed":
            _send(conn, R.FailedMsg(stage=a[0], message=a[1]))
        elif op == "event":
            _send(conn, R.EventMsg(event=a[0]))
        elif op == "raw":  # bytes as they are, e.g. what another version would send
            conn.send_bytes(bytes.fromhex(a[0]))
        elif op == "ended":
            _send(conn, R.EndedMsg())
        elif op == "ring":  # its output ring, left in /dev/shm if it is killed
            keep.append(RingProducer.create(spec.output_ring, 256, 2))
        elif op == "child":  # a process of its own (a module may start helpers)
            try:
                p = mp.get_context("fork").Process(target=os._exit, args=(0,))
                p.start()
                p.join()
                _send(conn, R.EventMsg(event={"child": p.exitcode}))
            except Exception as e:  # noqa: BLE001 - said to the test, whatever it is
                _send(conn, R.EventMsg(event={"child": repr(e)}))
        elif op == "term":  # SIGTERM: exit with code a[0] after a[1] s (a clean shutdown)
            signal.signal(signal.SIGTERM, lambda *_, c=a[0], d=a[1]: (time.sleep(d), os._exit(c)))
        elif op == "ignore_term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif op == "hang":  # stuck inside process(frame a[0]) until killed
            _busy(hb, a[0])
            while True:
                time.sleep(1)
        elif op == "busy_exit":  # dies inside a call: its heartbeat stays "in process"
            _busy(hb, 3)
            os._exit(a[0])
        elif op == "sleep":
            time.sleep(a[0])
        elif op == "exit":
            os._exit(a[0])
        elif op == "deaf":  # reads nothing, stops on no message
            while True:
                time.sleep(1)
        elif op == "serve":
            _serve(conn, cfg, hb)


class _Rec:
    """What the supervisor tells the agent, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.changes: list[tuple[str, str]] = []  # (module, status)
        self.metrics: list[R.MetricsMsg] = []
        self.waits: list[tuple[float, float]] = []  # per back-off: its next attempt, less now (both clocks)

    def on_event(self, inst: Instance, event: dict) -> None:
        with self.lock:
            self.events.append(event)
            if event.get("event") == "module_backoff":
                self.waits.append((inst.next_attempt - time.monotonic(), event["next_attempt_ts"] - time.time()))

    def on_metrics(self, inst: Instance, msg: R.MetricsMsg) -> None:
        with self.lock:
            self.metrics.append(msg)

    def on_change(self, inst: Instance) -> None:
        with self.lock:
            self.changes.append((inst.name, inst.status))

    def statuses(self, name: str) -> list[str]:
        with self.lock:
            return [s for n, s in self.changes if n == name]

    def named(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]


@pytest.fixture
def make(monkeypatch, tmp_path):
    """make(policy) -> (Supervisor, _Rec) whose module processes are forked scripts;
    closed at the end."""
    monkeypatch.setattr(S, "_context", lambda: mp.get_context("fork"))
    monkeypatch.setattr(S, "_warm_up", lambda: None)
    monkeypatch.setattr(edgeva.agent.runner, "run_module", _scripted)
    made: list[Supervisor] = []

    def _make(policy: RestartPolicy | None = None, rec: _Rec | None = None, **cb):
        rec = rec or _Rec()
        sup = Supervisor(cb.get("on_event", rec.on_event), cb.get("on_metrics", rec.on_metrics),
                         cb.get("on_change", rec.on_change), restart=policy)
        made.append(sup)
        return sup, rec

    yield _make
    for sup in made:
        sup.close()


def _spec(tmp_path: Path, name: str, *runs: list, **kw) -> R.RunnerSpec:
    cfg = {"dir": str(tmp_path), "runs": [list(r) for r in runs], **kw.pop("cfg", {})}
    return R.RunnerSpec(name=name, type="scripted", config=cfg, device="t",
                        output_ring=segment_name(f"sv{os.getpid()}", name), **kw)


def _starts(tmp_path: Path, name: str) -> list[dict]:
    p = tmp_path / f"{name}.starts"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def _until(pred, what, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.005)


def _kill_until_running(inst: Instance) -> float:
    """SIGKILL the module and wait until a new process of it runs; the seconds that took."""
    pid, t0 = inst.pid, time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _until(lambda: inst.status == "running" and inst.pid != pid, lambda: (inst.status, inst.error))
    return time.monotonic() - t0


SERVE = [["ready"], ["serve"]]


def _hex(obj) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()


# -- tests, the fastest and most telling first (tools/mutants.py stops at the first failure) --
def test_the_policy_doubles_from_first_to_cap() -> None:
    p = RestartPolicy(first_s=0.5, cap_s=5.0)
    assert [p.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert RestartPolicy(first_s=3.0, cap_s=1e9).delay(2) == 12.0


def test_a_setup_failure_at_deploy_is_refused_with_its_reason(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=3, first_s=0.1, cap_s=0.1))
    with pytest.raises(RuntimeError, match=r"^setup: camera gone$"):
        sup.start(_spec(tmp_path, "f1", [["failed", "setup", "camera gone"], ["exit", 3]], SERVE))
    with pytest.raises(RuntimeError, match=r"^exited with code 3 during setup$"):
        sup.start(_spec(tmp_path, "f2", [["exit", 3]], SERVE))
    # asking to be restarted before it ever ran is a setup failure too
    with pytest.raises(RuntimeError, match=r"^exited with code 75 during setup$"):
        sup.start(_spec(tmp_path, "f3", [["exit", R.EXIT_RESTART]], SERVE))
    time.sleep(0.3)  # a supervisor tick or so: none is started again
    for name in ("f1", "f2", "f3"):
        inst = sup.instances[name]
        assert inst.status == "failed" and inst.restarts == 0 and len(_starts(tmp_path, name)) == 1
        assert rec.statuses(name) == ["failed"]
    assert not rec.events


def test_a_crash_with_an_exit_code_is_restarted_and_says_its_code(make, tmp_path) -> None:
    policy = RestartPolicy(fast=1, first_s=0.1, cap_s=0.1)
    sup, rec = make(policy)
    inst = sup.start(_spec(tmp_path, "c", [["ready"], ["exit", 1]], [["ready"], ["exit", 2]], SERVE), wait_ready=False)
    _until(lambda: inst.status == "running" and len(_starts(tmp_path, "c")) == 3, lambda: rec.statuses("c"))
    assert rec.statuses("c") == ["running", "restarting", "running", "backoff", "restarting", "running"]
    (ev,) = rec.named("module_backoff")
    assert ev["error"] == "crashed (exit code 2)" and inst.restarts == 2


def test_exit_0_or_ended_is_the_end_not_a_crash(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=3, first_s=0.1, cap_s=0.1))
    done = sup.start(_spec(tmp_path, "e0", [["ready"], ["sleep", 0.05], ["exit", 0]]), wait_ready=False)
    said = sup.start(_spec(tmp_path, "e1", [["ready"], ["ended"], ["exit", 1]]), wait_ready=False)
    _until(lambda: done.status == said.status == "ended" and not said.proc.is_alive(), lambda: rec.changes)
    time.sleep(0.3)  # a supervisor tick or so: nothing restarts them
    assert rec.statuses("e0") == ["running", "ended"]
    # "ended" once for its message, and again if its exit is seen in the same pass
    assert rec.statuses("e1") in (["running", "ended"], ["running", "ended", "ended"])
    assert done.restarts == said.restarts == 0 and len(_starts(tmp_path, "e0")) == len(_starts(tmp_path, "e1")) == 1
    assert not rec.events


def test_a_module_that_asks_to_restart_is_restarted_at_once_every_time(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=1, first_s=5.0, cap_s=5.0))
    inst = sup.start(_spec(tmp_path, "ask", [["ready"], ["failed", "restart", "mode"], ["exit", R.EXIT_RESTART]],
                           [["ready"], ["exit", R.EXIT_RESTART]], [["ready"], ["exit", R.EXIT_RESTART]], SERVE),
                     wait_ready=False)
    _until(lambda: len(_starts(tmp_path, "ask")) == 4 and inst.status == "running", lambda: rec.changes)
    assert rec.statuses("ask") == ["running", "restarting"] * 3 + ["running"]
    assert inst.restarts == 3 and inst.backoffs == 0 and not rec.events  # not crashes: no back-off


def test_a_restart_that_fails_setup_is_retried_not_given_up(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=5, first_s=0.1, cap_s=0.1))
    inst = sup.start(_spec(tmp_path, "rf", SERVE, [["failed", "setup", "busy"], ["exit", 3]], SERVE))
    assert [s["unattended"] for s in _starts(tmp_path, "rf")] == [False]
    _kill_until_running(inst)
    assert rec.statuses("rf") == ["running", "restarting", "restarting", "running"] and inst.restarts == 2
    assert [s["unattended"] for s in _starts(tmp_path, "rf")] == [False, True, True]


def test_a_setup_failure_while_restoring_backs_off_then_runs(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=3, first_s=0.2, cap_s=0.2))
    spec = _spec(tmp_path, "boot", [["failed", "setup", "no camera"], ["exit", 3]], SERVE)
    inst = sup.start(spec, retry_setup=True)  # returns: waiting, not raised
    assert inst.status == "backoff" and inst.error == "failed in setup (setup: no camera)"
    (ev,) = rec.named("module_backoff")
    assert ev["backoff_s"] == 0.2 and ev["restarts"] == 0
    _until(lambda: inst.status == "running", lambda: inst.status)
    assert rec.statuses("boot") == ["backoff", "restarting", "running"] and inst.restarts == 1
    assert [s["unattended"] for s in _starts(tmp_path, "boot")] == [True, True]  # restoring: unattended
    assert rec.named("module_recovered") == [{"event": "module_recovered", "module": "boot", "restarts": 1}]


def test_a_long_reason_is_cut_to_600_characters(make, tmp_path) -> None:
    # the state and the event carry the reason, not a module's whole traceback
    sup, rec = make(RestartPolicy(fast=0, first_s=30.0, cap_s=30.0))
    inst = sup.start(_spec(tmp_path, "long", [["failed", "setup", "x" * 1000], ["exit", 3]]), retry_setup=True)
    assert inst.status == "backoff" and inst.error == ("failed in setup (setup: " + "x" * 1000)[:600]
    assert rec.named("module_backoff")[0]["error"] == inst.error


def test_events_metrics_and_refused_messages_are_counted_exactly(make, tmp_path) -> None:
    sup, rec = make()
    m1 = {"op": "metrics", "frames_in": 3, "frames_out": 2, "proc_ms": [1.5, 3.0]}
    m2 = {"op": "metrics", "frames_in": 5, "frames_out": 4, "proc_ms": []}
    runs = [["raw", "c1"],  # not msgpack
            ["raw", _hex({"op": "bogus"})],  # no such message
            ["raw", msgpack.packb({"op": "event", "event": {"t": msgpack.ExtType(5, b"x")}}).hex()],  # no JSON form
            ["raw", _hex({"op": "event", "event": {"blob": b"\x01\x02", "v": math.inf}})],
            ["raw", _hex(m1)], ["raw", _hex(m2)], ["ready"], ["serve"]]
    inst = sup.start(_spec(tmp_path, "talk", runs, cfg={"live": True}))
    assert (inst.ring, inst.slot_size, inst.live) == (sup.instances["talk"].spec.output_ring, 4096, True)
    assert inst.bad_messages == 3 and sup.callback_errors == 0
    assert rec.events == [{"blob": "base64:AQI=", "v": None}]  # made JSON-safe
    assert [(m.frames_in, m.proc_ms) for m in rec.metrics] == [(3, [1.5, 3.0]), (5, [])]
    assert list(inst.proc_history) == [[1.5, 3.0]] and inst.last_metrics.frames_in == 5


def test_failing_callbacks_are_counted_and_stop_nothing(make, tmp_path) -> None:
    def bad(*_):
        raise RuntimeError("agent bug")

    sup, _ = make(RestartPolicy(fast=0, first_s=0.1, cap_s=0.1), on_event=bad, on_metrics=bad, on_change=bad)
    assert sup.callback_errors == 0
    runs = [["ready"], ["event", {"n": 1}], ["raw", _hex({"op": "metrics", "frames_in": 1, "frames_out": 1,
                                                          "proc_ms": []})], ["exit", 1]]
    inst = sup.start(_spec(tmp_path, "cb", runs, SERVE), wait_ready=False)  # on_change("running") raises: 1
    # its event (2), its metrics (3), the back-off's event (4) and status (5), the restart's
    # status (6), the recovery's event (7) and status (8): each failed alone
    _until(lambda: inst.status == "running" and len(_starts(tmp_path, "cb")) == 2 and sup.callback_errors >= 8,
           lambda: (inst.status, sup.callback_errors))
    time.sleep(0.05)
    assert sup.callback_errors == 8 and inst.restarts == 1 and inst.last_metrics.frames_in == 1


def test_fast_restarts_then_doubling_back_offs_in_order(make, tmp_path) -> None:
    policy = RestartPolicy(fast=2, window_s=60.0, first_s=0.15, cap_s=0.45, reset_s=5.0)
    sup, rec = make(policy)
    inst = sup.start(_spec(tmp_path, "m", SERVE))
    assert inst.status == "running" and inst.restarts == 0 and rec.statuses("m") == ["running"]
    for k in (1, 2):  # within the fast limit: at once, no back-off
        _kill_until_running(inst)
        assert (inst.restarts, inst.backoffs) == (k, 0)
    assert not rec.named("module_backoff") and not rec.named("module_recovered")
    waits = []
    for k in (1, 2, 3):  # then each crash waits first_s, doubling to cap_s (ran < reset_s)
        took = _kill_until_running(inst)
        (ev,) = rec.named("module_backoff")[k - 1:]
        waits.append(ev["backoff_s"])
        assert took >= ev["backoff_s"], (took, ev)
        assert ev["restarts"] == 1 + k and ev["error"] == "crashed (exit code -9)" and ev["module"] == "m"
        assert (inst.restarts, inst.backoffs) == (2 + k, k)
        (rev,) = rec.named("module_recovered")[k - 1:]  # said once per back-off, when it runs
        assert rev == {"event": "module_recovered", "module": "m", "restarts": 2 + k}
    assert waits == [0.15, 0.3, 0.45]
    for wait, (mono, wall) in zip(waits, rec.waits, strict=True):  # the next attempt lies ahead
        assert wait - 0.1 < mono <= wait and wait - 0.1 < wall <= wait, rec.waits
    assert rec.statuses("m") == ["running"] + ["restarting", "running"] * 2 + ["backoff", "restarting", "running"] * 3
    assert inst.error is None and inst.status == "running"
    # every start but the first is unattended (nobody waits on a restart)
    assert [s["unattended"] for s in _starts(tmp_path, "m")] == [False] + [True] * 5


def test_update_answers_and_a_silent_module_is_not_applied(make, tmp_path) -> None:
    sup, _ = make()
    sup.start(_spec(tmp_path, "up", SERVE))
    mute = sup.start(_spec(tmp_path, "mute", SERVE, cfg={"answer": False}))
    assert sup.update("up", {"apply": True}) == R.UpdatedMsg(applied=True, message="in place")
    assert sup.update("up", {"apply": False}) == R.UpdatedMsg(applied=False, message="in place")
    assert sup.update("mute", {"apply": True}, timeout=0.1) == R.UpdatedMsg(
        applied=False, message="no answer within 0s")
    assert mute.status == "running"


def test_only_a_hung_running_module_is_killed_and_said_where(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=1, first_s=5.0, cap_s=5.0))
    # before it in the supervisor's table: one that ended (not judged) and a healthy one
    sup.start(_spec(tmp_path, "end", [["ready"], ["ended"], ["serve"]], hang_timeout=0.05), wait_ready=False)
    ok = sup.start(_spec(tmp_path, "ok", SERVE, hang_timeout=0.05))
    _until(lambda: sup.instances["end"].status == "ended", lambda: sup.instances["end"].status)
    inst = sup.start(_spec(tmp_path, "hang", [["ready"], ["hang", 7]], hang_timeout=0.1))
    _until(lambda: len(rec.named("module_hung")) == 2 and inst.status == "backoff", lambda: rec.events)
    first, second = rec.named("module_hung")
    assert first["restarted"] is True and second["restarted"] is False  # the second backs off
    assert first["module"] == "hang" and first["where"] == "process" and first["frame_id"] == 7
    assert first["deadline_s"] == 0.1 and first["stuck_s"] > 0.1 and first["restarts"] == second["restarts"] == 1
    assert re.fullmatch(r"hung \(hung: \d+\.\d s in process \(frame 7\), deadline 0\.1 s; killed\)", inst.error), inst.error
    assert inst.proc.exitcode == -signal.SIGKILL and inst.restarts == 1
    assert ok.status == "running" and ok.restarts == 0 and sup.instances["end"].restarts == 0


def test_a_dead_module_waiting_in_back_off_is_not_called_hung(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=0, first_s=30.0, cap_s=30.0))
    inst = sup.start(_spec(tmp_path, "dead", [["ready"], ["busy_exit", 1]], hang_timeout=0.05), wait_ready=False)
    _until(lambda: inst.status == "backoff", lambda: inst.status)
    time.sleep(0.35)  # past its deadline and a watchdog tick
    assert inst.error == "crashed (exit code 1)" and inst.hung is None and not rec.named("module_hung")


def test_stop_ends_the_module_quietly_and_closes_its_pipe(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=3, first_s=0.1, cap_s=0.1))
    insts = [sup.start(_spec(tmp_path, f"s{i}", SERVE)) for i in range(3)]
    send = sup.send

    def slow_send(inst, msg) -> None:  # a loaded board: the module's exit is seen mid-stop
        send(inst, msg)
        if isinstance(msg, R.StopMsg):
            time.sleep(0.1)

    sup.send = slow_send
    n = len(rec.changes)
    for inst in insts:
        sup.stop(inst.name)
        assert inst.status == "stopped" and inst.proc.exitcode == 0 and inst.conn.closed
        assert inst.name not in sup.instances
    time.sleep(0.3)
    assert rec.changes[n:] == [] and all(i.restarts == 0 for i in insts) and not rec.events
    sup.stop("s0")  # twice: nothing to do


def test_stop_of_a_module_in_back_off_removes_its_ring(make, tmp_path) -> None:
    sup, _ = make(RestartPolicy(fast=0, first_s=30.0, cap_s=30.0))
    inst = sup.start(_spec(tmp_path, "rg", [["ring"], ["ready"], ["serve"]]))
    ring = Path(SHM_DIR) / inst.spec.output_ring
    assert ring.exists()
    os.kill(inst.pid, signal.SIGKILL)
    _until(lambda: inst.status == "backoff", lambda: inst.status)
    assert ring.exists()  # nobody closed it
    sup.stop("rg")
    assert not ring.exists()


def test_close_stops_every_module_and_ends_the_reader(make, tmp_path) -> None:
    sup, _ = make()
    insts = [sup.start(_spec(tmp_path, f"c{i}", SERVE)) for i in range(2)]
    sup.close()
    assert not sup._thread.is_alive() and not sup.instances
    assert all(i.status == "stopped" and i.proc.exitcode == 0 for i in insts)


def test_the_reader_survives_a_failed_fork(make, tmp_path) -> None:
    sup, rec = make(RestartPolicy(fast=5, first_s=5.0, cap_s=5.0))
    inst = sup.start(_spec(tmp_path, "fk", SERVE))
    real, fails = sup.ctx, []

    class _Ctx:  # the next start fails as a fork does when the board is out of processes
        def __getattr__(self, name):
            return getattr(real, name)

        def Process(self, *a, **kw):  # noqa: N802 - multiprocessing's name
            proc = real.Process(*a, **kw)
            if not fails:
                fails.append(1)

                def start() -> None:
                    raise BlockingIOError(11, "Resource temporarily unavailable")
                proc.start = start
            return proc

    sup.ctx = _Ctx()
    took = _kill_until_running(inst)
    # within a second on a quiet machine; the bound grows with the load measured now
    assert fails and sup._thread.is_alive() and inst.restarts == 2 and took < budget(1.0), took


def test_refused_messages_do_not_hide_the_last_words(make, tmp_path) -> None:
    # The reader is held (in the agent's event callback) until the module has said everything
    # and exited: its failure reason comes after three messages the supervisor refuses.
    hold = threading.Event()
    rec = _Rec()

    def on_event(inst: Instance, event: dict) -> None:
        rec.on_event(inst, event)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not hold.is_set():
            try:
                if Path(f"/proc/{inst.pid}/stat").read_text().split(")")[1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.01)

    sup, _ = make(rec=rec, on_event=on_event)
    runs = [["event", {"n": 1}], ["raw", "c1"], ["raw", "c1"], ["raw", "c1"],
            ["failed", "setup", "camera gone"], ["exit", 3]]
    with pytest.raises(RuntimeError, match=r"^setup: camera gone$"):
        sup.start(_spec(tmp_path, "lw", runs))
    assert sup.instances["lw"].bad_messages == 3 and rec.events == [{"n": 1}]


def test_a_restore_that_ends_before_it_is_waited_on_is_an_error(make, tmp_path) -> None:
    sup, _ = make()
    inst = sup.start(_spec(tmp_path, "gone", [["ready"], ["ended"], ["serve"]]), wait_ready=False, retry_setup=True)
    _until(lambda: inst.status == "ended", lambda: inst.status)
    with pytest.raises(RuntimeError, match="exited during setup"):
        sup.wait_ready(inst, 1.0)


def test_an_unattended_spec_stays_unattended(make, tmp_path) -> None:
    sup, _ = make()
    inst = sup.start(_spec(tmp_path, "un", SERVE, unattended=True))
    _kill_until_running(inst)
    assert [s["unattended"] for s in _starts(tmp_path, "un")] == [True, True]


def test_sending_to_a_module_that_is_gone_raises_nothing(make, tmp_path) -> None:
    sup, _ = make(RestartPolicy(fast=0, first_s=30.0, cap_s=30.0))
    inst = sup.start(_spec(tmp_path, "gone", SERVE))
    os.kill(inst.pid, signal.SIGKILL)
    _until(lambda: inst.status == "backoff" and inst.conn.closed, lambda: inst.status)
    sup.send(inst, R.GoMsg())  # its pipe is closed: nothing to say it to, no error
    assert sup.update("gone", {"apply": True}, timeout=0.05).applied is False


def test_a_module_dying_with_unread_messages_is_restarted(make, tmp_path) -> None:
    # its end of the pipe is reset (not merely closed) when it dies with messages unread
    sup, rec = make(RestartPolicy(fast=3, first_s=0.1, cap_s=0.1))
    inst = sup.start(_spec(tmp_path, "ur", [["ready"], ["deaf"]], SERVE))
    for _ in range(3):
        sup.send(inst, R.GoMsg())
    _kill_until_running(inst)
    assert rec.statuses("ur") == ["running", "restarting", "running"] and inst.restarts == 1


def test_a_module_may_start_processes_of_its_own(make, tmp_path) -> None:
    sup, rec = make()
    sup.start(_spec(tmp_path, "par", [["child"], ["ready"], ["serve"]]))
    assert rec.events == [{"child": 0}]


def test_running_reset_s_forgets_the_back_off(make, tmp_path) -> None:
    policy = RestartPolicy(fast=1, window_s=60.0, first_s=0.1, cap_s=1.0, reset_s=0.4)
    sup, rec = make(policy)
    inst = sup.start(_spec(tmp_path, "r", SERVE))
    _kill_until_running(inst)
    _kill_until_running(inst)  # the second crash in the window backs off
    assert inst.backoffs == 1 and len(rec.named("module_backoff")) == 1
    _until(lambda: inst.backoffs == 0, lambda: inst.backoffs, timeout=2.0)  # ran reset_s
    assert time.monotonic() - inst.running_since >= policy.reset_s
    _kill_until_running(inst)  # forgotten: at once again, then first_s again (not doubled)
    assert len(rec.named("module_backoff")) == 1 and inst.backoffs == 0
    _kill_until_running(inst)
    assert [e["backoff_s"] for e in rec.named("module_backoff")] == [0.1, 0.1]


def test_running_less_than_reset_s_forgets_nothing(make, tmp_path) -> None:
    # a crash older than the window no longer counts, but one back-off makes every later crash
    # wait until the module has run reset_s
    policy = RestartPolicy(fast=1, window_s=0.3, first_s=0.1, cap_s=1.0, reset_s=20.0)
    sup, rec = make(policy)
    inst = sup.start(_spec(tmp_path, "w", SERVE))
    _kill_until_running(inst)
    time.sleep(0.35)  # that crash leaves the window
    _kill_until_running(inst)
    assert not rec.named("module_backoff")
    _kill_until_running(inst)  # the second within the window
    time.sleep(0.6)  # out of the window again, and a few supervisor ticks (a reset happens on one)
    assert inst.backoffs == 1
    _kill_until_running(inst)
    assert [e["backoff_s"] for e in rec.named("module_backoff")] == [0.1, 0.2] and inst.restarts == 4


def test_stop_gives_a_module_deaf_to_it_a_sigterm_and_its_grace(make, tmp_path) -> None:
    # it ignores the stop message (stuck in a call past its deadline: stopping, so not "hung")
    # and takes 1.2 s to shut down on SIGTERM: within the 2 s grace, it is not killed
    sup, rec = make()
    inst = sup.start(_spec(tmp_path, "slow", [["term", 0, 1.2], ["ready"], ["serve"]],
                           hang_timeout=0.05, cfg={"on_stop": "hang"}))
    sup.stop("slow", timeout=0.4)
    assert inst.proc.exitcode == 0 and inst.hung is None and inst.error is None
    assert not rec.named("module_hung")


def test_stop_kills_a_module_that_ignores_sigterm_after_2_s(make, tmp_path) -> None:
    sup, _ = make()
    inst = sup.start(_spec(tmp_path, "stub", [["ignore_term"], ["ready"], ["deaf"]]))
    t0 = time.monotonic()
    sup.stop("stub", timeout=0.1)
    took = time.monotonic() - t0
    assert not inst.proc.is_alive() and inst.proc.exitcode == -signal.SIGKILL
    assert 2.05 <= took < 2.0 + budget(0.9), took  # the 2 s grace, then at once (load-scaled)


def test_a_supervisor_never_closed_does_not_keep_its_process_alive() -> None:
    code = ("from agent.supervisor import Supervisor\n"
            "Supervisor(lambda *a: None, lambda *a: None, lambda *a: None)\n")
    # (the forkserver it warms up inherits no pipe of ours: we wait for the process alone)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=10,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert r.returncode == 0
