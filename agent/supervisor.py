"""Module processes: start, watch, restart (never giving up, with back-off), stop.

One ``Instance`` per running module process. A reader thread waits on every instance's pipe and
process sentinel at once and turns what arrives into callbacks on the agent. A module that dies
unexpectedly is restarted with the same spec: at once, up to ``MAX_RESTARTS`` times in
``RESTART_WINDOW_S``; after that with exponential back-off (``BACKOFF_FIRST_S`` doubling up to
``BACKOFF_CAP_S``, status ``backoff``), forever, like Kubernetes' CrashLoopBackOff: a crash loop
must not eat the board's CPU, and a transient fault (a camera rebooting, a server slow to start,
a full disk) must not end an app until a person acts. Once a module has run ``BACKOFF_RESET_S``
the back-off starts again from the beginning.

A setup failure at deploy time is refused at once (the operator is there to see it). With
``retry_setup`` (the agent restoring its desired state at boot), or once a module has run, a
setup failure is retried with back-off like a crash.
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

from edgeva.agent.dataplane.ring import producer_pid
from edgeva.agent.dataplane.segment import pid_alive, unlink_segment
from edgeva.agent.heartbeat import Heartbeat
from edgeva.agent.jsonsafe import UnsafeValue, json_safe
from edgeva.agent.settings import default
from edgeva.schemas import runner as R

log = logging.getLogger("edgeva.supervisor")
MAX_RESTARTS = 5  # restarts at once within RESTART_WINDOW_S, before back-off
RESTART_WINDOW_S = 60.0
BACKOFF_FIRST_S: float = default("restart_backoff_first")  # --restart-backoff-first
BACKOFF_CAP_S: float = default("restart_backoff_cap")  # --restart-backoff-cap
BACKOFF_RESET_S = 120.0  # running this long forgets earlier crashes
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
WATCH_EVERY_S = 0.25  # watchdog period: detection lands within deadline + this (+ kill, restart)


def _context() -> mp.context.BaseContext:
    # forkserver: cheap starts with numpy/cv2 preloaded, and no inherited MQTT socket (the
    # server process is started fresh, not forked from the agent).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "cv2", "msgpack", "pydantic", "edgeva.agent.runner"])
        return ctx
    return mp.get_context("spawn")


def _warm_up() -> None:
    # The forkserver starts on the first module start and then imports numpy, cv2 and the
    # runner (1-2 s of CPU, more on a small board): pay that at agent start, not in a deploy.
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        forkserver.ensure_running()


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a module that dies (``edgeva agent --restart-*`` flags):
    ``fast`` restarts at once within ``window_s``, then waits ``first_s`` doubling up to
    ``cap_s``, forever; ``reset_s`` of running forgets the back-off."""

    fast: int = MAX_RESTARTS
    window_s: float = RESTART_WINDOW_S
    first_s: float = BACKOFF_FIRST_S
    cap_s: float = BACKOFF_CAP_S
    reset_s: float = BACKOFF_RESET_S

    def delay(self, backoffs: int) -> float:
        """The wait before the start after ``backoffs`` earlier waits."""
        return min(self.cap_s, self.first_s * 2 ** min(backoffs, 40))


@dataclass
class Instance:
    """A supervised module process."""

    spec: R.RunnerSpec
    proc: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    status: str = "starting"  # starting | running | restarting | backoff | stopped | failed | ended
    ring: str | None = None
    slot_size: int = 0
    live: bool = False
    info: dict[str, str] = field(default_factory=dict)  # what it said of itself when ready
    error: str | None = None
    restarts: int = 0
    restart_times: deque = field(default_factory=lambda: deque(maxlen=64))
    ready: threading.Event = field(default_factory=threading.Event)
    updated: threading.Event = field(default_factory=threading.Event)
    update_result: R.UpdatedMsg | None = None
    last_metrics: R.MetricsMsg | None = None
    proc_history: deque = field(default_factory=lambda: deque(maxlen=3600))  # [p50, p95] per report
    stopping: bool = False
    bad_messages: int = 0  # pipe messages refused (invalid, or an event with no JSON form)
    heartbeat: Heartbeat | None = None  # written by its runner, read by the watchdog
    hung: dict | None = None  # where the watchdog found it stuck (until it is restarted)
    retry_setup: bool = False  # a setup failure is retried with back-off, not final
    ran: bool = False  # has been running at least once
    running_since: float | None = None  # monotonic, while running
    backoffs: int = 0  # back-off waits since it last ran BACKOFF_RESET_S
    backoff_s: float = 0.0  # the current wait, while in back-off
    next_attempt: float | None = None  # monotonic time of the next start, while in back-off
    next_attempt_ts: float | None = None  # the same as unix time, for state and events

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
        restart: RestartPolicy | None = None,
    ) -> None:
        self.ctx = _context()
        self.restart = restart or RestartPolicy()
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
    def start(self, spec: R.RunnerSpec, wait_ready: bool = True, timeout: float = READY_TIMEOUT_S,
              retry_setup: bool = False) -> Instance:
        """Start a module process; with ``wait_ready``, return once it is running or raise
        ``RuntimeError`` with the module's reason (setup failure, crash, timeout). With
        ``retry_setup`` (restoring at boot) a setup failure is not raised: the module goes to
        ``backoff`` and is started again later, and this returns once it is running or waiting."""
        inst = Instance(spec, retry_setup=retry_setup)
        with self._lock:
            self.instances[spec.name] = inst
            self._spawn(inst)
        if wait_ready:
            self.wait_ready(inst, timeout)
        return inst

    def _spawn(self, inst: Instance) -> None:
        from edgeva.agent.runner import run_module

        parent, child = self.ctx.Pipe()
        if (inst.ran or inst.retry_setup) and not inst.spec.unattended:
            # Nobody waits on this start: a source waits for its input rather than failing.
            inst.spec = inst.spec.model_copy(update={"unattended": True})
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
        if inst.status == "backoff" and inst.retry_setup:
            return  # retried later; the caller goes on without it
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
            self._close_pipe(inst.conn)
        self._reclaim_ring(inst)
        self._wake()

    @staticmethod
    def _reclaim_ring(inst: Instance) -> None:
        """A module stopped while dead (in back-off after a SIGKILL or a crash) never closed its
        ring: remove it when its producer is gone, or it stays in /dev/shm until the next start."""
        owner = producer_pid(inst.spec.output_ring)
        if owner is not None and not pid_alive(owner):
            unlink_segment(inst.spec.output_ring)

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
                if inst.proc is not None and inst.status not in ("failed", "ended", "backoff"):
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
            self._backoff_tick()

    def _backoff_tick(self) -> None:
        """Start the modules whose back-off wait is over; forget the back-off of those that have
        run long enough."""
        now = time.monotonic()
        with self._lock:
            for inst in list(self.instances.values()):
                if inst.status == "backoff" and inst.next_attempt is not None and now >= inst.next_attempt:
                    inst.status, inst.next_attempt, inst.next_attempt_ts = "restarting", None, None
                    inst.restarts += 1
                    log.warning("module %s: back-off over, restart %d", inst.name, inst.restarts)
                    self._respawn(inst)
                    self._changed(inst)
                elif (inst.status == "running" and inst.backoffs and inst.running_since is not None
                      and now - inst.running_since >= self.restart.reset_s):
                    inst.backoffs, inst.backoff_s = 0, 0.0
                    inst.restart_times.clear()

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
            self._close_pipe(conn)

    def _close_pipe(self, conn: Connection) -> None:
        # The reader (at the pipe's end) and stop() can close the same pipe at once, and
        # Connection.close is not thread-safe: the loser would close its fd number again (seen as
        # EBADF), or close whatever another thread has opened with that number since.
        with self._lock:
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
            inst.ring, inst.slot_size, inst.live, inst.info = msg.ring, msg.slot_size, msg.live, msg.info
            recovered = inst.backoffs > 0
            inst.status, inst.error = "running", None
            inst.ran, inst.running_since = True, time.monotonic()
            inst.ready.set()
            if recovered:
                self._event(inst, {"event": "module_recovered", "module": inst.name, "restarts": inst.restarts})
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
        # Its sentinel fired, so it is exiting. With forkserver the exit code comes with the
        # sentinel; with spawn or fork the sentinel is a pipe the child closes a moment before it
        # can be reaped, and join(0) would leave exitcode None (an exit 0 taken for a crash).
        proc.join(1.0)
        if inst.conn is not None and not inst.conn.closed:
            self._drain(inst, inst.conn)  # its last words (failure reason, final metrics)
        if inst.stopping or inst.status == "stopped":
            return
        code = proc.exitcode
        if inst.status == "ended" or (code == 0 and inst.status == "running"):
            inst.status = "ended"
            self._changed(inst)
            return
        inst.running_since = None
        if code == R.EXIT_RESTART and inst.status == "running":
            # The module asked to be set up again (its source came back in another mode): at
            # once, and not a crash.
            inst.restarts += 1
            inst.status = "restarting"
            log.info("module %s restarts as it asked: %s", inst.name, inst.error)
            self._changed(inst)
            self._respawn(inst)
            return
        if inst.status in ("starting", "restarting") and not (inst.ran or inst.retry_setup):
            # Died before ready at deploy time: refused at once, the operator sees why.
            inst.status = "failed"
            inst.error = inst.error or f"exited with code {code} during setup"
            inst.ready.set()
            self._changed(inst)
            return
        now = time.monotonic()
        recent = [t for t in inst.restart_times if now - t < self.restart.window_s]
        why = "hung" if inst.hung else ("crashed" if inst.status == "running" else "failed in setup")
        reason = f"{why} ({inst.error})" if inst.error else f"{why} (exit code {code})"
        if inst.status == "starting" or inst.backoffs or len(recent) >= self.restart.fast:
            # A setup failure (a camera still down) or a crash loop: wait, longer each time.
            self._back_off(inst, reason)
            self._hung_event(inst, restarted=False)
            return
        inst.restart_times.append(now)
        inst.restarts += 1
        inst.status = "restarting"
        log.warning("module %s %s (exit code %s); restart %d", inst.name, why, code, inst.restarts)
        self._hung_event(inst, restarted=True)
        self._changed(inst)
        self._respawn(inst)

    def _respawn(self, inst: Instance) -> None:
        with self._lock:
            if self.instances.get(inst.name) is inst:
                if inst.conn is not None:
                    inst.conn.close()
                self._spawn(inst)

    def _back_off(self, inst: Instance, reason: str) -> None:
        delay = self.restart.delay(inst.backoffs)
        inst.backoffs += 1
        inst.status, inst.error, inst.backoff_s = "backoff", reason[:600], delay
        inst.next_attempt, inst.next_attempt_ts = time.monotonic() + delay, time.time() + delay
        log.error("module %s: %s; restart %d in %.0f s (back-off)", inst.name, reason, inst.restarts + 1, delay)
        inst.ready.set()  # a retry_setup start waits no longer
        self._event(inst, {"event": "module_backoff", "module": inst.name, "error": inst.error,
                           "restarts": inst.restarts, "backoff_s": delay, "next_attempt_ts": inst.next_attempt_ts})
        self._changed(inst)

    def _event(self, inst: Instance, event: dict) -> None:
        try:
            self.on_event(inst, event)
        except Exception:
            self.callback_errors += 1
            log.exception("module %s: %s event callback failed", inst.name, event.get("event"))

    def _hung_event(self, inst: Instance, restarted: bool) -> None:
        """Tell the apps using a module that the watchdog killed it, and where it was stuck."""
        if not inst.hung:
            return
        self._event(inst, {"event": "module_hung", "module": inst.name, **inst.hung, "restarted": restarted,
                           "restarts": inst.restarts})
