"""Pins of the control plane (issue 25), against one real agent on a real mosquitto (MQTT 5):

- the agent echoes MQTT 5 correlation data on its replies (every client of the other tests also
  puts a ``request_id`` in the payload and falls back on it, which hid a reply without it);
- ``EdgevaClient.request`` gets a reply that arrives before its ``publish()`` returned (the
  pending slot must exist before the request leaves);
- the per-tenant shared-memory limit (``--max-shm-mb``) holds across deploys: two apps each
  under it, together over it: the second is refused with ``limit``, the first runs on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeva.control.client import EdgevaClient
from tests.agent_harness import AgentProc, Commander, Watcher
from tests.brokers import Broker

pytestmark = pytest.mark.slow  # one agent for the file: ~3 s to start

# 160x120 frames: one app's rings take 3.9 MiB (decoder 0.9, publish 3.0): one fits in 6 MiB, two do not.
FRAME_W, FRAME_H = 160, 120
MAX_SHM_MB = 6.0


def _app(name: str, fps: int) -> dict:
    """A decoder and a publish; apps with another ``fps`` share no module (identical modules
    of two apps run once, and cost once)."""
    return {"app": name, "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": fps, "width": FRAME_W,
                                            "height": FRAME_H}, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}}}}


class Agent:
    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.device = f"pin-{uuid.uuid4().hex[:6]}"
        self.broker = broker
        self.w = Watcher(broker.url)
        self.proc = AgentProc(broker.url, self.device, tmp / "agent", self.w, "--max-shm-mb", str(MAX_SHM_MB))
        self.cmd = Commander(self.w, self.device)


@pytest.fixture(scope="module")
def agent(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(mosquitto, tmp_path_factory.mktemp("pins-control"))
    try:
        yield a
    finally:
        a.proc.stop()
        a.w.close()


def _v5_client(broker: Broker) -> tuple[mqtt.Client, list[mqtt.MQTTMessage], threading.Event]:
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pin-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)

    def on_message(_c, _u, msg: mqtt.MQTTMessage) -> None:
        got.append(msg)
        arrived.set()

    subscribed = threading.Event()
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c, got, subscribed


@pytest.mark.parametrize("corr", [b"\x00\xffbinary-7", "req-\u00e9".encode()])
def test_replies_echo_the_correlation_data_with_no_request_id_to_fall_back_on(agent: Agent, corr: bytes) -> None:
    inbox = f"edgeva/v1/{agent.device}/default/reply/inbox{uuid.uuid4().hex[:8]}"
    c, got, subscribed = _v5_client(agent.broker)
    try:
        c.subscribe(inbox, qos=1)
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = inbox
        props.CorrelationData = corr
        # no request_id in the payload: the correlation data is the only way to match the reply
        c.publish(f"edgeva/v1/{agent.device}/default/cmd/status", json.dumps({}), qos=1, properties=props)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got, "no reply on the response topic"
        reply = got[0]
        assert reply.topic == inbox
        assert getattr(reply.properties, "CorrelationData", None) == corr, reply.properties
        body = json.loads(reply.payload)
        assert body["ok"] is True and "apps" in body["result"], body
    finally:
        c.loop_stop()
        c.disconnect()


def test_the_client_gets_a_reply_that_arrives_before_publish_returns(agent: Agent) -> None:
    with EdgevaClient(agent.broker.url, agent.device) as dev:
        assert dev.v5
        delivered = threading.Event()
        on_reply, publish = dev._on_reply, dev._client.publish
        raced: list[bool] = []

        def on_reply_seen(msg) -> None:
            on_reply(msg)
            delivered.set()

        def publish_late(topic, *args, **kw):
            info = publish(topic, *args, **kw)
            if "/cmd/" in topic:
                # return only once the reply went through the client's on_message: the race
                # where the agent answers before publish() comes back, forced
                raced.append(delivered.wait(15))
            return info

        dev._on_reply = on_reply_seen
        dev._client.publish = publish_late
        reply = dev.request("status", {}, timeout=20)
        assert raced == [True], "the reply did not arrive while publish() was held"
        assert reply["ok"] is True and "apps" in reply["result"], reply


def test_the_tenant_shared_memory_limit_holds_across_deploys(agent: Agent) -> None:
    r = agent.cmd.send("deploy", _app("first", 10))
    assert r["ok"], r  # under the limit alone
    first = r["result"]["modules"]["dec"]["instance"]
    ev = f"edgeva/v1/{agent.device}/default/events/first"
    try:
        r2 = agent.cmd.send("deploy", _app("second", 11))
        assert r2["ok"] is False and r2["error"]["code"] == "limit", r2
        assert "--max-shm-mb" in r2["error"]["message"], r2
        # nothing of the refused app runs; the first app runs on and still delivers
        status = agent.cmd.send("status", {})["result"]["apps"]
        assert "second" not in status and status["first"]["status"] == "running", status
        n = len(agent.w.get(ev))
        agent.w.wait(ev, lambda ms: sum(1 for e in ms[n:] if isinstance(e, dict) and "frame_id" in e) >= 3,
                     timeout=20)
        state = agent.w.wait(f"edgeva/v1/{agent.device}/state",
                             lambda ms: first in (ms[-1] or {}).get("modules", {}), timeout=10)[-1]
        assert not any(k for k in state["modules"] if "second" in k), state["modules"]
    finally:
        agent.cmd.send("undeploy", {"app": "first"})
