"""``edgeva bench hop``: the cost of moving one payload from one process to another.

Method
------
Each case (a transport x a payload) runs in two fresh processes started with ``spawn`` (never
``fork``: no inherited sockets, threads or page tables), plus the parent, which only supervises.
The two children talk over a control socketpair that is never timed.

CPU placement: by default the producer is pinned to one CPU and the consumer to another (the
first two this process may use), with every thread they start (nng's, the link's sender). That
is how pipeline modules run, side by side on their own cores, and it takes the scheduler out of
the comparison: unpinned, the two processes sometimes share a core, where a wake-up is a
context switch (~10 us on a VM) instead of a cross-core interrupt (~40 us), so the same
transport's small-message latency flips between two modes from one run to the next. ``pin=False``
(``--no-pin``) measures unpinned; with fewer than two CPUs nothing is pinned.

1. Handshake: the producer ``prepare``s (e.g. creates the ring), the consumer ``open``s (attaches,
   listens) and answers ``ready`` with what the producer needs (a port); the producer connects.
2. Latency: W warm-up then N timed messages, one at a time. The producer stamps
   ``t0 = perf_counter_ns()`` just before it starts moving the payload (before the memcpy into
   a slot, before pickling or encoding) and ships t0 in the message; the consumer stamps
   ``t1`` as soon as it holds a usable numpy array (or dict), reads its first and last element
   (the same ``touch`` everywhere, never a copy), records ``t1 - t0`` and acks over the control
   socket; only then does the producer send the next one. ``perf_counter_ns`` is
   CLOCK_MONOTONIC on Linux, one clock for all processes, so t1 - t0 is a one-way latency.
   Reported: p50 and p99 in microseconds.
3. Throughput: the producer sends M messages back to back, held back only by the transport's
   own flow control (ring ``block`` policy, queue ``maxsize``, slot credits, TCP/HTTP); the
   consumer receives and touches each. fps = M / (consumer's last t1 - producer's first t0).
   CPU per message: user+sys time (``getrusage``, all threads) of both processes over this
   phase, divided by M. The consumer's one-way latencies in this phase are reported too
   (``load_p50_us``): latency at full rate includes queueing.

Sources are preallocated once and reused, so a transport allocates per message only where its
design inherently does (pickling, ``bytes`` bodies): that is part of what is measured. Frame ids
are checked in order and the touched values against the source, so a transport that loses,
reorders or corrupts data fails instead of looking fast.

Failure handling: every wait in a child has a timeout; the parent waits on both children's
results and process sentinels with a deadline, so a child that dies (segfault, ``os._exit``) or
hangs makes the case fail with a reason, the other child is killed, and ``Transport.cleanup``
still removes shared resources. One failing transport never stops the run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from edgeva.bench.hop import PAYLOADS, ROUNDS
from edgeva.bench.hop.transports import Payload, Transport, transports
from edgeva.bench.hop.transports.base import touch


@dataclass(frozen=True)
class Plan:
    """Sample counts and timeouts of one case."""

    warmup: int
    latency_n: int
    throughput_n: int
    msg_timeout_s: float = 10.0  # one message or ack; a stall longer than this is a failure
    start_timeout_s: float = 60.0  # spawn + imports + handshake, generous for a loaded host
    case_timeout_s: float = 300.0  # backstop for the whole case


def default_plan(kind: str, quick: bool) -> Plan:
    """Sample counts: ``quick`` runs all cases in ~15 s on a busy 2-core machine."""
    if kind == "frame":
        return Plan(10, 150, 300) if quick else Plan(100, 2000, 3000)
    return Plan(30, 400, 1500) if quick else Plan(200, 5000, 20000)


@dataclass
class CaseResult:
    """One row of the report. Times in microseconds; None where the case failed."""

    transport: str
    payload: str
    ok: bool
    error: str | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    fps: float | None = None
    cpu_us: float | None = None
    p50_vs_ring: float | None = None
    load_p50_us: float | None = None
    cpu_producer_us: float | None = None
    cpu_consumer_us: float | None = None
    latency_n: int = 0
    throughput_n: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


# -- children ------------------------------------------------------------------------------


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # process-wide: includes feeder/nng threads
    return r.ru_utime + r.ru_stime


def _expect(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {what} from the peer within {timeout:g} s")
    return conn.recv()  # EOFError if the peer died


def _wait_ack(conn: Connection, timeout: float, what: str) -> None:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {what} from the consumer within {timeout:g} s")
    conn.recv_bytes()  # raw bytes: no pickling on the (untimed) control path


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before any thread starts: they inherit it


def _affinity() -> list[int] | None:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _producer_main(t: Transport, plan: Plan, peer: Connection, out: Connection,
                   cpu: int | None = None) -> None:
    sender = None
    try:
        _pin(cpu)
        src = t.payload.source()
        is_meta = isinstance(src, dict)
        sender = t.sender()
        sender.prepare()
        peer.send("prepared")
        info = _expect(peer, plan.start_timeout_s, "ready")
        sender.connect(info)

        def send(i: int) -> None:
            sender.stage(i, src)  # untimed: the producer's own work (ring-direct writes its slot)
            t0 = time.perf_counter_ns()  # before any copy or encoding
            if is_meta:
                src["frame_id"], src["t0_ns"] = i, t0
            sender.send(i, t0, src)

        for i in range(plan.warmup + plan.latency_n):
            send(i)
            _wait_ack(peer, plan.msg_timeout_s, f"ack of message {i}")
        cpu0 = _cpu_s()
        t_start = time.perf_counter_ns()
        base = plan.warmup + plan.latency_n
        for i in range(base, base + plan.throughput_n):
            send(i)
        # Wait for the consumer before closing: some transports (nng) drop what is in flight.
        # No tighter limit than the case's: the consumer reports a stall itself, per message.
        _wait_ack(peer, plan.case_timeout_s, "end of throughput")
        cpu = _cpu_s() - cpu0
        out.send({"ok": True, "t_start": t_start, "cpu_s": cpu, "cpus": _affinity()})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        _report_failure(out, "producer", e)
    finally:
        _close_quietly(sender)


def _report_failure(out: Connection, who: str, e: BaseException) -> None:
    out.send({"ok": False, "error": f"{who}: {type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def _close_quietly(end) -> None:
    if end is not None:
        try:
            end.close()
        except Exception:  # noqa: BLE001 - the result is already out
            pass


def _consumer_main(t: Transport, plan: Plan, peer: Connection, out: Connection,
                   cpu: int | None = None) -> None:
    receiver = None
    try:
        _pin(cpu)
        want = touch(t.payload.source())  # what the touched elements must read
        receiver = t.receiver()
        _expect(peer, plan.start_timeout_s, "prepared")
        peer.send(receiver.open())
        lat = np.empty(plan.latency_n, dtype=np.int64)
        load = np.empty(plan.throughput_n, dtype=np.int64)

        def get(i: int) -> int:
            got = receiver.recv(plan.msg_timeout_s)
            t1 = time.perf_counter_ns()  # the consumer holds a usable array/dict
            if got is None:
                raise TimeoutError(f"message {i} not received within {plan.msg_timeout_s:g} s")
            fid, t0, obj = got
            if touch(obj) != want or fid != i:
                raise ValueError(f"message {i}: got frame {fid}, touched {touch(obj)} != {want}")
            return t1 - t0

        for i in range(plan.warmup + plan.latency_n):
            dt = get(i)
            if i >= plan.warmup:
                lat[i - plan.warmup] = dt
            peer.send_bytes(b"a")
        cpu0 = _cpu_s()
        base = plan.warmup + plan.latency_n
        for j in range(plan.throughput_n):
            load[j] = get(base + j)
        t_end = time.perf_counter_ns()
        cpu = _cpu_s() - cpu0
        peer.send_bytes(b"d")
        out.send({"ok": True, "lat": lat.tobytes(), "load": load.tobytes(), "t_end": t_end,
                  "cpu_s": cpu, "cpus": _affinity()})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        _report_failure(out, "consumer", e)
    finally:
        _close_quietly(receiver)


# -- parent --------------------------------------------------------------------------------


def _supervise(procs: dict[str, mp.Process], outs: dict[str, Connection], deadline: float) -> dict:
    """Collect both children's results; stop at the first failure, death or the deadline."""
    results: dict[str, dict] = {}
    while len(results) < len(procs):
        pending = [r for r in procs if r not in results]
        waitables = [outs[r] for r in pending] + [procs[r].sentinel for r in pending]
        if not wait(waitables, timeout=max(0.0, deadline - time.monotonic())):
            return {"error": f"timed out; still running: {', '.join(pending)}"}
        for r in pending:
            # Read the result first: a child that reported and exited is not a death.
            if outs[r].poll():
                try:
                    results[r] = outs[r].recv()
                except EOFError:  # it died; its exit code says how
                    procs[r].join(timeout=1.0)
                    return {"error": f"{r} died (exit code {procs[r].exitcode}) without reporting"}
            elif not procs[r].is_alive():
                code = procs[r].exitcode
                return {"error": f"{r} died (exit code {code}) without reporting"}
            if r in results and not results[r]["ok"]:
                return _root_cause(procs, outs, results, r)
    return results


def _root_cause(procs: dict[str, mp.Process], outs: dict[str, Connection], results: dict, failed: str) -> dict:
    """``failed``'s report, unless the other end died without reporting: then the death is the
    cause (the survivor's error is only the broken pipe it found; which one the parent reads
    first is a race)."""
    for o, proc in procs.items():
        if o == failed or o in results:
            continue
        proc.join(timeout=1.0)
        if proc.exitcode in (None, 0):
            continue
        # a dead child's pipe polls readable at its end: only a report read from it counts
        try:
            reported = outs[o].poll() and outs[o].recv()
        except (EOFError, OSError):
            reported = None
        if not reported:
            return {"error": f"{o} died (exit code {proc.exitcode}) without reporting"}
    return results[failed]


def pin_cpus() -> tuple[int, int] | None:
    """(producer CPU, consumer CPU): the first two this process may run on; None if fewer."""
    allowed = _affinity() or []
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def run_case(cls: type[Transport], payload: Payload, plan: Plan,
             cpus: tuple[int, int] | None = None) -> CaseResult:
    """Run one transport x payload case in two spawned processes, pinned to ``cpus``
    (producer, consumer) if given; never raises, never hangs."""
    started = time.monotonic()
    res = CaseResult(cls.name, payload.kind, ok=False)
    ctx = mp.get_context("spawn")
    t = cls(payload)
    procs: dict[str, mp.Process] = {}
    try:
        t.setup()
        peer_p, peer_c = ctx.Pipe()
        out_r = {}
        ends = [peer_p, peer_c]
        for role, main in (("consumer", _consumer_main), ("producer", _producer_main)):
            r, w = ctx.Pipe(duplex=False)
            out_r[role] = r
            ends.append(w)
            peer = peer_c if role == "consumer" else peer_p
            cpu = None if cpus is None else cpus[role == "consumer"]
            p = ctx.Process(target=main, args=(t, plan, peer, w, cpu), daemon=True,
                            name=f"hop-{cls.name}-{payload.kind}-{role}")
            p.start()
            procs[role] = p  # only started ones: those are joined below
        for c in ends:  # the children hold their own copies: a death now reads as EOF
            c.close()
        t.after_start()
        got = _supervise(procs, out_r, started + plan.case_timeout_s)
        if "error" in got:
            res.error = got["error"]
            res.extra["traceback"] = got.get("traceback")
        else:
            _fill(res, got["producer"], got["consumer"], plan)
    except Exception as e:  # noqa: BLE001 - setup of this transport failed: report, go on
        res.error = f"harness: {type(e).__name__}: {e}"
        res.extra["traceback"] = traceback.format_exc()
    finally:
        for p in procs.values():
            if res.ok:  # both reported: let them close their ends and exit
                p.join(timeout=5.0)
            if p.is_alive():  # failed (or slow to exit): nothing more to learn from it
                p.kill()
                p.join(timeout=5.0)
        try:
            t.cleanup()
        except Exception as e:  # noqa: BLE001 - keep the case's own error if any
            res.extra.setdefault("cleanup_error", f"{type(e).__name__}: {e}")
        res.seconds = round(time.monotonic() - started, 3)
    return res


def _fill(res: CaseResult, prod: dict, cons: dict, plan: Plan) -> None:
    lat = np.frombuffer(cons["lat"], dtype=np.int64) / 1e3
    load = np.frombuffer(cons["load"], dtype=np.int64) / 1e3
    m = plan.throughput_n
    elapsed_s = (cons["t_end"] - prod["t_start"]) / 1e9
    res.ok = True
    res.p50_us = round(float(np.percentile(lat, 50)), 1)
    res.p99_us = round(float(np.percentile(lat, 99)), 1)
    res.fps = round(m / elapsed_s, 1)
    res.cpu_producer_us = round(prod["cpu_s"] / m * 1e6, 1)
    res.cpu_consumer_us = round(cons["cpu_s"] / m * 1e6, 1)
    res.cpu_us = round(res.cpu_producer_us + res.cpu_consumer_us, 1)
    res.load_p50_us = round(float(np.percentile(load, 50)), 1)
    res.latency_n, res.throughput_n = plan.latency_n, m
    # Where the children really ran (what they could run on, as they saw it).
    res.extra["cpus"] = {"producer": prod.get("cpus"), "consumer": cons.get("cpus")}


def run_hop(
    names: Iterable[str] | None = None,
    payloads: Iterable[str] = PAYLOADS,
    quick: bool = False,
    frame_shape: tuple[int, ...] = (720, 1280, 3),
    plans: dict[str, Plan] | None = None,
    progress: Callable[[CaseResult], None] | None = None,
    rounds: int | None = None,
    pin: bool = True,
) -> list[CaseResult]:
    """Run every transport x payload case, payload-major, in table order.

    ``names`` picks transports (default: all registered); ``plans`` overrides the sample counts
    per payload kind (tests use tiny ones); ``progress`` is called after each case. Each case
    runs ``rounds`` times (default ``ROUNDS``), the transports taking turns, and reports the median of
    its rounds: on a shared VM, wake-up latency drifts by tens of microseconds from one second
    to the next, and interleaving gives every transport the same weather. ``pin``: producer and
    consumer on two distinct CPUs (see the module docstring).
    """
    rounds = rounds or ROUNDS
    cpus = pin_cpus() if pin else None
    registry = transports()
    chosen = list(registry) if names is None else list(names)
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise KeyError(f"unknown transport(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    chosen.sort(key=list(registry).index)
    results = []
    for kind in payloads:
        if kind not in PAYLOADS:
            raise KeyError(f"unknown payload {kind!r}; known: {', '.join(PAYLOADS)}")
        payload = Payload(kind, shape=tuple(frame_shape))  # type: ignore[arg-type]
        plan = (plans or {}).get(kind) or default_plan(kind, quick)
        runs: dict[str, list[CaseResult]] = {name: [] for name in chosen}
        for _ in range(rounds):
            for name in chosen:
                r = run_case(registry[name], payload, plan, cpus)
                runs[name].append(r)
                if progress is not None:
                    progress(r)
        results.extend(_median_of(rs) for rs in runs.values())
    return results


def _median_of(rs: list[CaseResult]) -> CaseResult:
    """One result from a case's rounds: medians of the numbers; failed if any round failed."""
    bad = [r for r in rs if not r.ok]
    if bad or len(rs) == 1:
        return bad[0] if bad else rs[0]
    m = rs[0]
    med = statistics.median
    return CaseResult(
        m.transport, m.payload, True,
        p50_us=med(r.p50_us for r in rs), p99_us=med(r.p99_us for r in rs), fps=med(r.fps for r in rs),
        cpu_us=med(r.cpu_us for r in rs), load_p50_us=med(r.load_p50_us for r in rs),
        cpu_producer_us=med(r.cpu_producer_us for r in rs), cpu_consumer_us=med(r.cpu_consumer_us for r in rs),
        latency_n=sum(r.latency_n for r in rs), throughput_n=sum(r.throughput_n for r in rs),
        seconds=sum(r.seconds for r in rs),
        extra={**m.extra, "rounds": len(rs), "p50_rounds_us": [round(r.p50_us, 1) for r in rs]},
    )
