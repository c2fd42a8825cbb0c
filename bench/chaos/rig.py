"""What ``bench chaos`` runs and breaks: a private mosquitto, the test RTSP camera, two real
``edgeva agent`` processes with a TCP proxy on their link, busy processes beside them, and an
MQTT listener that records every app's events and every module's state.

Device A runs the demo's three apps (the bundled clip, looped) and the camera's decoder; device
B runs the split app's sink: decoder on A -> nng link -> publish on B. A's id sorts first, so A
listens for B's link; A binds 127.0.0.2 and announces 127.0.0.1, where a proxy per port it may
take forwards to it, so that the bench can cut the link in the middle.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgeva.bench.proxy import TcpProxy
from edgeva.bench.rtsp import RtspPeer
from edgeva.control.processes import agent_argv
from edgeva.schemas.topics import (
    DEFAULT_TENANT,
    events_subscription,
    parse_topic,
    state_subscription,
)

LINK_PORTS = 4  # a restarted listener takes the next port while the old one is in TIME_WAIT
CAMERA_FPS = 10.0
APP_FPS = 10.0


def bench_apps(camera_url: str, dev_a: str, dev_b: str) -> list[tuple[str, dict]]:
    """(device to deploy on, deployment) of the four apps. The demo's apps each end in a
    ``publish`` of every frame (the tracking app's own publish loses its rate limit; roi and
    reid gain one), so that every frame id of every app shows in its events."""
    from edgeva.control.demo.apps import demo_apps

    out = []
    for dep in demo_apps(video=None):
        mods = dep["modules"]
        mods["decoder"]["args"]["loop"] = True
        if "publish" in mods:
            mods["publish"]["args"].pop("max_rate", None)
        else:
            last = next(n for n, m in mods.items() if n != "tracker" and not m["outputs"] and m["type"] != "publish")
            mods[last]["outputs"] = ["publish"]
            mods["publish"] = {"type": "publish", "args": {"fields": []}, "outputs": []}
        out.append((dev_a, dep))
    split = {"app": "split", "modules": {
        "camera": {"type": "decoder", "args": {"source": camera_url, "fps": APP_FPS}, "device": dev_a,
                   "outputs": ["publish"]},
        "publish": {"type": "publish", "args": {"fields": []}, "device": dev_b, "outputs": []},
    }}
    out.append((dev_b, split))  # B coordinates: it hands A its part
    return out


def _free_link_port() -> int:
    """A port P with P..P+LINK_PORTS-1 free on 127.0.0.1 (the proxies) and 127.0.0.2 (agent A)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            port = s.getsockname()[1]
        if port + LINK_PORTS > 65535:
            continue
        try:
            for host in ("127.0.0.1", "127.0.0.2"):
                for p in range(port, port + LINK_PORTS):
                    with socket.socket() as s:
                        s.bind((host, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no run of free ports for the agents' link")


class Recorder:
    """Every app's events (``(monotonic arrival, frame_id, ts)``) and every module state change
    (``(monotonic, device, module, apps, status, backoff_s)``), from one MQTT connection that
    re-subscribes after a broker restart."""

    def __init__(self, url: str) -> None:
        from edgeva.agent import mqtt as m

        self.lock = threading.Lock()
        self.events: dict[str, list[tuple[float, int, float]]] = {}
        self.modules: list[tuple[float, str, str, list[str], str, float | None]] = []
        self.pids: dict[tuple[str, str], tuple[int | None, str, str]] = {}  # (device, module) -> pid, status, type
        topics = [events_subscription(tenant=DEFAULT_TENANT), state_subscription()]
        self.client = m.connect(url, m.MqttOptions(client_id_prefix="edgeva-chaos"),
                                on_connect=lambda c: c.subscribe([(t, 1) for t in topics]))
        self.client.on_message = self._on
        m.subscribe_wait(self.client, topics)

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.monotonic()
        topic = parse_topic(msg.topic)
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if topic is None or not isinstance(data, dict):
            return
        if topic.kind == "state":
            self._state(now, topic.device, data)
        elif topic.kind == "events" and "event" not in data and isinstance(data.get("frame_id"), int) \
                and "latency_ms" in data:
            with self.lock:  # a publish sink's per-frame event (not roi's or reid's own events)
                self.events.setdefault(topic.name, []).append((now, data["frame_id"], float(data.get("ts") or 0)))

    def _state(self, now: float, device: str, data: dict) -> None:
        mods = data.get("modules") or {}
        with self.lock:
            for key in [k for k in self.pids if k[0] == device and k[1] not in mods]:
                del self.pids[key]
            for name, m in mods.items():
                if not isinstance(m, dict):
                    continue
                self.pids[(device, name)] = (m.get("pid"), m.get("status", ""), m.get("type", ""))
                self.modules.append((now, device, name, list(m.get("apps") or []), m.get("status", ""),
                                     m.get("backoff_s")))

    def running(self) -> list[tuple[str, str, int]]:
        """(device, module, pid) of every module the states say runs, sorted."""
        with self.lock:
            return sorted((d, n, pid) for (d, n), (pid, st, _t) in self.pids.items() if pid and st == "running")

    def snapshot(self) -> tuple[dict[str, list[tuple[float, int, float]]], list]:
        with self.lock:
            return {a: list(v) for a, v in self.events.items()}, list(self.modules)

    def close(self) -> None:
        from edgeva.agent import mqtt as m

        m.close(self.client)


class Rig:
    """``with Rig(tmp, busy=2, nice=0) as rig``: everything started; ``rig.agents[dev]`` each a
    ``Popen``; ``kill_agent`` / ``start_agent`` as systemd would; ``pids()`` of what it runs."""

    def __init__(self, busy: int = 2, nice: int = 0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeva-chaos-"))
        tag = f"chaos{os.getpid()}"
        self.dev_a, self.dev_b = f"{tag}-a", f"{tag}-b"
        self.prefixes = {self.dev_a: f"{tag}a", self.dev_b: f"{tag}b"}
        self.busy_n, self.nice = busy, nice
        self.agents: dict[str, subprocess.Popen] = {}
        self.busy: list[subprocess.Popen] = []
        self.proxies: list[TcpProxy] = []
        self.logs: dict[str, Path] = {}

    def __enter__(self) -> Rig:
        from edgeva.control.fleet_client import FleetClient
        from edgeva.control.mosquitto import Mosquitto

        try:
            self.broker = Mosquitto(self.tmp / "broker").start()
            self.logs["mosquitto"] = self.tmp / "broker" / "mosquitto.log"
            self.camera = RtspPeer(self.tmp, rate=int(CAMERA_FPS * 2.5)).start()
            port = _free_link_port()
            self.proxies = [TcpProxy("127.0.0.2", p, listen_port=p) for p in range(port, port + LINK_PORTS)]
            token = self.tmp / "fleet-token"
            token.write_text(secrets.token_hex(16) + "\n")
            token.chmod(0o600)
            self._cmd = {dev: [*agent_argv(dev, self.broker.url), "--state-dir", str(self.tmp / dev), "--prefix", self.prefixes[dev], "--metrics-interval", "1",
                "--url-host", "127.0.0.1", "--fleet-token-file", str(token), "--data-advertise", "127.0.0.1",
                "--data-bind", f"tcp://127.0.0.2:{port if dev == self.dev_a else 0}",
            ] for dev in (self.dev_a, self.dev_b)}
            for dev in self._cmd:
                self.start_agent(dev)
            self.fleet = FleetClient(self.broker.url)
            self.fleet.wait_devices(2, timeout=90)
            self.recorder = Recorder(self.broker.url)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_agent(self, dev: str) -> None:
        self.logs[dev] = self.tmp / f"{dev}.log"
        with open(self.logs[dev], "ab") as log:
            self.agents[dev] = subprocess.Popen(self._cmd[dev], stdout=log, stderr=subprocess.STDOUT)

    def kill_agent(self, dev: str) -> int:
        proc = self.agents[dev]
        proc.kill()
        proc.wait()
        return proc.pid

    def start_busy(self) -> None:
        """The busy processes (``nice`` > 0: at that niceness), beside everything else."""
        for _ in range(self.busy_n):
            self.busy.append(subprocess.Popen(
                [sys.executable, "-c", "while True: pass"],
                preexec_fn=(lambda n=self.nice: os.nice(n)) if self.nice else None))

    def deploy(self) -> None:
        from edgeva.control.client import EdgevaClient

        for dev, dep in bench_apps(self.camera.url, self.dev_a, self.dev_b):
            with EdgevaClient(self.broker.url, dev) as client:
                reply = client.request("deploy", dep, timeout=180)
            if not reply.get("ok"):
                raise RuntimeError(f"deploying {dep['app']} on {dev} failed: {reply.get('error')}")

    def popen_pids(self) -> set[int]:
        """Processes the bench waits for itself (never reaped as orphans)."""
        procs = [*self.agents.values(), *self.busy, self.broker.proc, self.camera._ffmpeg]
        return {p.pid for p in procs if p is not None}

    def __exit__(self, *exc: object) -> None:
        for closer in (getattr(self, "recorder", None), getattr(self, "fleet", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: BLE001 - tearing down: the next one must still run
                    pass
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in self.busy:
            proc.kill()
            proc.wait()
        for p in self.proxies:
            p.close()
        if getattr(self, "camera", None) is not None:
            self.camera.stop()
        if getattr(self, "broker", None) is not None:
            self.broker.stop()
