"""``edgeva bench soak --minutes N``: the three demo apps for N minutes, with faults, sampled.

A private mosquitto and a real ``edgeva agent`` process run the demo's tracking, roi and reid
apps on the bundled clip, looped. Every ``kill_every`` seconds one module process (in turn, not
the decoder) is SIGKILLed; every ``broker_every`` seconds the broker is stopped for
``broker_down`` seconds and started again. Every ``sample_every`` seconds it samples, for the
agent and every process under it: private resident memory (``RssAnon``: where a leak shows;
ring pages a process touches are shared memory, counted apart) and open file descriptors; the
agent's ``/dev/shm`` segments, reserved and touched;
and, from the tenant metrics, each app's latency p95, frames and drops.

The verdict (``summary``): RSS of every process and ``/dev/shm`` use between minute 2 and the
end within 5 %; latency p95 not growing (its slope over the run); every module restart accounted
for by a kill (restarts == kills, none failed); the agent back online after every outage.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeva.bench.out import out_path, write_json
from edgeva.bench.paper.stats import slope_ms_per_s
from edgeva.bench.proc import descendants, fds, memory_mb, shm
from edgeva.control.processes import agent_argv
from edgeva.schemas.topics import DEFAULT_TENANT, tenant_metrics_topic

DEVICE = "soak"
FLAT_PCT = 5.0


class _Metrics:
    """The latest tenant metrics of the soak device (its apps' latency, frames, drops)."""

    def __init__(self, url: str) -> None:
        from edgeva.agent import mqtt as m

        self.latest: dict[str, Any] = {}
        self.lock = threading.Lock()
        topic = tenant_metrics_topic(DEVICE, DEFAULT_TENANT)
        self.client = m.connect(url, m.MqttOptions(client_id_prefix="edgeva-soak"),
                                on_connect=lambda c: c.subscribe(topic, 1))
        self.client.on_message = self._on
        m.subscribe_wait(self.client, topic)

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            self.latest = data.get("apps", {})

    def apps(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.latest)

    def close(self) -> None:
        from edgeva.agent import mqtt as m

        m.close(self.client)


def _growth_pct(series: list[tuple[float, float]], start_s: float) -> float | None:
    """Median of the last minute against the median of the minute from ``start_s``, in %."""
    end = series[-1][0] if series else 0
    a = [v for t, v in series if start_s <= t < start_s + 60]
    b = [v for t, v in series if t >= end - 60]
    if not a or not b or statistics.median(a) == 0:
        return None
    return round(100 * (statistics.median(b) / statistics.median(a) - 1), 2)


def _summarize(samples: list[dict], kills: list[dict], outages: list[dict], final_state: dict,
               minutes: float) -> dict:
    start = min(120.0, 0.2 * minutes * 60)
    rss: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for name, mb in s["rss_mb"].items():
            rss.setdefault(name, []).append((s["t"], mb))
    killed_late = {k["module"] for k in kills if k["t"] > samples[-1]["t"] - 60} if samples else set()
    rss_growth = {n: _growth_pct(v, start) for n, v in rss.items()}
    shm_growth = _growth_pct([(s["t"], s["shm_mb"]) for s in samples], start)
    within = all(s["shm_touched_mb"] <= s["shm_mb"] + 0.01 for s in samples)
    lat = {}
    for app in {a for s in samples for a in s["apps"]}:
        pts = [(s["t"], s["apps"][app]["p95"]) for s in samples
               if app in s["apps"] and s["apps"][app].get("p95") is not None and s["t"] >= start]
        lat[app] = {"p95_median_ms": round(statistics.median([p[1] for p in pts]), 1) if pts else None,
                    "p95_slope_ms_per_min": round(60 * v, 2) if (v := slope_ms_per_s(pts)) is not None else None}
    restarts = {n: m.get("restarts", 0) for n, m in final_state.get("modules", {}).items()}
    failed = [n for n, m in final_state.get("modules", {}).items() if m.get("status") == "failed"]
    judged = {n: g for n, g in rss_growth.items() if n not in killed_late and g is not None}
    return {
        "window": f"minute {start / 60:g} to the end",
        "rss_growth_pct": rss_growth,
        "rss_flat": all(abs(g) <= FLAT_PCT for g in judged.values()),
        "rss_not_judged": sorted(killed_late),
        "shm_growth_pct": shm_growth,
        "shm_flat": shm_growth is not None and abs(shm_growth) <= FLAT_PCT and within,
        "shm_touched_growth_pct": _growth_pct([(s["t"], s["shm_touched_mb"]) for s in samples], start),
        "segments": sorted({s["segments"] for s in samples}),
        "latency": lat,
        "latency_not_growing": all((v["p95_slope_ms_per_min"] or 0) <= max(5.0, 0.05 * (v["p95_median_ms"] or 0))
                                   for v in lat.values()),
        "kills": len(kills),
        "restarts": sum(restarts.values()),
        "restarts_accounted": sum(restarts.values()) == len(kills) and not failed,
        "failed_modules": failed,
        "broker_outages": len(outages),
        "back_online_after_outages": all(o.get("online_after_s") is not None for o in outages),
    }


def write_plot(path: str, samples: list[dict], kills: list[dict], outages: list[dict]) -> None:
    """RSS per process, /dev/shm and fds, latency p95 and drops per app, over time with faults."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for name in sorted({n for s in samples for n in s["rss_mb"]}):
        ax[0][0].plot([s["t"] / 60 for s in samples if name in s["rss_mb"]],
                      [s["rss_mb"][name] for s in samples if name in s["rss_mb"]], label=name, lw=1)
    ax[0][0].set(title="private memory (RssAnon) per process, MB")
    ax[0][0].legend(fontsize=6, ncol=2)
    ax[0][1].plot(ts, [s["shm_mb"] for s in samples], label="/dev/shm reserved by the rings (MB)")
    ax[0][1].plot(ts, [s["shm_touched_mb"] for s in samples], label="... of it touched (MB)")
    ax[0][1].plot(ts, [s["fds"] for s in samples], label="open fds (all processes)")
    ax[0][1].set(title="shared memory and descriptors")
    ax[0][1].legend(fontsize=8)
    for app in sorted({a for s in samples for a in s["apps"]}):
        pts = [(s["t"] / 60, s["apps"][app]) for s in samples if app in s["apps"]]
        ax[1][0].plot([p[0] for p in pts], [p[1].get("p95") or float("nan") for p in pts], label=app)
        ax[1][1].plot([p[0] for p in pts], [p[1].get("dropped", 0) for p in pts], label=app)
    ax[1][0].set(title="latency p95 (ms)", xlabel="minutes")
    ax[1][1].set(title="dropped frames (cumulative)", xlabel="minutes")
    for a in ax.flat:
        for k in kills:
            a.axvline(k["t"] / 60, color="red", lw=0.6, alpha=0.5)
        for o in outages:
            a.axvspan(o["t"] / 60, (o["t"] + o["down_s"]) / 60, color="grey", alpha=0.25)
        a.grid(alpha=0.3)
    ax[1][0].legend(fontsize=8)
    fig.suptitle("edgeva bench soak: red lines = module killed, grey = broker down")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_soak(minutes: float, kill_every: float, broker_every: float, broker_down: float,
             sample_every: float, json_path: str | None = None, plot_path: str | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Run the soak; returns ``{"samples", "kills", "outages", "summary"}``. The arguments are
    ``edgeva bench soak``'s flags, whose defaults are in its parser (cli.py)."""
    from edgeva.control.client import EdgevaClient
    from edgeva.control.demo.apps import demo_apps
    from edgeva.control.fleet_client import FleetClient
    from edgeva.control.mosquitto import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="edgeva-soak-"))
    prefix = f"soak{os.getpid()}"
    deployments = demo_apps(video=None)
    for dep in deployments:
        dep["modules"]["decoder"]["args"]["loop"] = True
    samples: list[dict] = []
    kills: list[dict] = []
    outages: list[dict] = []
    with Mosquitto(tmp / "broker") as broker:
        log = open(tmp / "agent.log", "wb")  # noqa: SIM115 - closed below
        agent = subprocess.Popen(
            [*agent_argv(DEVICE, broker.url), "--state-dir", str(tmp / "state"), "--prefix", prefix, "--metrics-interval", "1"],
            stdout=log, stderr=subprocess.STDOUT)
        fleet = FleetClient(broker.url)
        metrics = None
        final_state: dict = {}
        try:
            fleet.wait_devices(1, timeout=60)
            with EdgevaClient(broker.url, DEVICE) as client:
                for dep in deployments:
                    reply = client.request("deploy", dep, timeout=120)
                    if not reply.get("ok"):
                        raise RuntimeError(f"deploying {dep['app']} failed: {reply.get('error')}")
            say(f"soak: 3 apps on agent pid {agent.pid}, {minutes:g} min, a module killed every "
                f"{kill_every:g} s, broker down {broker_down:g} s every {broker_every:g} s")
            metrics = _Metrics(broker.url)
            t0 = time.monotonic()
            next_kill, next_outage, next_sample, next_say, turn = kill_every, broker_every, 0.0, 0.0, 0
            while (t := time.monotonic() - t0) < minutes * 60:
                if t >= next_sample:
                    next_sample += sample_every
                    samples.append(_sample(agent.pid, prefix, fleet, metrics, t))
                if t >= next_kill:
                    next_kill += kill_every
                    kills.extend(_kill_one(fleet, turn, t))
                    turn += 1
                if t >= next_outage:
                    next_outage += broker_every
                    outages.append(_outage(broker, fleet, broker_down, t))
                    say(f"  {t / 60:5.1f} min: broker was down {broker_down:g} s; agent online again after "
                        f"{outages[-1]['online_after_s']} s")
                if samples and t >= next_say:
                    next_say += 60
                    s = samples[-1]
                    say(f"  {t / 60:5.1f} min: private memory {sum(s['rss_mb'].values()):7.1f} MB in "
                        f"{len(s['rss_mb'])} processes, shm {s['shm_mb']:.1f} MB reserved "
                        f"({s['shm_touched_mb']:.1f} touched), fds {s['fds']}, p95 " + ", ".join(
                            f"{a} {v.get('p95') or float('nan'):.0f} ms" for a, v in sorted(s["apps"].items())))
                time.sleep(0.2)
            st = fleet.states().get(DEVICE)
            final_state = st.model_dump() if st else {}
        finally:
            if metrics is not None:
                metrics.close()
            fleet.close()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
            log.close()
    result = {"minutes": minutes, "samples": samples, "kills": kills, "outages": outages,
              "summary": _summarize(samples, kills, outages, final_state, minutes)}
    if json_path:
        write_json(json_path, result)
    if plot_path:
        write_plot(out_path(plot_path), samples, kills, outages)
    return result


def _sample(agent_pid: int, prefix: str, fleet: Any, metrics: _Metrics, t: float) -> dict:
    st = fleet.states().get(DEVICE)
    names = {m.pid: n for n, m in (st.modules.items() if st else []) if m.pid}
    rss, shared, n_fds = {}, {}, 0
    for pid in descendants(agent_pid):
        mem = memory_mb(pid)
        if mem is None:
            continue
        name = "agent" if pid == agent_pid else names.get(pid)
        if name is None:
            continue  # the forkserver and the resource tracker: not edgeva's code
        rss[name], shared[name] = round(mem[0], 1), round(mem[1], 1)
        n_fds += fds(pid)
    apps = {a: {"p95": (v.get("latency_ms") or {}).get("p95"), "frames": v.get("frames", 0),
                "dropped": v.get("dropped", 0)} for a, v in metrics.apps().items()}
    touched, reserved, segments = shm(prefix)
    return {"t": round(t, 1), "rss_mb": rss, "shm_touched_by_mb": shared, "fds": n_fds,
            "shm_mb": round(reserved, 2), "shm_touched_mb": round(touched, 2), "segments": segments,
            "apps": apps}


def _kill_one(fleet: Any, turn: int, t: float) -> list[dict]:
    st = fleet.states().get(DEVICE)
    if st is None:
        return []
    victims = sorted(n for n, m in st.modules.items() if m.type != "decoder" and m.pid and m.status == "running")
    if not victims:
        return []
    name = victims[turn % len(victims)]
    try:
        os.kill(st.modules[name].pid, signal.SIGKILL)
    except ProcessLookupError:
        return []
    return [{"t": round(t, 1), "module": name, "pid": st.modules[name].pid}]


def _outage(broker: Any, fleet: Any, down: float, t: float) -> dict:
    broker.stop()
    time.sleep(down)
    broker.start()
    t1, since = time.monotonic(), time.time()
    try:
        fleet.wait_devices(1, timeout=60, since=since)  # republished by the agent once it is back
        back = round(time.monotonic() - t1, 2)
    except Exception:
        back = None
    return {"t": round(t, 1), "down_s": down, "online_after_s": back}
