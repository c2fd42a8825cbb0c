"""The broker goes away for 30 s while an app runs: nothing is lost, nothing applied twice."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from edgeva.agent import mqtt as m
from edgeva.control.mosquitto import Mosquitto
from tests.agent_harness import AgentProc, Commander, Watcher

APP = {"app": "ticks", "modules": {
    "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 10, "width": 64, "height": 48},
            "outputs": ["pub"]},
    "pub": {"type": "publish", "args": {}},
}}


class _Events:
    """Every event's frame id, from a client that resubscribes after each reconnect."""

    def __init__(self, url: str, topic: str) -> None:
        self.ids: list[int] = []
        self.cond = threading.Condition()
        self.client = m.connect(url, m.MqttOptions(client_id_prefix="outage-test"),
                                on_connect=lambda c: c.subscribe(topic, 1))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_message = self._on
        m.subscribe_wait(self.client, topic)

    def _on(self, _c, _u, msg) -> None:
        with self.cond:
            self.ids.append(json.loads(msg.payload)["frame_id"])
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float) -> list[int]:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.ids), timeout), f"got {self.ids[-5:]} ({len(self.ids)})"
            return list(self.ids)


@pytest.mark.slow
def test_broker_killed_30s_events_buffered_and_flushed_commands_back_soon(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    watcher = agent = events = None
    try:
        watcher = Watcher(broker.url)
        watcher.client.reconnect_delay_set(min_delay=1, max_delay=1)
        watcher.client.on_connect = lambda c, *a: c.subscribe("edgeva/v1/#", qos=1)
        agent = AgentProc(broker.url, "outage", tmp_path / "agent", watcher)
        cmd = Commander(watcher, "outage")
        events = _Events(broker.url, "edgeva/v1/outage/default/events/ticks")
        assert cmd.send("deploy", APP)["ok"]
        before = events.wait_for(lambda ids: len(ids) >= 10, 30)

        broker.stop(kill=True)
        time.sleep(30)
        broker.start()
        t_back = time.monotonic()
        # commands work again within 5 s of the broker's return
        reply = None
        while reply is None and time.monotonic() - t_back < 5:
            try:
                reply = cmd.send("status", {}, timeout=1)
            except AssertionError:
                pass
        assert reply is not None and reply["ok"], "no status reply within 5 s of the broker's return"
        # the events of the 30 s without a broker arrive, and no frame was lost on the way
        first = before[0]
        ids = events.wait_for(lambda ids: len(ids) > 30 * 10 + len(before) and
                              set(range(first, max(ids) + 1)) <= set(ids), 30)
        assert max(ids) - first > 300
        # ... in order: live events wait behind the flushed backlog (bench chaos saw them overtake it)
        got = [i for i in ids if i >= first]
        assert got == sorted(got), [(a, b) for a, b in zip(got, got[1:], strict=False) if b < a][:5]
        st = cmd.send("status", {})
        assert st["ok"]
    finally:
        for x in (events,):
            if x is not None:
                m.close(x.client)
        if agent is not None:
            agent.stop()
        if watcher is not None:
            watcher.close()
        broker.stop()


def test_a_repeated_request_id_is_answered_not_applied_again(mosquitto, tmp_path):
    watcher = Watcher(mosquitto.url, protocol=5)
    agent = AgentProc(mosquitto.url, f"dedup{uuid.uuid4().hex[:4]}", tmp_path / "agent", watcher)
    try:
        cmd = Commander(watcher, agent.device)
        rid = "deploy-once-1"
        topic = f"edgeva/v1/{agent.device}/default/reply/{rid}"

        def deploy_with_fixed_id() -> dict:
            n = len(watcher.get(topic))
            watcher.client.publish(f"edgeva/v1/{agent.device}/default/cmd/deploy",
                                   json.dumps({"request_id": rid, **APP}), qos=1)
            return watcher.wait(topic, lambda ms: len(ms) > n, timeout=60)[-1]

        first = deploy_with_fixed_id()
        assert first["ok"], first
        assert cmd.send("remove", {"app": "ticks"})["ok"]
        # the same deploy again (a client retrying after a reconnect): same reply, not re-applied
        assert deploy_with_fixed_id() == first
        status = cmd.send("status", {})
        assert "ticks" not in status["result"]["apps"], status
        # a new request id is applied as usual
        assert cmd.send("deploy", APP)["ok"]
        assert "ticks" in cmd.send("status", {})["result"]["apps"]
    finally:
        agent.stop()
        watcher.close()
