"""Module processes: start, watch, restart (rate-limited), stop.

One ``Instance`` per running module process. A reader thread waits on every instance's pipe and
process sentinel at once and turns what arrives into callbacks on the agent. A module that dies
unexpectedly is restarted with the same spec, at most ``MAX_RESTARTS`` times in
``RESTART_WINDOW_S`` (then it is marked failed): a crash loop must not eat the board's CPU.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import msgpack
from pydantic import ValidationError

from agent.heartbeat import Heartbeat
from agent.jsonsafe import UnsafeValue, json_safe
from schemas import runner as R

log = logging.getLogger("edgeva.supervisor")
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
WATCH_EVERY_S = 0.25  # watchdog period: detection lands within deadline + this (+ kill, restart)


def _context() -> mp.context.BaseContext:
    # forkserver: cheap starts with numpy/cv2 preloaded, and no inherited MQTT socket (the
    # server process is started fresh, not forked from the agent).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "cv2", "msgpack", "pydantic", "agent.runner"])
        return ctx
    return mp.get_context("spawn")


def _warm_up() -> None:
    # The forkserver starts on the first module start and then imports numpy, cv2 and the
    # runner (1-2 s of CPU, more on a small board): pay that at agent start, not in a deploy.
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        forkserver.ensure_running()


@dataclass
class Instance:
    """A supervised module process."""

    spec: R.RunnerSpec
    proc: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    status: str = "starting"  # starting | running | restarting | stopped | failed | ended
    ring: str | None = None
    slot_size: int = 0
    live: bool = False
    error: str | None = None
    restarts: int = 0
    restart_times: deque = field(default_factory=lambda: deque(maxlen=MAX_RESTARTS))
    ready: threading.Event = field(default_factory=threading.Event)
    updated: threading.Event = field(default_factory=threading.Event)
    update_result: R.UpdatedMsg | None = None
    last_metrics: R.MetricsMsg | None = None
    proc_history: deque = field(default_factory=lambda: deque(maxlen=3600))  # [p50, p95] per report
    stopping: bool = False
    bad_messages: int = 0  # pipe messages refused (invalid, or an event with no JSON form)
    heartbeat: Heartbeat | None = None  # written by its runner, read by the watchdog
    hung: dict | None = None  # where the watchdog found it stuck (until it is restarted)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts module processes and reports what they say through callbacks:
    ``on_event(inst, event)``, ``on_metrics(inst, msg)``, ``on_change(inst)`` (status)."""

    def __init__(
        self,
        on_event: Callable[[Instance, dict], None],
        on_metrics: Callable[[Instance, R.MetricsMsg], None],
        on_change: Callable[[Instance], None],
    ) -> None:
        self.ctx = _context()
        self.on_event, self.on_metrics, self.on_change = on_event, on_metrics, on_change
        self.instances: dict[str, Instance] = {}
        self._lock = threading.RLock()
        self._wake_r, self._wake_w = self.ctx.Pipe(duplex=False)
        self._closed = False
        self.callback_errors = 0  # exceptions the agent's callbacks raised (logged, survived)
        self._next_watch = 0.0
        self._thread = threading.Thread(target=self._read_loop, name="supervisor", daemon=True)
        self._thread.start()
        threading.Thread(target=_warm_up, name="forkserver-warm-up", daemon=True).start()

    # -- starting and stopping --------------------------------------------------------------------
    def start(self, spec: R.RunnerSpec, wait_ready: bool = True, timeout: float = READY_TIMEOUT_S) -> Instance:
        """Start a module process; with ``wait_ready``, return once it is running or raise
        ``RuntimeError`` with the module's reason (setup failure, crash, timeout)."""
        inst = Instance(spec)
        with self._lock:
            self.instances[spec.name] = inst
            self._spawn(inst)
        if wait_ready:
            self.wait_ready(inst, timeout)
        return inst

    def _spawn(self, inst: Instance) -> None:
        from agent.runner import run_module

        parent, child = self.ctx.Pipe()
        inst.heartbeat, inst.hung = Heartbeat.create(self.ctx), None
        proc = self.ctx.Process(
            target=run_module, args=(inst.spec.model_dump_json(), child, inst.heartbeat.w),
            name=f"edgeva:{inst.name}", daemon=False,
        )
        inst.ready.clear()
        proc.start()
        child.close()
        inst.proc, inst.conn = proc, parent
        self._wake()

    def wait_ready(self, inst: Instance, timeout: float = READY_TIMEOUT_S) -> None:
        if not inst.ready.wait(timeout):
            self.stop(inst.name)
            raise RuntimeError(f"module {inst.name} did not become ready within {timeout:.0f}s")
        if inst.status != "running":
            raise RuntimeError(inst.error or f"module {inst.name} exited during setup")

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask a module to stop (it closes its rings), then terminate/kill if it lingers."""
        with self._lock:
            inst = self.instances.pop(name, None)
        if inst is None or inst.proc is None:
            return
        inst.stopping = True
        self.send(inst, R.StopMsg())
        inst.proc.join(timeout)
        if inst.proc.is_alive():
            inst.proc.terminate()
            inst.proc.join(2)
        if inst.proc.is_alive():
            inst.proc.kill()
            inst.proc.join(2)
        inst.status = "stopped"
        if inst.conn is not None:
            inst.conn.close()
        self._wake()

    def send(self, inst: Instance, msg) -> None:
        try:
            if inst.conn is not None:
                inst.conn.send_bytes(msgpack.packb(msg.model_dump(), use_bin_type=True))
        except (BrokenPipeError, OSError):
            pass

    def update(self, name: str, config: dict, timeout: float = 10.0) -> R.UpdatedMsg:
        """Send new args to a running module; returns whether it applied them in place."""
        inst = self.instances[name]
        inst.updated.clear()
        self.send(inst, R.UpdateMsg(config=config))
        if not inst.updated.wait(timeout):
            return R.UpdatedMsg(applied=False, message=f"no answer within {timeout:.0f}s")
        return inst.update_result or R.UpdatedMsg(applied=False)

    def close(self) -> None:
        """Stop every module, downstream first is not needed: each drains or stops on its own."""
        for name in list(self.instances):
            self.stop(name)
        self._closed = True
        self._wake()
        self._thread.join(2)

    # -- watching ---------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass

    def _read_loop(self) -> None:
        # The one thread that sees every module: readiness, restarts and metrics all stop if
        # it dies, so nothing a module sends (or a callback raises) may end it.
        while not self._closed:
            try:
                self._read_once()
            except Exception:
                log.exception("supervisor: reader survived an unexpected error")
                time.sleep(0.1)  # not a hot loop if the error repeats

    def _read_once(self) -> None:
        with self._lock:
            watch: dict = {self._wake_r: None}
            for inst in self.instances.values():
                if inst.conn is not None and not inst.conn.closed:
                    watch[inst.conn] = inst
                if inst.proc is not None and inst.status not in ("failed", "ended"):
                    watch[inst.proc.sentinel] = inst
        for ready in wait(list(watch), timeout=WATCH_EVERY_S):
            if ready is self._wake_r:
                self._wake_r.recv_bytes()
                continue
            inst = watch[ready]
            if isinstance(ready, Connection):
                self._drain(inst, ready)
            else:
                self._exited(inst)
        if time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + WATCH_EVERY_S
            self._watchdog()

    def _watchdog(self) -> None:
        """Kill every running module whose heartbeat says it is stuck in one call past its
        ``hang_timeout``; its exit then goes the crash way (restart, same rate limit)."""
        with self._lock:
            insts = list(self.instances.values())
        for inst in insts:
            hb, proc = inst.heartbeat, inst.proc
            if inst.status != "running" or inst.stopping or inst.hung or hb is None or proc is None:
                continue
            stuck = hb.stuck(inst.spec.hang_timeout)
            if stuck is None:
                continue
            inst.hung = stuck
            where = stuck["where"] + (f" (frame {stuck['frame_id']})" if "frame_id" in stuck else "")
            inst.error = f"hung: {stuck['stuck_s']:.1f} s in {where}, deadline {stuck['deadline_s']:g} s; killed"
            log.error("module %s %s", inst.name, inst.error)
            proc.kill()  # SIGKILL also ends a SIGSTOPped process; its sentinel brings us to _exited

    def _drain(self, inst: Instance, conn: Connection) -> None:
        try:
            while conn.poll():
                raw = conn.recv_bytes()
                try:
                    msg = R.FROM_RUNNER.validate_python(msgpack.unpackb(raw, raw=False))
                    if isinstance(msg, R.EventMsg):
                        msg.event = json_safe(msg.event)
                except (ValidationError, ValueError, TypeError, UnsafeValue) as e:
                    inst.bad_messages += 1
                    if inst.bad_messages == 1 or inst.bad_messages % 1000 == 0:  # not per message
                        log.warning("module %s sent an invalid message (%d so far): %s",
                                    inst.name, inst.bad_messages, str(e)[:300])
                    continue
                try:
                    self._handle(inst, msg)
                except Exception:
                    self.callback_errors += 1
                    log.exception("module %s: handling its %s message failed", inst.name, msg.op)
        except (EOFError, OSError):
            conn.close()

    def _handle(self, inst: Instance, msg) -> None:
        if isinstance(msg, R.EventMsg):
            self.on_event(inst, msg.event)
        elif isinstance(msg, R.MetricsMsg):
            inst.last_metrics = msg
            if msg.proc_ms:
                inst.proc_history.append(msg.proc_ms)
            self.on_metrics(inst, msg)
        elif isinstance(msg, R.ReadyMsg):
            inst.ring, inst.slot_size, inst.live = msg.ring, msg.slot_size, msg.live
            inst.status, inst.error = "running", None
            inst.ready.set()
            self.on_change(inst)
        elif isinstance(msg, R.FailedMsg):
            inst.error = f"{msg.stage}: {msg.message}"
            log.warning("module %s failed in %s: %s", inst.name, msg.stage, msg.message)
        elif isinstance(msg, R.UpdatedMsg):
            inst.update_result = msg
            inst.updated.set()
        elif isinstance(msg, R.EndedMsg):
            inst.status = "ended"
            self.on_change(inst)

    def _changed(self, inst: Instance) -> None:
        # A failing callback must not leave a restart half done (status set, process not spawned).
        try:
            self.on_change(inst)
        except Exception:
            self.callback_errors += 1
            log.exception("module %s: status callback failed", inst.name)

    def _exited(self, inst: Instance) -> None:
        proc = inst.proc
        proc.join(0)
        if inst.conn is not None and not inst.conn.closed:
            self._drain(inst, inst.conn)  # its last words (failure reason, final metrics)
        if inst.stopping or inst.status == "stopped":
            return
        code = proc.exitcode
        if inst.status == "ended" or (code == 0 and inst.status == "running"):
            inst.status = "ended"
            self._changed(inst)
            return
        if inst.status == "starting":
            # Died before ready: a setup failure is not worth retrying automatically.
            inst.status = "failed"
            inst.error = inst.error or f"exited with code {code} during setup"
            inst.ready.set()
            self._changed(inst)
            return
        now = time.monotonic()
        recent = [t for t in inst.restart_times if now - t < RESTART_WINDOW_S]
        why = "hung" if inst.hung else "crashed"
        if len(recent) >= MAX_RESTARTS:
            inst.status = "failed"
            inst.error = (f"{why} ({inst.error})" if inst.hung else why) + (
                f"; {MAX_RESTARTS} restarts in {RESTART_WINDOW_S:.0f}s already (last exit code {code}); not restarted")
            log.error("module %s: %s", inst.name, inst.error)
            self._hung_event(inst, restarted=False)
            self._changed(inst)
            return
        inst.restart_times.append(now)
        inst.restarts += 1
        inst.status = "restarting"
        log.warning("module %s %s (exit code %s); restart %d", inst.name, why, code, inst.restarts)
        self._hung_event(inst, restarted=True)
        self._changed(inst)
        with self._lock:
            if self.instances.get(inst.name) is inst:
                if inst.conn is not None:
                    inst.conn.close()
                self._spawn(inst)

    def _hung_event(self, inst: Instance, restarted: bool) -> None:
        """Tell the apps using a module that the watchdog killed it, and where it was stuck."""
        if not inst.hung:
            return
        event = {"event": "module_hung", "module": inst.name, **inst.hung, "restarted": restarted,
                 "restarts": inst.restarts}
        try:
            self.on_event(inst, event)
        except Exception:
            self.callback_errors += 1
            log.exception("module %s: hung event callback failed", inst.name)
