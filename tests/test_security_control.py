"""Hostile tenants on the control plane (issue 15): each test runs a real agent process as its
own broker user behind mosquitto with the ACL edgeva ships (docs/mosquitto/acl), and tenants
``acme`` and ``globex`` that can only touch their own topics."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.agent_harness import AgentProc, Commander, Watcher
from tests.brokers import Broker

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 10, "width": 64, "height": 48}}


def app(name: str, dec: dict | None = None) -> dict:
    return {"app": name, "modules": {"dec": {**(dec or DEC), "outputs": ["pub"]},
                                     "pub": {"type": "publish", "args": {}}}}


@dataclass
class Fleet:
    device: str
    observer: Watcher
    agent: AgentProc
    tenants: dict[str, Watcher]
    broker: Broker

    def cmd(self, tenant: str) -> Commander:
        return Commander(self.tenants[tenant], self.device, tenant)


def start_fleet(broker: Broker, root: Path, *agent_args: str) -> Fleet:
    device = f"sec-{uuid.uuid4().hex[:6]}"
    obs = Watcher(broker.url, username="observer", password=broker.users["observer"])
    agent = AgentProc(broker.url, device, root / "agent", obs, "--username", "agent",
                      "--password", broker.users["agent"], *agent_args)
    tenants = {t: Watcher(broker.url, mqtt.MQTTv5, username=t, password=broker.users[t],
                          topics=(f"edgeva/v1/+/{t}/#",)) for t in ("acme", "globex")}
    return Fleet(device, obs, agent, tenants, broker)


def stop_fleet(f: Fleet) -> None:
    f.agent.stop()
    for w in (f.observer, *f.tenants.values()):
        w.close()


@pytest.fixture
def fleet(mosquitto_auth: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = start_fleet(mosquitto_auth, tmp_path)
    yield f
    stop_fleet(f)


def everything_received(w: Watcher) -> str:
    with w.cond:
        return json.dumps({t: ms for t, ms in w.msgs.items()}, default=str)


# -- hole 1 -------------------------------------------------------------------------------------
def test_deeply_nested_payload_is_refused_and_commands_go_on(fleet: Fleet) -> None:
    """Hole 1: a JSON nested 1,100 deep killed the command thread (RecursionError outside the
    handler's try): it gets a bad_json reply, and every tenant's next command is answered."""
    deep = '{"request_id":"@RID@","app":"n1","modules":{"m":{"type":"decoder","args":{"a":' \
        + "[" * 1100 + "1" + "]" * 1100 + "}}}}"
    r = fleet.cmd("acme").send("deploy", deep, timeout=15)
    assert r["ok"] is False and r["error"]["code"] == "bad_json", r
    assert "deeper than" in r["error"]["message"]
    for verb in ("status", "update", "stop"):  # every verb reads the request id first
        r = fleet.cmd("acme").send(verb, '{"request_id":"@RID@","app":' + "[" * 5000 + "]" * 5000 + "}",
                                   timeout=15)
        assert r["ok"] is False and r["error"]["code"] == "bad_json", r
    r = fleet.cmd("globex").send("status", {}, timeout=15)  # the thread still runs, for everyone
    assert r["ok"] is True and r["result"]["apps"] == {}
    r = fleet.cmd("acme").send("deploy", app("fine"), timeout=30)
    assert r["ok"] is True, r


# -- hole 2 -------------------------------------------------------------------------------------
def publish_v5(w: Watcher, topic: str, payload: dict, response_topic: str, corr: bytes = b"c1") -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = corr
    w.client.publish(topic, json.dumps(payload), qos=1, properties=props).wait_for_publish(5)


def test_response_topic_cannot_reach_another_tenant(fleet: Fleet) -> None:
    """Hole 2: globex named acme's events topic as its MQTT 5 response topic and the agent,
    with its own broker rights, published globex's text there. Now: refused, nothing is run,
    the refusal goes to globex's own reply topic; echoed input is quoted and bounded."""
    dev, globex, acme = fleet.device, fleet.tenants["globex"], fleet.tenants["acme"]
    victim = f"edgeva/v1/{dev}/acme/events/cameras"
    rid = "r-" + uuid.uuid4().hex[:8]
    evil = {"request_id": rid, "app": "y", "modules": {"m": {"type": "ALARM: intruder at door 3"}}}
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/deploy", evil, victim)
    r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid}", timeout=15)[0]
    assert r["ok"] is False and r["error"]["code"] == "bad_request" and r["error"]["path"] == "response_topic", r
    # The same through a valid deploy: it must not run either.
    rid2 = "r-" + uuid.uuid4().hex[:8]
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/deploy", {**app("g1"), "request_id": rid2},
               f"edgeva/v1/{dev}/globex/reply/+")
    r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid2}", timeout=15)[0]
    assert r["error"]["path"] == "response_topic", r
    # Its own inbox works, with the correlation data echoed.
    inbox = f"edgeva/v1/{dev}/globex/reply/inbox-{uuid.uuid4().hex[:6]}"
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/status", {}, inbox)
    r = globex.wait(inbox, timeout=15)[0]
    assert r["ok"] is True and r["result"]["apps"] == {}, r  # g1 was not deployed
    # Echoed input is quoted and bounded.
    long_type = "ALARM " + "x" * 5000
    r = fleet.cmd("globex").send("deploy", {"app": "z", "modules": {"m": {"type": long_type}}})
    assert r["error"]["code"] == "unknown_type"
    assert len(r["error"]["message"]) <= 600 and "'ALARM xx" in r["error"]["message"], r
    time.sleep(1.0)
    assert acme.get(victim) == [], acme.get(victim)
    assert "ALARM" not in everything_received(acme)
