"""``edgeva bench fleet --agents N``: how the control plane behaves as a fleet grows.

For each fleet size (by default N/4, N/2 and N) a fresh mosquitto is started and that many real
agents (``AgentBridge``, the agent's whole MQTT side and supervisor) come up, hosted a few dozen
to a process in ``--workers`` spawned processes so that a 2-core machine can hold a hundred.
With the fleet online it measures:

- ``status_ms``: a ``status`` command sent to every agent at once, until the last reply;
- ``states_ms``: a new client's view of the fleet (every retained state) from its connect;
- ``deploy``: an app (synthetic source -> publish: two module processes) deployed to half the
  agents at once, until every reply says ok (``replies_ms``) and until every app's first event
  (``first_events_ms``); then its removal everywhere (``remove_ms``);
- ``broker``: mosquitto's own counters (``$SYS``) over an idle window: messages/s in and out,
  the control plane's steady chatter (state, metrics).

It prints a line per step, writes ``--json`` and ``--plot``, and says where the cost grows with
N. The agents' brokers, processes and state directories are all private to the run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeva.bench.out import out_path, write_json
from edgeva.control.processes import join_or_kill, tell_all
from edgeva.schemas.topics import DEFAULT_TENANT, events_subscription, parse_topic

APP = "fleetapp"
STATUS_TARGET_MS, DEPLOY_TARGET_MS = 2000.0, 10000.0


def _app() -> dict[str, Any]:
    """The app deployed to half the fleet: the smallest one that runs real module processes."""
    return {"app": APP, "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 1, "width": 64, "height": 48},
                "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}},
    }}


def _host(url: str, devices: list[str], root: str, metrics_period: float, conn: Any) -> None:
    """Worker process: run one agent per device until told to stop, then report its RSS."""
    logging.basicConfig(level=logging.WARNING)
    from edgeva.agent.bridge import AgentBridge

    bridges = []
    try:
        for i, dev in enumerate(devices):
            # one metrics period for the modules' reports and the published metrics, as
            # `edgeva agent --metrics-interval` sets both
            b = AgentBridge({"device": dev, "state_dir": Path(root) / dev, "prefix": f"fl{os.getpid()}x{i}",
                             "metrics_interval": metrics_period}, url, metrics_period=metrics_period)
            b.start()
            bridges.append(b)
        conn.send(("up", len(bridges)))
        conn.recv()
    except Exception as exc:  # the parent reports it; a worker must not hang the run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        stoppers = [threading.Thread(target=b.stop) for b in bridges]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(30)
        conn.send(("down", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


class _SysStats:
    """mosquitto's ``$SYS`` message counters, as they arrive (every ``sys_interval``)."""

    TOPICS = ("$SYS/broker/messages/received", "$SYS/broker/messages/sent")

    def __init__(self, url: str) -> None:
        from edgeva.agent import mqtt as m

        self.latest: dict[str, tuple[float, int]] = {}
        self.cond = threading.Condition()
        self.client = m.connect(url, m.MqttOptions(client_id_prefix="edgeva-bench-sys"))
        self.client.on_message = self._on
        m.subscribe_wait(self.client, list(self.TOPICS))

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.cond:
            self.latest[msg.topic] = (time.monotonic(), int(msg.payload))
            self.cond.notify_all()

    def snapshot(self, timeout: float = 5.0) -> dict[str, tuple[float, int]]:
        """The next fresh value of every counter."""
        t0 = time.monotonic()
        with self.cond:
            self.cond.wait_for(lambda: all(self.latest.get(t, (0, 0))[0] > t0 for t in self.TOPICS), timeout)
            return dict(self.latest)

    def close(self) -> None:
        from edgeva.agent import mqtt as m

        m.close(self.client)


def _rates(a: dict[str, tuple[float, int]], b: dict[str, tuple[float, int]]) -> dict[str, float]:
    out = {}
    for topic, key in zip(_SysStats.TOPICS, ("msgs_in_per_s", "msgs_out_per_s"), strict=True):
        if topic in a and topic in b and b[topic][0] > a[topic][0]:
            out[key] = round((b[topic][1] - a[topic][1]) / (b[topic][0] - a[topic][0]), 1)
    return out


class _FirstEvents:
    """Time of the first event of ``APP`` from each device."""

    def __init__(self, url: str) -> None:
        from edgeva.agent import mqtt as m

        self.first: dict[str, float] = {}
        self.cond = threading.Condition()
        self.client = m.connect(url, m.MqttOptions(client_id_prefix="edgeva-bench-ev"))
        self.client.on_message = self._on
        m.subscribe_wait(self.client, events_subscription(tenant=DEFAULT_TENANT, app=APP))

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        topic = parse_topic(msg.topic)
        if topic is None:
            return
        dev = topic.device
        with self.cond:
            self.first.setdefault(dev, time.monotonic())
            self.cond.notify_all()

    def wait(self, devices: list[str], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: all(d in self.first for d in devices), timeout)

    def close(self) -> None:
        from edgeva.agent import mqtt as m

        m.close(self.client)


def run_size(n: int, workers: int, idle_s: float, metrics_period: float, say: Callable[[str], None]) -> dict:
    """One fleet of ``n`` agents on a fresh broker; every figure of that size."""
    from edgeva.control.fleet_client import FleetClient
    from edgeva.control.mosquitto import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix=f"edgeva-fleet{n}-"))
    devices = [f"cam-{i:03d}" for i in range(n)]
    out: dict[str, Any] = {"agents": n, "workers": workers}
    ctx = mp.get_context("spawn")
    with Mosquitto(tmp / "broker") as broker:
        sysstats = _SysStats(broker.url)
        fleet = FleetClient(broker.url)
        procs, conns = [], []
        t0 = time.monotonic()
        for w in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_host, args=(broker.url, devices[w::workers], str(tmp / "state"),
                                                metrics_period, child))
            p.start()
            procs.append(p)
            conns.append(parent)
        try:
            for c in conns:
                kind, detail = c.recv()
                if kind != "up":
                    raise RuntimeError(f"a worker failed to start its agents: {detail}")
            fleet.wait_devices(n, timeout=60)
            out["startup_s"] = round(time.monotonic() - t0, 2)
            say(f"  {n} agents online in {out['startup_s']:.1f} s ({workers} processes)")

            a = sysstats.snapshot()
            time.sleep(idle_s)
            out["broker_idle"] = _rates(a, sysstats.snapshot())
            say(f"  broker, idle fleet: {out['broker_idle'].get('msgs_in_per_s', '?')} msgs/s in, "
                f"{out['broker_idle'].get('msgs_out_per_s', '?')} out")

            t = time.monotonic()
            replies = fleet.request_many(devices, "status", {}, timeout=30)
            out["status_ms"] = round((time.monotonic() - t) * 1e3, 1)
            out["status_answered"] = sum(1 for r in replies.values() if r and r.get("ok"))
            say(f"  status of all {n}: {out['status_answered']} answered in {out['status_ms']:.0f} ms")

            t = time.monotonic()
            with FleetClient(broker.url) as fresh:
                fresh.wait_devices(n, timeout=30)
            out["states_ms"] = round((time.monotonic() - t) * 1e3, 1)
            say(f"  a new client sees all {n} retained states in {out['states_ms']:.0f} ms")

            half = devices[: max(1, n // 2)]
            events = _FirstEvents(broker.url)
            t = time.monotonic()
            replies = fleet.request_many(half, "deploy", _app(), timeout=60)
            t_replies = time.monotonic() - t
            ok = sum(1 for r in replies.values() if r and r.get("ok"))
            got_all = events.wait(half, timeout=30)
            t_events = (max(events.first.values()) - t) if got_all else None
            t = time.monotonic()
            removed = fleet.request_many(half, "remove", {"app": APP}, timeout=60)
            out["deploy"] = {
                "devices": len(half), "ok": ok, "replies_ms": round(t_replies * 1e3, 1),
                "first_events_ms": round(t_events * 1e3, 1) if t_events is not None else None,
                "remove_ms": round((time.monotonic() - t) * 1e3, 1),
                "removed": sum(1 for r in removed.values() if r and r.get("ok")),
                "errors": sorted({json.dumps(r.get("error")) for r in replies.values() if r and not r.get("ok")})[:3],
            }
            events.close()
            d = out["deploy"]
            say(f"  deploy to {len(half)}: {ok} ok in {d['replies_ms']:.0f} ms, first event from every app "
                f"after {d['first_events_ms'] or float('nan'):.0f} ms; removed in {d['remove_ms']:.0f} ms")
        finally:
            tell_all(conns, "stop")
            rss = []
            for c in conns:
                if c.poll(40):
                    kind, detail = c.recv()
                    if kind == "error" and c.poll(40):
                        kind, detail = c.recv()
                    if kind == "down":
                        rss.append(detail)
            join_or_kill(procs)
            out["worker_rss_mb"] = [round(r, 1) for r in rss]
            out["rss_mb_per_agent"] = round(sum(rss) / n, 2) if rss else None
            fleet.close()
            sysstats.close()
    return out


def _growth(sizes: list[dict]) -> dict[str, Any]:
    """Cost per added agent between the smallest and the largest fleet, per figure."""
    if len(sizes) < 2:
        return {}
    a, b = sizes[0], sizes[-1]
    dn = b["agents"] - a["agents"]

    def per_agent(get: Callable[[dict], float | None]) -> float | None:
        x, y = get(a), get(b)
        return round((y - x) / dn, 3) if x is not None and y is not None else None

    return {
        "status_ms_per_agent": per_agent(lambda s: s.get("status_ms")),
        "states_ms_per_agent": per_agent(lambda s: s.get("states_ms")),
        "deploy_replies_ms_per_deployed_agent": round(
            (b["deploy"]["replies_ms"] - a["deploy"]["replies_ms"]) / max(1, b["deploy"]["devices"] - a["deploy"]["devices"]), 3),
        "broker_out_msgs_per_s_per_agent": per_agent(lambda s: s.get("broker_idle", {}).get("msgs_out_per_s")),
        "startup_s_per_agent": per_agent(lambda s: s.get("startup_s")),
    }


def write_plot(path: str, sizes: list[dict]) -> None:
    """Three panels against fleet size: command latencies, deploy times, broker message rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["agents"] for s in sizes]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(ns, [s["status_ms"] for s in sizes], "o-", label="status to all")
    axes[0].plot(ns, [s["states_ms"] for s in sizes], "s-", label="retained states, new client")
    axes[0].axhline(STATUS_TARGET_MS, color="grey", ls="--", lw=1, label="target 2 s")
    axes[0].set(title="fleet-wide status", xlabel="agents", ylabel="ms")
    axes[1].plot([s["deploy"]["devices"] for s in sizes], [s["deploy"]["replies_ms"] for s in sizes], "o-",
                 label="every reply ok")
    axes[1].plot([s["deploy"]["devices"] for s in sizes],
                 [s["deploy"]["first_events_ms"] or float("nan") for s in sizes], "s-", label="every first event")
    axes[1].axhline(DEPLOY_TARGET_MS, color="grey", ls="--", lw=1, label="target 10 s")
    axes[1].set(title="deploy to half the fleet", xlabel="agents deployed to", ylabel="ms")
    axes[2].plot(ns, [s["broker_idle"].get("msgs_in_per_s", float("nan")) for s in sizes], "o-", label="in")
    axes[2].plot(ns, [s["broker_idle"].get("msgs_out_per_s", float("nan")) for s in sizes], "s-", label="out")
    axes[2].set(title="broker messages/s, idle fleet", xlabel="agents", ylabel="msgs/s")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fleet_bench(agents: int, sizes: list[int] | None, workers: int | None, idle_s: float,
                    metrics_period: float, json_path: str | None = None, plot_path: str | None = None,
                    say: Callable[[str], None] = print) -> dict:
    """Run every size, then write the JSON / plot; returns the whole result. The arguments are
    ``edgeva bench fleet``'s flags, whose defaults are in its parser (cli.py)."""
    sizes = sorted(set(sizes or [max(2, agents // 4), max(2, agents // 2), agents]))
    rows = []
    for n in sizes:
        w = workers or min(4, n)
        say(f"fleet of {n} agents:")
        rows.append(run_size(n, w, idle_s, metrics_period, say))
    big = rows[-1]
    result = {
        "sizes": rows,
        "growth": _growth(rows),
        "targets": {
            "status_ms": {"target": STATUS_TARGET_MS, "agents": big["agents"], "value": big["status_ms"],
                          "met": big["status_answered"] == big["agents"] and big["status_ms"] < STATUS_TARGET_MS},
            "deploy_ms": {"target": DEPLOY_TARGET_MS, "devices": big["deploy"]["devices"],
                          "value": big["deploy"]["replies_ms"],
                          "met": big["deploy"]["ok"] == big["deploy"]["devices"]
                          and big["deploy"]["replies_ms"] < DEPLOY_TARGET_MS},
        },
        "machine": {"cpus": os.cpu_count(), "metrics_period_s": metrics_period},
    }
    if json_path:
        write_json(json_path, result)
    if plot_path:
        write_plot(out_path(plot_path), rows)
    return result
