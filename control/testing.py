"""Test helpers for module and deployment authors (the pytest plugin's building blocks).

Real parts only: an embedded amqtt broker in this process, ``edgeva agent`` as a child process
with its own state directory, and plain MQTT clients. ``control.pytest_plugin`` wraps these in
fixtures (docs/testing.md); edgeva's own tests use them too.

- ``Broker``: where a running broker listens (``.url`` for ``--broker`` and clients).
- ``Watcher``: subscribes to ``edgeva/v1/#`` and keeps every message by topic; ``wait(topic,
  pred)`` blocks until the messages on a topic satisfy ``pred``.
- ``Commander``: sends a command with a plain paho client and waits for its reply.
- ``AgentProcess``: ``edgeva agent`` as a child process, returned once its retained state says
  online; ``stop()`` (SIGTERM) or ``kill()``.
- ``scrape``: fetch and parse an agent's Prometheus ``/metrics`` page.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeva.control.processes import agent_argv, stop_process
from edgeva.schemas.topics import PREFIX, reply_topic, state_topic

__all__ = ["AgentProcess", "Broker", "Commander", "EdgevaKit", "Watcher", "scrape"]


@dataclass
class Broker:
    """A running broker, as tests see it."""

    host: str
    port: int
    kind: str
    v5: bool
    users: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for ``edgeva agent --broker`` and ``EdgevaClient``."""
        return f"mqtt://{self.host}:{self.port}"


class Watcher:
    """Subscribes to ``edgeva/v1/#`` and keeps every message by topic (JSON decoded when it
    parses, the raw bytes otherwise)."""

    def __init__(self, url: str, protocol: int = mqtt.MQTTv311, topic: str = f"{PREFIX}/#",
                 username: str | None = None, password: str | None = None,
                 topics: tuple[str, ...] | None = None) -> None:
        """``topics``: several filters instead of ``topic`` (a tenant may read only its own)."""
        host, port = url.split("://")[1].split(":")
        self.msgs: dict[str, list] = defaultdict(list)
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in (topics or (topic,))])
        if not subscribed.wait(10):
            self.close()
            raise AssertionError(f"watcher could not subscribe to {topic} on {url}")

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(m.payload) if m.payload else None
        except (ValueError, RecursionError):  # hostile payloads (security tests)
            payload = m.payload
        with self.cond:
            self.msgs[m.topic].append(payload)
            self.cond.notify_all()

    def wait(self, topic: str, pred: Callable[[list], bool] = bool, timeout: float = 20.0) -> list:
        """Block until ``pred(messages on topic)`` holds; returns those messages. Raises
        ``AssertionError`` (with the last messages seen) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.msgs.get(topic, [])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timeout waiting on {topic}: got {self.msgs.get(topic, [])[-3:]}")
                self.cond.wait(left)
            return list(self.msgs[topic])

    def get(self, topic: str) -> list:
        """The messages received on ``topic`` so far."""
        with self.cond:
            return list(self.msgs.get(topic, []))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Commander:
    """Sends commands with a plain paho client (reply-topic mode) and waits for the reply."""

    def __init__(self, watcher: Watcher, device: str, tenant: str = "default") -> None:
        self.w, self.device, self.tenant = watcher, device, tenant

    def send(self, verb: str, payload: dict | str | bytes, tenant: str | None = None, timeout: float = 30.0) -> dict:
        """Publish ``cmd/verb`` (a dict gets a fresh ``request_id``; in a str/bytes payload
        ``@RID@`` is replaced by it) and return the reply."""
        tenant = tenant or self.tenant
        rid = uuid.uuid4().hex[:12]
        if isinstance(payload, dict):
            payload = json.dumps({"request_id": rid, **payload})
        else:
            text = payload.decode() if isinstance(payload, bytes) else payload
            payload = text.replace("@RID@", rid)
        # Built here, not with cmd_topic: a test may send a verb or tenant the agent must refuse.
        self.w.client.publish(f"{PREFIX}/{self.device}/{tenant}/cmd/{verb}", payload, qos=1)
        return self.w.wait(reply_topic(self.device, tenant, rid), timeout=timeout)[0]


class AgentProcess:
    """``edgeva agent`` as a child process; the constructor returns once the agent's retained
    state says online (``AssertionError`` with the end of its log otherwise). Its output goes
    to ``state_dir/agent.log``. ``extra``: more ``edgeva agent`` arguments; unless they hold a
    ``--url-host``, modules may reach 127.0.0.1 (a test's RTSP or inference server; an agent
    reaches no host by default). ``metrics_port``: serve Prometheus metrics there (0: a free
    port), at ``.metrics_url``. ``wrap``: a command the agent's command line is appended to
    (it must ``exec`` it, so the agent keeps the pid: e.g. ``unshare`` for a private /dev/shm)."""

    def __init__(self, url: str, device: str, state_dir: Path, watcher: Watcher, *extra: str,
                 metrics_interval: float = 0.5, metrics_port: int | None = None, cwd: Path | None = None,
                 timeout: float = 30.0, wrap: Sequence[str] = ()) -> None:
        self.device, self.url, self.state_dir = device, url, state_dir
        if "--url-host" not in extra:
            extra = (*extra, "--url-host", "127.0.0.1")
        if metrics_port == 0:
            from edgeva.control.broker import free_port

            metrics_port = free_port()
        self.metrics_port = metrics_port
        if metrics_port is not None:
            extra = (*extra, "--metrics-port", str(metrics_port))
        self.log = state_dir / "agent.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*wrap, *agent_argv(device, url, "--state-dir", str(state_dir), "--metrics-interval",
                                str(metrics_interval), *extra)],
            cwd=cwd, stdout=self._logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        topic = state_topic(device)
        try:
            watcher.wait(topic, lambda ms: any(m and m.get("status") == "online" and m.get("ts", 0) > time.time() - 30
                                               for m in ms[-1:]), timeout=timeout)
        except AssertionError:
            self.stop()
            raise AssertionError(f"agent did not come online:\n{self.log.read_text()[-3000:]}") from None

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` when started with ``metrics_port``, else None."""
        return None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def stop(self) -> None:
        """SIGTERM (modules stop, state says offline), SIGKILL after 20 s."""
        stop_process(self.proc, timeout=20)
        self._logf.close()


def scrape(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET a Prometheus ``/metrics`` page and parse it with ``prometheus_client``'s text
    parser; returns ``{family name: Metric}`` (a counter's family is named without ``_total``;
    its samples keep it)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


class EdgevaKit:
    """One agent seen through the operator's client (``control.client.EdgevaClient``): deploy
    a graph, then wait for its events or metrics. What the ``edgeva`` fixture yields.

    Events of an app are subscribed to before its deploy is sent, so none is missed."""

    def __init__(self, broker: Broker, agent: AgentProcess, client: Any) -> None:
        self.broker, self.agent, self.client = broker, agent, client
        self.device = agent.device
        self._subs: dict[str, Any] = {}
        self._events: dict[str, list[dict]] = defaultdict(list)

    def request(self, verb: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a command; return the reply's ``result``. ``AssertionError`` with the agent's
        error (code, message, path) when the reply is not ok."""
        reply = self.client.request(verb, payload, timeout=timeout)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise AssertionError(f"{verb} refused by {self.device}: {err.get('code')}: {err.get('message')} "
                                 f"(at {err.get('path')})")
        return reply.get("result") or {}

    def deploy(self, graph: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Deploy ``graph`` (``{"app": ..., "modules": {...}}``); returns the reply's result."""
        app = graph["app"]
        if app not in self._subs:
            self._subs[app] = self.client.subscribe_events(app)
        return self.request("deploy", graph, timeout)

    def remove(self, app: str) -> dict[str, Any]:
        """Remove ``app`` from the device; returns the reply's result."""
        return self.request("remove", {"app": app})

    def wait_events(self, app: str, n: int = 1, timeout: float = 30.0,
                    pred: Callable[[dict], bool] | None = None) -> list[dict]:
        """Block until ``n`` events of ``app`` (those passing ``pred``, when given) arrived
        since its deploy; returns all events received so far, oldest first."""
        sub = self._subs.get(app)
        if sub is None:
            raise ValueError(f"app {app!r} was not deployed through this kit: deploy() subscribes to its events")
        deadline = time.monotonic() + timeout
        got = self._events[app]
        while sum(1 for e in got if pred is None or pred(e)) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{app}: {sum(1 for e in got if pred is None or pred(e))} of {n} events "
                                     f"after {timeout:g}s; last: {got[-3:]}\nagent log: {self.agent.log}")
            try:
                got.append(sub.get(left).json())
            except TimeoutError:
                continue
        return list(got)

    def wait_metrics(self, app: str, pred: Callable[[Any], bool] = lambda am: am.frames > 0,
                     timeout: float = 30.0) -> Any:
        """Block until a metrics message of the app's tenant has ``app`` with ``pred(AppMetrics)``
        true (default: some frame reached its last module); returns that ``AppMetrics``."""
        from edgeva.control.client import RequestTimeout

        deadline = time.monotonic() + timeout
        last = None
        try:
            for tm in self.client.watch_metrics(app, idle_timeout=timeout):
                am = getattr(tm, "apps", {}).get(app)
                if am is not None:
                    last = am
                    if pred(am):
                        return am
                if time.monotonic() > deadline:
                    break
        except RequestTimeout:
            pass
        raise AssertionError(f"{app}: metrics did not satisfy the condition within {timeout:g}s; last: {last}")

    def close(self) -> None:
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()
