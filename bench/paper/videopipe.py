"""VideoPipe, emulated as the paper did (its section 5): one runtime per module, synchronous
processing with one frame in the pipeline at a time, frames that arrive while it is busy dropped
at the source, and a network call (msgpack over HTTP) for every hop, even on one device.

The apps' graphs are merged as edgeva merges them (identical modules run once), so that only
the architecture differs. Each module runs in its own process behind a stdlib HTTP server
(keep-alive, TCP_NODELAY); a runtime decodes the request (edgeva's codec: a msgpack header and
raw arrays), runs its module, and POSTs each output to each downstream runtime in turn, waiting
for the answer, then answers its caller with what reached the apps' ends and the per-hop times.
Each hop is split into serialise (encode), network (round trip minus the downstream handler's
time once the body is read) and deserialise (decode), the paper's Figure 8 breakdown.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeva.agent.dataplane.codec import decode, encode
from edgeva.bench.paper.apps import SINK
from edgeva.bench.paper.inproc import build_module, outputs, produce, topo
from edgeva.control.processes import join_or_kill, tell_all


def merge(deps: list[dict]) -> tuple[dict, dict[str, list[str]]]:
    """One graph for all apps, identical modules (type, args, upstream) merged, sinks dropped;
    returns it and, per module, the apps whose end it is."""
    graph: dict[str, dict] = {}
    ends: dict[str, list[str]] = {}
    for dep in deps:
        mods, ident = dep["modules"], {}
        for name in topo(dep):
            if name == SINK:
                continue
            ups = sorted(ident[u] for u, m in mods.items() if name in m.get("outputs", []) and u in ident)
            key = json.dumps([mods[name]["type"], mods[name].get("args", {}), ups], sort_keys=True)
            ident[name] = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"
            node = graph.setdefault(ident[name], {"type": mods[name]["type"], "args": mods[name].get("args", {}),
                                                  "outputs": []})
            for u in ups:
                if ident[name] not in graph[u]["outputs"]:
                    graph[u]["outputs"].append(ident[name])
            if SINK in mods[name].get("outputs", []):
                ends.setdefault(ident[name], []).append(dep["app"])
            del node  # kept in graph
    return {"app": "videopipe", "modules": graph}, ends


class _Downstream:
    """A keep-alive HTTP connection to the next runtime."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, body: bytes) -> tuple[float, dict]:
        t = time.perf_counter()
        self.conn.request("POST", "/process", body=body, headers={"Content-Type": "application/msgpack"})
        resp = self.conn.getresponse()
        data = json.loads(resp.read())
        return (time.perf_counter() - t) * 1e3, data


def _forward(name: str, outs: list, downs: list[_Downstream], ends: list[str]) -> dict:
    """Send each output to each downstream runtime in turn; what came back, merged."""
    result: dict[str, list] = {"ends": [], "hops": []}
    now = time.time_ns()
    for o in outs:
        for app in ends:
            result["ends"].append([app, o.frame_id, (now - o.ts_ns) / 1e6])
        for d in downs:
            t = time.perf_counter()
            body = encode(o)
            ser = (time.perf_counter() - t) * 1e3
            rtt, got = d.post(body)
            result["ends"] += got["ends"]
            result["hops"] += got["hops"]
            result["hops"].append({"from": name, "to": d.name, "serialise_ms": ser,
                                   "network_ms": max(0.0, rtt - got["handler_ms"]), "deserialise_ms": got["deser_ms"]})
    return result


def runtime_main(name: str, spec: dict, downstream: list[tuple[str, int]], ends: list[str],
                 cpus: list[int] | None, conn: Any) -> None:
    """A module's own runtime: an HTTP server that runs the module on each POSTed message."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    mod = build_module(name, spec)
    downs = [_Downstream(n, p) for n, p in downstream]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            n = int(self.headers["Content-Length"])
            buf = bytearray(n)
            self.rfile.readinto(memoryview(buf))
            # The handler's own time starts once the body is in: reading it off the socket is
            # the network's share of the hop (a 720p frame is 1-3 MB), not the module's.
            t0 = t = time.perf_counter()
            msg = decode(buf, readonly=False)
            deser = (time.perf_counter() - t) * 1e3
            t_in = time.time_ns()
            outs = outputs(mod.process(msg))
            t_out = time.time_ns()
            for o in outs:
                o.hops.append([name, t_in, t_out])
            result = _forward(name, outs, downs, ends)
            result["deser_ms"] = deser
            result["handler_ms"] = (time.perf_counter() - t0) * 1e3
            body = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    conn.send(("ready", server.server_address[1]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.recv()  # stop
    server.shutdown()


def source_main(name: str, spec: dict, downstream: list[tuple[str, int]], seconds: float,
                cpus: list[int] | None, conn: Any) -> None:
    """The decoder's runtime: paced frames, one in the pipeline at a time, the rest dropped."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    dec = build_module(name, spec)
    downs = [_Downstream(n, p) for n, p in downstream]
    conn.send(("ready", None))
    conn.recv()  # go
    busy = threading.Lock()
    series: list[list] = []
    hops: list[dict] = []
    offered = 0
    t0 = time.monotonic()

    def run(msg: Any) -> None:
        try:
            got = _forward(name, [msg], downs, [])
            now = time.monotonic() - t0
            series.extend([app, now, lat] for app, _fid, lat in got["ends"])
            hops.extend(got["hops"])
        finally:
            busy.release()

    while time.monotonic() - t0 < seconds:
        dec.pace()
        msg = produce(dec)
        if msg is None:
            break
        t = time.time_ns()
        msg.hops.append([name, msg.ts_ns, t])
        offered += 1
        if busy.acquire(blocking=False):  # idle: this frame enters the pipeline
            threading.Thread(target=run, args=(msg,), daemon=True).start()
    with busy:
        conn.send(("done", {"series": series, "hops": hops, "offered": offered}))


def run_videopipe(deps: list[dict], seconds: float, placement: dict[str, list[int]] | None = None) -> dict:
    """Run the merged graph; ``placement``: module type -> CPUs (two devices), else unpinned.
    Returns ``{"apps": {app: [(t, latency_ms), ...]}, "offered", "hops"}``."""
    import multiprocessing as mp

    graph, ends = merge(deps)
    mods = graph["modules"]
    order = topo(graph)
    ctx = mp.get_context("spawn")
    ports: dict[str, int] = {}
    procs, conns = [], []

    def cpus(name: str) -> list[int] | None:
        return (placement or {}).get(mods[name]["type"], (placement or {}).get("*"))

    try:
        for name in reversed(order[1:]):  # downstream first: its port is known to its caller
            parent, child = ctx.Pipe()
            down = [(o, ports[o]) for o in mods[name]["outputs"]]
            p = ctx.Process(target=runtime_main, args=(name, mods[name], down, ends.get(name, []), cpus(name), child))
            p.start()
            procs.append(p)
            conns.append(parent)
            if not parent.poll(120):
                raise RuntimeError(f"runtime {name} did not start")
            ports[name] = parent.recv()[1]
        src = order[0]
        parent, child = ctx.Pipe()
        p = ctx.Process(target=source_main, args=(src, mods[src], [(o, ports[o]) for o in mods[src]["outputs"]],
                                                  seconds, cpus(src), child))
        p.start()
        procs.append(p)
        if not parent.poll(120):
            raise RuntimeError("the source runtime did not start")
        parent.recv()
        parent.send("go")
        if not parent.poll(seconds + 120):
            raise RuntimeError("the source runtime did not finish")
        res = parent.recv()[1]
    finally:
        tell_all(conns, "stop")
        join_or_kill(procs)
    apps: dict[str, list] = {d["app"]: [] for d in deps}
    for app, t, lat in res["series"]:
        apps[app].append((t, lat))
    return {"apps": apps, "offered": res["offered"], "hops": res["hops"]}
