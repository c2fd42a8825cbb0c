"""The body of one module process: attach rings, run the module's lifecycle, report.

Started by the supervisor (``forkserver``/``spawn``, never a bare fork: a forked child would keep
the agent's MQTT socket open and the broker would never publish its last will). The module sees
only messages and its config; this file does the routing, hop timestamps, metrics, control
(update/stop) and reconnection to an upstream that was restarted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection

import msgpack
import numpy as np
from pydantic import ValidationError

from edgeva.agent.dataplane.codec import CodecError
from edgeva.agent.dataplane.ring import (
    RingConsumer,
    RingError,
    RingFull,
    RingProducer,
    producer_pid,
)
from edgeva.agent.dataplane.segment import SegmentError, pid_alive, unlink_segment
from edgeva.agent.heartbeat import PACE, PROCESS, PRODUCE, Heartbeat
from edgeva.modules.base import NO_FRAME, Module, ModuleContext, ModuleError, Restart
from edgeva.modules.registry import module_class
from edgeva.schemas import runner as R
from edgeva.schemas.message import Message

log = logging.getLogger("edgeva.runner")
CONTROL_EVERY_S = 0.05
META_SLOT = 1 << 20  # modules that only add metadata
SAMPLES = 4096
BATCH_WAIT_S = 0.005  # how long a batch waits for a message already pending on another input
# Overload with a live source: a drop_oldest input keeps at most this many messages pending, so
# a stage that cannot keep up always takes the newest frame when it is free, the skipped ones
# are counted as dropped (the ring's counter, per consumer), and latency stays within about two
# of its own frame periods instead of a ring's worth of queued frames.
LIVE_DEPTH = 1


def _die_with_parent() -> None:
    # If the agent (or the forkserver between us) dies, do not run on as an orphan.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # A forkserver lives until every holder of its "alive" pipe is gone, and each child gets a
    # copy: without this, the server (our parent) outlives a SIGKILLed agent and so do we.
    try:
        from multiprocessing import forkserver

        fd = forkserver._forkserver._forkserver_alive_fd
        if fd is not None:
            os.close(fd)
            forkserver._forkserver._forkserver_alive_fd = None
    except (AttributeError, OSError):
        pass


class _Channel:
    """Typed, msgpack-encoded messages over the pipe to the agent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # module threads may emit events
        self.eof = False

    def send(self, msg) -> None:
        data = msgpack.packb(msg.model_dump(), use_bin_type=True)
        with self.lock:
            try:
                self.conn.send_bytes(data)
            except (BrokenPipeError, OSError):
                pass  # the agent is gone; PDEATHSIG or the next poll ends us

    def poll(self):
        """The next command from the agent, None if there is none, or StopMsg on EOF."""
        if self.eof:
            return None
        try:
            if not self.conn.poll():
                return None
            return R.TO_RUNNER.validate_python(msgpack.unpackb(self.conn.recv_bytes(), raw=False))
        except (EOFError, OSError):
            self.eof = True  # the agent is gone: stop (once)
            return R.StopMsg()


class _Stats:
    """Preallocated per-interval samples: no per-frame allocation."""

    def __init__(self) -> None:
        self.frames_in = self.frames_out = 0
        self.refused = 0  # input messages process() refused with ModuleError (cumulative)
        self.proc = np.zeros(SAMPLES)
        self.nproc = 0
        self.sink: list[tuple[int, str, float, float]] = []

    def add_proc(self, ms: float) -> None:
        self.proc[self.nproc % SAMPLES] = ms
        self.nproc += 1

    def report(self) -> R.MetricsMsg:
        n = min(self.nproc, SAMPLES)
        pct = [float(x) for x in np.percentile(self.proc[:n], (50, 95))] if n else []
        msg = R.MetricsMsg(frames_in=self.frames_in, frames_out=self.frames_out, proc_ms=pct, sink=self.sink)
        self.nproc, self.sink = 0, []
        return msg


class _Input:
    """One upstream ring; re-attaches when its producer is restarted."""

    def __init__(self, spec: R.InputSpec) -> None:
        self.spec = spec
        self.cons = self._attach(timeout=10.0)

    def _attach(self, timeout: float) -> RingConsumer:
        deadline = time.monotonic() + timeout
        depth = self.spec.depth
        if depth is None and self.spec.policy == "drop_oldest":
            depth = LIVE_DEPTH  # newest frame first (see LIVE_DEPTH); an explicit depth wins
        while True:
            try:
                return RingConsumer.attach(self.spec.ring, policy=self.spec.policy, depth=depth)
            except RingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, timeout: float) -> Message | None:
        msg = self.cons.get(timeout=timeout)
        if msg is None and not self.cons.eof and not self.cons.producer_alive():
            self._reattach()
        return msg

    def _reattach(self) -> None:
        # The upstream crashed; its supervisor starts a new one under the same ring name.
        pid = producer_pid(self.spec.ring)
        if pid is not None and pid_alive(pid):
            self.cons.close()
            self.cons = self._attach(timeout=1.0)
            log.info("re-attached to restarted upstream %s", self.spec.ring)

    def get_many(self, timeout: float, most: int) -> list[Message]:
        msg = self.get(timeout)
        return [] if msg is None else [msg]

    @property
    def eof(self) -> bool:
        return self.cons.eof

    def close(self) -> None:
        self.cons.close()


class _Merged:
    """Several inputs: one thread per ring hands messages over one at a time, so each view
    stays valid until the module is done with it."""

    def __init__(self, inputs: list[_Input]) -> None:
        self.inputs = inputs
        self.q: queue.Queue = queue.Queue()
        self.done = [threading.Event() for _ in inputs]
        self.stop = False
        self.held: list[int] = []  # inputs whose message get_many handed out
        self.threads = [threading.Thread(target=self._pump, args=(i,), daemon=True) for i in range(len(inputs))]
        for t in self.threads:
            t.start()

    def _pump(self, i: int) -> None:
        inp = self.inputs[i]
        while not self.stop:
            msg = inp.get(timeout=0.2)
            if msg is None:
                if inp.eof:
                    self.q.put((i, None))
                    return
                continue
            self.q.put((i, msg))
            self.done[i].wait()
            self.done[i].clear()

    def get_many(self, timeout: float, most: int) -> list[Message]:
        """What is waiting now, up to ``most`` messages of distinct inputs (after waiting up
        to ``timeout`` for the first); all stay valid until the next call."""
        for i in self.held:
            self.done[i].set()
        self.held = []
        out: list[Message] = []
        try:
            i, msg = self.q.get(timeout=timeout)
        except queue.Empty:
            return out
        # A just-released input's thread needs a moment to hand over its next message: wait
        # for it (briefly) only if its ring really has one pending.
        deadline = time.monotonic() + BATCH_WAIT_S
        while True:
            if msg is not None:
                self.held.append(i)
                out.append(msg)
            if len(out) >= most:
                return out
            try:
                i, msg = self.q.get_nowait()
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not any(
                j not in self.held and inp.cons.pending > 0 for j, inp in enumerate(self.inputs)
            ):
                return out
            try:
                i, msg = self.q.get(timeout=left)
            except queue.Empty:
                return out

    @property
    def eof(self) -> bool:
        return all(i.eof for i in self.inputs)

    def close(self) -> None:
        self.stop = True
        self.held = []
        for e in self.done:
            e.set()
        for t in self.threads:  # they leave their get() within its timeout; then close the rings
            t.join(2)
        for i in self.inputs:
            i.close()


class Runner:
    """Hosts one module instance."""

    def __init__(self, spec: R.RunnerSpec, chan: _Channel, heartbeat: Heartbeat | None = None) -> None:
        self.spec = spec
        self.hb = heartbeat or Heartbeat()  # the supervisor's watchdog reads it
        self.chan = chan
        self.stopping = False
        self.stats = _Stats()
        self.sinks = set(spec.sink_for)
        self.next_report = time.monotonic() + spec.metrics_interval
        self.next_control = 0.0
        self.cls = module_class(spec.type)
        self.config = self.cls.config_class.model_validate(spec.config)
        self.ctx = ModuleContext(
            name=spec.name, apps=tuple(spec.apps), device=spec.device, emit=self._emit,
            log=logging.getLogger(f"edgeva.module.{spec.name}"), unattended=spec.unattended,
        )
        self.module: Module = self.cls(self.config, self.ctx)
        self.inputs: list[_Input] = []
        self.source = None
        self.prod: RingProducer | None = None
        self.ended = False  # the stream ended by itself (vs. stopped by the agent)
        self.held = spec.hold

    def _emit(self, event: dict) -> None:
        self.chan.send(R.EventMsg(event=event))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> bool:
        try:
            self.module.setup()
        except Exception as e:  # the module's own words are the best reason
            self.chan.send(R.FailedMsg(stage="setup", message=f"{type(e).__name__}: {e}"))
            return False
        try:
            self.inputs = [_Input(i) for i in self.spec.inputs]
            sizes = [i.cons.slot_size for i in self.inputs]
            size = self.module.output_bytes() or (max(sizes) + 262144 if sizes else META_SLOT)
            self.prod = self._create_output(size)
        except (RingError, SegmentError) as e:
            self.chan.send(R.FailedMsg(stage="attach", message=str(e)))
            return False
        self.source = self.inputs[0] if len(self.inputs) == 1 else _Merged(self.inputs) if self.inputs else None
        self.chan.send(R.ReadyMsg(ring=self.prod.name, slot_size=self.prod.slot_size, live=self._live(),
                                  info=self.module.describe()))
        return True

    def _live(self) -> bool:
        """Whether this module's output is a live stream: a live source, or a module fed live
        (drop_oldest). Live propagates down the graph, so that whichever stage is the slowest
        skips to the newest frame rather than back-pressuring a stage that drops into a queue."""
        return bool(self.module.live) or any(i.policy == "drop_oldest" for i in self.spec.inputs)

    def _create_output(self, size: int) -> RingProducer:
        try:
            return RingProducer.create(self.spec.output_ring, size, nslots=self.spec.nslots)
        except SegmentError:
            # Left by this instance's previous life (crash, SIGKILL): reclaim it if dead.
            # Anything else (no segment: the error was not a leftover; a live owner) stands.
            owner = producer_pid(self.spec.output_ring)
            if owner is None or pid_alive(owner):
                raise
            unlink_segment(self.spec.output_ring)
            return RingProducer.create(self.spec.output_ring, size, nslots=self.spec.nslots)

    def run(self) -> int:
        try:
            if self.module.is_source:
                self._run_source()
            else:
                self._run_filter()
            return 0
        except Restart as e:  # the module asks to be set up again: not a crash
            log.info("module %s asks for a restart: %s", self.spec.name, e)
            self.chan.send(R.FailedMsg(stage="restart", message=str(e)[:300]))
            return R.EXIT_RESTART
        except Exception as e:
            log.exception("module %s failed", self.spec.name)
            self.chan.send(R.FailedMsg(stage="run", message=f"{type(e).__name__}: {e}"))
            return 1
        finally:
            self._report()
            self.close()

    def _run_source(self) -> None:
        prod, name = self.prod, self.spec.name
        # A source starts once its app is up (the agent says go) and someone listens: the
        # first frame then flows through a ready pipeline instead of queueing behind startups.
        while not self.stopping and (self.held or not prod.consumers):
            time.sleep(0.01)
            self._housekeeping()
        hb = self.hb
        while not self.stopping:
            hb.enter(PACE)
            self.module.pace()
            hb.leave()
            try:
                w = prod.reserve(timeout=0.2)
            except RingFull:
                self._housekeeping()
                continue
            t_in = time.time_ns()
            hb.enter(PRODUCE)
            try:
                msg = self.module.produce(w.alloc)
            except BaseException:
                prod.abort()
                raise
            hb.leave()
            if msg is None:
                prod.abort()
                self.ended = True
                self.chan.send(R.EndedMsg())
                return
            if msg is NO_FRAME:  # a live source reconnecting: stay responsive meanwhile
                prod.abort()
                self._housekeeping()
                continue
            t_out = time.time_ns()
            msg.hops.append([name, t_in, t_out])
            prod.commit(w, msg)
            self._account(msg, t_in, t_out)
            if time.monotonic() >= self.next_control:
                self._housekeeping()

    def _run_filter(self) -> None:
        """Input messages -> ``process`` -> outputs. With several inputs (cameras) and a module
        that batches (``max_batch`` > 1), messages waiting together go to ``process_batch``."""
        src, name = self.source, self.spec.name
        most = self.module.max_batch if isinstance(src, _Merged) else 1
        while not self.stopping:
            msgs = src.get_many(0.1, most)
            if not msgs:
                if src.eof:
                    self.ended = True
                    self.chan.send(R.EndedMsg())
                    return
                self._housekeeping()
                continue
            self.stats.frames_in += len(msgs)
            t_in = time.time_ns()
            self.hb.enter(PROCESS, msgs[0].frame_id)
            try:
                results = self.module.process_batch(msgs) if most > 1 else (self.module.process(msgs[0]),)
            except ModuleError as e:
                # Input this module cannot use (a peer's frame without the array it needs, a
                # wrong upstream): that message is refused and counted; the module goes on.
                self.hb.leave()
                self._refuse(msgs, e)
                continue
            self.hb.leave()
            t_out = time.time_ns()
            for out in results:
                for o in (() if out is None else (out,) if isinstance(out, Message) else out):
                    o.hops.append([name, t_in, t_out])
                    self._publish(o)
                    self.stats.frames_out += 1
            self.stats.add_proc((t_out - t_in) / 1e6 / len(msgs))
            if self.sinks:
                for msg in msgs:
                    self.stats.sink.append((msg.frame_id, msg.source, (t_out - msg.ts_ns) / 1e6, t_out / 1e9))
            if time.monotonic() >= self.next_control:
                self._housekeeping()

    def _refuse(self, msgs: list[Message], err: ModuleError) -> None:
        self.stats.refused += len(msgs)
        if self.stats.refused == len(msgs) or self.stats.refused % 1000 < len(msgs):  # not per frame
            log.warning("module %s refused frame %s (%d refused so far): %s", self.spec.name,
                        msgs[0].frame_id, self.stats.refused, err)
        if time.monotonic() >= self.next_control:
            self._housekeeping()

    def _account(self, msg: Message, t_in: int, t_out: int) -> None:
        st = self.stats
        st.frames_in += 1
        st.frames_out += 1
        st.add_proc((t_out - t_in) / 1e6)
        if self.sinks:
            st.sink.append((msg.frame_id, msg.source, (t_out - msg.ts_ns) / 1e6, t_out / 1e9))

    def _publish(self, msg: Message) -> None:
        while not self.stopping:
            try:
                self.prod.publish(msg, timeout=0.2)
                return
            except RingFull:
                self._housekeeping()  # a block consumer is behind: stay responsive meanwhile

    # -- control -------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.hb.beat()
        self.next_control = now + CONTROL_EVERY_S
        if now >= self.next_report:
            self._report()
            self.next_report = now + self.spec.metrics_interval
        while (cmd := self.chan.poll()) is not None:
            self._command(cmd)

    def _report(self) -> None:
        msg = self.stats.report()
        try:
            msg.counters = {k: float(v) for k, v in self.module.metrics().items()}
        except Exception:  # a module's figures must never take its frames down
            log.exception("module %s: metrics() failed", self.spec.name)
        if self.stats.refused:
            msg.counters["refused_inputs"] = float(self.stats.refused)
        self.chan.send(msg)

    def _command(self, cmd) -> None:
        if isinstance(cmd, R.StopMsg):
            self.stopping = True
        elif isinstance(cmd, R.GoMsg):
            self.held = False
        elif isinstance(cmd, R.FinishMsg):
            if self.module.is_source:
                self.ended = self.stopping = True
        elif isinstance(cmd, R.AppsMsg):
            self.sinks = set(cmd.sink_for)
            self.ctx.apps = tuple(cmd.apps)
        elif isinstance(cmd, R.UpdateMsg):
            try:
                cfg = self.cls.config_class.model_validate(cmd.config)
                applied = bool(self.module.update(cfg))
            except (ValidationError, Exception) as e:  # refuse, keep running the old config
                self.chan.send(R.UpdatedMsg(applied=False, message=f"{type(e).__name__}: {e}"))
                return
            if applied:
                self.module.config = cfg
            self.chan.send(R.UpdatedMsg(applied=applied))

    def close(self) -> None:
        try:
            self.module.close()
        except Exception:
            log.exception("module %s close failed", self.spec.name)
        if self.source is not None:
            self.source.close()
        if self.prod is not None:
            self.prod.close(eof=self.ended)


def run_module(spec_json: str, conn: Connection, heartbeat=None) -> None:
    """Process entry point (the supervisor's target); ``heartbeat``: the shared words of an
    ``agent.heartbeat.Heartbeat`` the supervisor watches."""
    _die_with_parent()
    spec = R.RunnerSpec.model_validate_json(spec_json)
    logging.basicConfig(level=spec.log_level, format=f"%(asctime)s %(levelname)s {spec.name}: %(message)s")
    chan = _Channel(conn)
    try:
        runner = Runner(spec, chan, Heartbeat(heartbeat) if heartbeat is not None else None)
    except (ValidationError, KeyError, ImportError) as e:
        chan.send(R.FailedMsg(stage="setup", message=f"{type(e).__name__}: {e}"))
        raise SystemExit(3) from None

    def _term(*_):
        runner.stopping = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the agent, which stops us
    if not runner.start():
        runner.close()
        raise SystemExit(3)
    try:
        code = runner.run()
    except CodecError as e:
        chan.send(R.FailedMsg(stage="run", message=str(e)))
        code = 1
    raise SystemExit(code)
