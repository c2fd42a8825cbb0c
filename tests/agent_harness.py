"""Test harness: a real ``edgeva agent`` process and a plain paho client that records traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent


class Watcher:
    """Subscribes to ``edgeva/v1/#`` and keeps every JSON message by topic."""

    def __init__(self, url: str, protocol: int = mqtt.MQTTv311, username: str | None = None,
                 password: str | None = None, topics: tuple[str, ...] = ("edgeva/v1/#",)) -> None:
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
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(10), "watcher could not subscribe"

    def _on_message(self, _c, _u, m: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(m.payload) if m.payload else None
        except (ValueError, RecursionError):  # hostile payloads of security tests
            payload = m.payload
        with self.cond:
            self.msgs[m.topic].append(payload)
            self.cond.notify_all()

    def wait(self, topic: str, pred: Callable[[list], bool] = bool, timeout: float = 20.0) -> list:
        """Block until ``pred(messages on topic)`` holds; returns those messages."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.msgs.get(topic, [])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timeout waiting on {topic}: got {self.msgs.get(topic, [])[-3:]}")
                self.cond.wait(left)
            return list(self.msgs[topic])

    def get(self, topic: str) -> list:
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
        tenant = tenant or self.tenant
        rid = uuid.uuid4().hex[:12]
        if isinstance(payload, dict):
            payload = json.dumps({"request_id": rid, **payload})
        else:
            text = payload.decode() if isinstance(payload, bytes) else payload
            payload = text.replace("@RID@", rid)
        self.w.client.publish(f"edgeva/v1/{self.device}/{tenant}/cmd/{verb}", payload, qos=1)
        return self.w.wait(f"edgeva/v1/{self.device}/{tenant}/reply/{rid}", timeout=timeout)[0]


class AgentProc:
    """``edgeva agent`` as a child process; waits until its retained state says online."""

    def __init__(self, url: str, device: str, state_dir: Path, watcher: Watcher, *extra: str) -> None:
        self.device, self.url, self.state_dir = device, url, state_dir
        self.log = state_dir / "agent.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "agent", "--device", device, "--broker", url,
             "--state-dir", str(state_dir), "--metrics-interval", "0.5", *extra],
            cwd=ROOT, stdout=self._logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        topic = f"edgeva/v1/{device}/state"
        try:
            watcher.wait(topic, lambda ms: any(m and m.get("status") == "online" and m.get("ts", 0) > time.time() - 30
                                               for m in ms[-1:]), timeout=30)
        except AssertionError:
            self.stop()
            raise AssertionError(f"agent did not come online:\n{self.log.read_text()[-3000:]}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()
