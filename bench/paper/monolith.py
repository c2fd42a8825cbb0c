"""CASE A, the paper's device-only monolith: one process per application that decodes, detects
and runs its app logic in sequence, sharing nothing with the other apps.

A capture thread paces the clip at its frame rate into a bounded queue (the monolith's input
queue: a frame that finds it full is dropped, as the paper's CASE A drops once its queues are
full); the main thread takes frames one at a time through the app's modules, the same classes
and args as edgeva's. Every frame's end-to-end latency (decode to the app's end) is recorded.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from edgeva.bench.paper.apps import SINK
from edgeva.bench.paper.inproc import build_module, produce, run_graph, topo
from edgeva.control.processes import join_or_kill

QUEUE = 30  # frames: 3 s at 10 fps, then drops


def monolith_main(dep: dict, seconds: float, cpus: list[int] | None, conn: Any) -> None:
    """Child process: run one app for ``seconds`` after setup; send (series, offered)."""
    import os

    if cpus:
        os.sched_setaffinity(0, cpus)
    order = topo(dep)
    mods = {n: build_module(n, dep["modules"][n]) for n in order if n != SINK}
    dec_name = order[0]
    dec = mods[dec_name]
    q: queue.Queue = queue.Queue(QUEUE)
    stop = threading.Event()
    offered = [0]
    conn.send(("ready", None))
    conn.recv()  # go: every monolith starts at once
    t0 = time.monotonic()

    def capture() -> None:
        while not stop.is_set():
            dec.pace()
            msg = produce(dec)
            if msg is None:
                return
            msg.hops.append([dec_name, msg.ts_ns, time.time_ns()])
            offered[0] += 1
            try:
                q.put_nowait(msg)
            except queue.Full:
                pass  # dropped at the input queue

    threading.Thread(target=capture, daemon=True).start()
    series: list[tuple[float, float]] = []

    def done(m: Any) -> None:
        series.append((time.monotonic() - t0, (time.time_ns() - m.ts_ns) / 1e6))

    while time.monotonic() - t0 < seconds:
        try:
            msg = q.get(timeout=0.2)
        except queue.Empty:
            continue
        run_graph(msg, dep, order, mods, SINK, done)
    stop.set()
    conn.send(("done", {"series": series, "offered": offered[0]}))
    for m in mods.values():
        try:
            m.close()
        except Exception:
            pass


def run_processes(target: Any, jobs: list[tuple], timeout: float) -> list[dict]:
    """Start one spawned process per job (``target(*job, conn)``), start them together once all
    are set up, return each one's result dict (``{"error": ...}`` for one that failed)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs, conns = [], []
    for job in jobs:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(*job, child))
        p.start()
        procs.append(p)
        conns.append(parent)
    results: list[dict] = []
    try:
        for c in conns:
            if not c.poll(120):
                raise RuntimeError("a bench process did not finish its setup in 120 s")
            c.recv()
        for c in conns:
            c.send("go")
        for c in conns:
            results.append(c.recv()[1] if c.poll(timeout) else {"error": "no result"})
    except (EOFError, RuntimeError) as exc:
        results = [{"error": str(exc)}]
    finally:
        join_or_kill(procs)
    return results


def run_monolith(deps: list[dict], seconds: float) -> list[dict]:
    """CASE A: one process per app (unpinned, as one device runs them); per-app results."""
    return run_processes(monolith_main, [(d, seconds, None) for d in deps], timeout=seconds + 60)
