"""edgeva itself (CASE B, CASE C, EdgeEye, scalability): real ``edgeva agent`` processes, each
held to its own CPUs when it stands for a device, against a private mosquitto.

Apps are deployed over MQTT like an operator would; every app ends in a ``publish`` sink whose
events carry each frame's end-to-end latency and per-hop times; device metrics carry the
links' serialise / network / deserialise times and the arrays each stream carried across.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgeva.control.processes import agent_argv
from edgeva.schemas.topics import (
    DEFAULT_TENANT,
    device_metrics_subscription,
    events_subscription,
    parse_topic,
)


def _by_module(streams: dict[str, list[str]]) -> dict[str, list[str]]:
    """Stream (an instance, ``detector-1a2b...``) -> arrays, as module type -> arrays."""
    out: dict[str, set[str]] = {}
    for stream, arrays in streams.items():
        out.setdefault(stream.rsplit("-", 1)[0], set()).update(arrays)
    return {k: sorted(v) for k, v in out.items()}


class Agents:
    """``with Agents({"dev1": [0], "dev2": [1]}, data=True) as a: a.run(deps, seconds)``."""

    def __init__(self, devices: dict[str, list[int] | None], data: bool = False) -> None:
        self.devices, self.data = devices, data
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeva-paper-"))
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.events: dict[str, list] = {}
        self.links: dict[str, dict] = {}  # device -> its links' metrics (latest, while recording)
        self.modules: dict[str, dict] = {}  # device -> its modules' metrics (latest)
        #: device -> peer -> module type -> the arrays its stream carried there (while recording)
        self.arrays: dict[str, dict[str, dict[str, list[str]]]] = {}
        self.recording = False
        self.token = secrets.token_hex(16)

    def __enter__(self) -> Agents:
        from edgeva.agent import mqtt as m
        from edgeva.control.fleet_client import FleetClient
        from edgeva.control.mosquitto import Mosquitto

        self.broker = Mosquitto(self.tmp / "broker").start()
        for dev, cpus in self.devices.items():
            cmd = [*agent_argv(dev, self.broker.url), "--state-dir", str(self.tmp / dev), "--prefix", f"pp{os.getpid()}{dev}",
                   "--metrics-interval", "1", "--event-rate", "1000"]
            if self.data:  # agents that hand each other parts share a fleet token
                cmd += ["--data-bind", "tcp://127.0.0.1:0", "--fleet-token", self.token]
            log = open(self.tmp / f"{dev}.log", "wb")  # noqa: SIM115 - the process owns it
            self.procs.append(subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None))
        self.fleet = FleetClient(self.broker.url)
        self.fleet.wait_devices(len(self.devices), timeout=60)
        topics = [events_subscription(tenant=DEFAULT_TENANT), device_metrics_subscription()]
        self.mq = m.connect(self.broker.url, m.MqttOptions(client_id_prefix="edgeva-paper"),
                            on_connect=lambda c: c.subscribe([(t, 0) for t in topics]))
        self.mq.on_message = self._on
        m.subscribe_wait(self.mq, topics)
        return self

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        topic = parse_topic(msg.topic)
        if topic is None:
            return
        if topic.kind == "metrics" and topic.tenant is None:  # edgeva/v1/{device}/metrics
            try:
                dm = json.loads(msg.payload)
            except ValueError:
                return
            if self.recording:  # after the run the apps go, and their links with them
                self.links[topic.device] = dm.get("links", {})
                self.modules[topic.device] = dm.get("modules", {})
                self.arrays[topic.device] = {peer: _by_module(lk.get("arrays") or {})
                                             for peer, lk in (dm.get("links") or {}).items()}
            return
        if not self.recording:
            return
        try:
            ev = json.loads(msg.payload)
        except ValueError:
            return
        if topic.kind != "events" or not isinstance(ev, dict) or "latency_ms" not in ev:
            return  # an app's own events (roi counts, reid matches): not the sink's
        now = time.monotonic()
        with self.lock:
            self.events.setdefault(topic.name, []).append((now, ev["latency_ms"], ev.get("hops")))

    def run(self, deps: list[dict], seconds: float, warmup: float = 3.0) -> dict[str, list]:
        """Deploy ``deps`` on the first device (it coordinates the others), let them settle,
        record ``seconds`` of events, remove them; per app ``[(t_s, latency_ms, hops), ...]``."""
        from edgeva.control.client import EdgevaClient

        first = next(iter(self.devices))
        with EdgevaClient(self.broker.url, first) as client:
            try:
                for dep in deps:
                    reply = client.request("deploy", dep, timeout=180)
                    if not reply.get("ok"):
                        raise RuntimeError(f"deploy {dep['app']}: {reply.get('error')}")
                time.sleep(warmup)
                with self.lock:
                    self.events, self.modules, self.arrays, self.links = {}, {}, {}, {}
                self.recording = True
                t0 = time.monotonic()
                time.sleep(seconds)
                self.recording = False
            finally:
                for dep in reversed(deps):
                    client.request("remove", {"app": dep["app"]}, timeout=120)
        with self.lock:
            return {app: [(t - t0, lat, hops) for t, lat, hops in evs if t - t0 <= seconds]
                    for app, evs in self.events.items()}

    def __exit__(self, *exc: object) -> None:
        from edgeva.agent import mqtt as m

        m.close(self.mq)
        self.fleet.close()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.broker.stop()
