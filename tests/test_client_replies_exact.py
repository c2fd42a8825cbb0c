"""How ``EdgevaClient`` matches replies to requests, exactly (issue 25: the survivors of
``make mutants`` on control/client.py). One real broker (mosquitto, MQTT 5; a 3.1.1 client on it
for the reply-topic mode) and a stand-in agent written with plain paho whose answers each test
chooses: correlation data echoed or lost, a payload ``request_id`` that is null or wrong, a reply
that arrives before ``publish()`` returns, a late reply, a reply that is not a reply.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeva.agent import mqtt as m
from edgeva.control.client import BadReply, EdgevaClient, RequestTimeout
from edgeva.schemas.commands import error_reply, ok_reply
from edgeva.schemas.errors import NOT_FOUND, EdgevaError
from tests.brokers import Broker

# How the stand-in agent answers one command: (reply topic, payload, correlation data to set);
# an empty list: no answer.
Answer = Callable[["Cmd"], list[tuple[str, bytes, bytes | None]]]


class Cmd:
    """One command as the agent received it."""

    def __init__(self, msg: mqtt.MQTTMessage) -> None:
        self.topic = msg.topic
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.body: dict[str, Any] = json.loads(msg.payload)
        props = msg.properties if msg.properties else None
        self.response_topic: str | None = getattr(props, "ResponseTopic", None)
        self.correlation: bytes | None = getattr(props, "CorrelationData", None)
        self.rid = self.body.get("request_id")
        self.device, self.tenant = msg.topic.split("/")[2], msg.topic.split("/")[3]

    @property
    def rid_topic(self) -> str:
        """Where a 3.1.1 reply goes: ``reply/{request_id}``."""
        return f"edgeva/v1/{self.device}/{self.tenant}/reply/{self.rid}"


def by_the_protocol(cmd: Cmd) -> list[tuple[str, bytes, bytes | None]]:
    """What a correct agent does: the response topic with the correlation data echoed, else
    ``reply/{request_id}``."""
    reply = ok_reply(cmd.rid, {"verb": cmd.topic.rsplit("/", 1)[1]})
    if cmd.response_topic:
        return [(cmd.response_topic, reply, cmd.correlation)]
    return [(cmd.rid_topic, reply, None)]


class Agent:
    """A stand-in agent for one device: plain paho, MQTT 5, answers with ``self.answer``."""

    def __init__(self, broker: Broker) -> None:
        self.device = f"rx-{uuid.uuid4().hex[:6]}"
        self.answer: Answer = by_the_protocol
        self.received: list[Cmd] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{self.device}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        # QoS 2: a command then arrives at the QoS it was published with
        self.client.subscribe(f"edgeva/v1/{self.device}/+/cmd/+", qos=2)
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = Cmd(msg)
        self.received.append(cmd)
        for topic, payload, corr in self.answer(cmd):
            self.send(topic, payload, corr)

    def send(self, topic: str, payload: bytes, corr: bytes | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if corr is not None:
            props.CorrelationData = corr
        self.client.publish(topic, payload, qos=1, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def agent(mosquitto: Broker) -> Iterator[Agent]:
    a = Agent(mosquitto)
    yield a
    a.close()


def v311(broker: Broker, device: str) -> EdgevaClient:
    """An MQTT 3.1.1 operator (reply topic per request) on the MQTT 5 broker."""
    return EdgevaClient(broker.url, device, options=m.MqttOptions(protocol="3.1.1"))


# -- MQTT 5: correlation data ----------------------------------------------------------------


def test_correlation_data_alone_matches_a_reply_whose_request_id_is_null(mosquitto: Broker, agent: Agent) -> None:
    # an agent that could not read the command's id (docs/protocol.md: it still answers on
    # the response topic): only the echoed correlation data says which request this answers
    agent.answer = lambda c: [(c.response_topic or "", error_reply(None, EdgevaError(NOT_FOUND, "gone", "app")),
                               c.correlation)]
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        assert dev.v5 and dev.inbox
        reply = dev.request("remove", {"app": "a", "request_id": "r-corr"}, timeout=5)
        assert reply == {"request_id": None, "ok": False,
                         "error": {"code": "not_found", "message": "gone", "path": "app"}}
        cmd = agent.received[-1]
        assert cmd.response_topic == dev.inbox and cmd.correlation == b"r-corr"
        assert cmd.qos == 1 and not cmd.retain  # commands: QoS 1, never retained
        assert dev._pending == {}


def test_correlation_data_wins_over_the_payloads_request_id(mosquitto: Broker, agent: Agent) -> None:
    # two requests in flight; the agent answers the second first, each reply's payload naming
    # the OTHER request: the correlation data decides
    gate = threading.Event()
    held: list[Cmd] = []

    def crossed(c: Cmd) -> list[tuple[str, bytes, bytes | None]]:
        held.append(c)
        if len(held) < 2:
            return []
        gate.set()
        a, b = held
        return [(b.response_topic or "", ok_reply(a.rid, {"for": b.rid}), b.correlation),
                (a.response_topic or "", ok_reply(b.rid, {"for": a.rid}), a.correlation)]

    agent.answer = crossed
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        out: dict[str, dict[str, Any]] = {}
        t = threading.Thread(target=lambda: out.__setitem__("one", dev.request("status", {"request_id": "one"}, 5)))
        t.start()
        while not held:
            time.sleep(0.01)
        out["two"] = dev.request("status", {"request_id": "two"}, timeout=5)
        t.join(5)
        assert gate.is_set()
    assert out["one"]["result"] == {"for": "one"} and out["two"]["result"] == {"for": "two"}


def test_a_v5_reply_that_lost_its_correlation_data_falls_back_to_the_request_id(
        mosquitto: Broker, agent: Agent) -> None:
    agent.answer = lambda c: [(c.response_topic or "", ok_reply(c.rid, {"n": 1}), None)]
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        assert dev.request("status", {"request_id": "no-corr"}, timeout=5)["result"] == {"n": 1}


def test_a_reply_that_arrives_before_publish_returns_is_not_lost(mosquitto: Broker, agent: Agent) -> None:
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        publish, on_reply = dev._client.publish, dev._on_reply
        delivered = threading.Event()
        raced: list[bool] = []

        def on_reply_seen(msg: mqtt.MQTTMessage) -> None:
            on_reply(msg)
            delivered.set()

        def publish_late(topic: str, *args: Any, **kw: Any) -> mqtt.MQTTMessageInfo:
            info = publish(topic, *args, **kw)
            raced.append(delivered.wait(5))  # return only once the reply went through
            return info

        dev._on_reply = on_reply_seen  # type: ignore[method-assign]
        dev._client.publish = publish_late  # type: ignore[method-assign]
        reply = dev.request("status", {"request_id": "early"}, timeout=5)
    assert raced == [True] and reply["request_id"] == "early" and reply["result"] == {"verb": "status"}


# -- MQTT 3.1.1: reply/{request_id} --------------------------------------------------------------


def test_v311_reply_topic_names_the_request_and_is_unsubscribed_after(mosquitto: Broker, agent: Agent) -> None:
    # the topic names the request: a payload without an id still reaches it
    agent.answer = lambda c: [(c.rid_topic, ok_reply(None, {"t": c.rid}), None)]
    with v311(mosquitto, agent.device) as dev:
        assert not dev.v5 and dev.inbox is None
        assert dev.request("status", {"request_id": "v3-a"}, timeout=5)["result"] == {"t": "v3-a"}
        assert dev.request("start", {"request_id": "v3-b", "app": "x"}, timeout=5)["result"] == {"t": "v3-b"}
        assert dev._filters == {}  # each request's reply topic is given back
        assert [c.response_topic for c in agent.received] == [None, None]
        # a stray reply for a request no longer pending changes nothing
        agent.send(agent.received[0].rid_topic, ok_reply("v3-a", {}))
        assert dev.request("status", {"request_id": "v3-c"}, timeout=5)["result"] == {"t": "v3-c"}


def test_a_v311_request_whose_reply_topic_cannot_be_subscribed_fails_cleanly(mosquitto: Broker) -> None:
    with v311(mosquitto, f"rx-{uuid.uuid4().hex[:6]}") as dev:
        dev._client.disconnect()  # the broker is gone: the reply topic cannot be subscribed
        dev._client.loop_stop()
        with pytest.raises(m.MqttError, match="cannot subscribe to .*/reply/gone-1"):
            dev.request("status", {"request_id": "gone-1"}, timeout=0.5)
        assert dev._filters == {} and dev._pending == {}


def test_generated_request_ids_are_fresh_and_echoed(mosquitto: Broker, agent: Agent) -> None:
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        first, second = dev.request("status"), dev.request("status", {"request_id": ""})
    ids = [c.rid for c in agent.received]
    assert ids == [first["request_id"], second["request_id"]] and ids[0] != ids[1]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert [c.correlation for c in agent.received] == [i.encode() for i in ids]


# -- timeouts, late and bad replies ----------------------------------------------------------------


def test_a_timeout_is_on_time_and_a_late_reply_harms_nothing(mosquitto: Broker, agent: Agent) -> None:
    late: list[Cmd] = []
    agent.answer = lambda c: (late.append(c), [])[1] if c.body.get("app") == "slow" else by_the_protocol(c)
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        result: dict[str, Any] = {}

        def ask() -> None:
            t0 = time.monotonic()
            try:
                dev.request("stop", {"app": "slow"}, timeout=0.3)
            except RequestTimeout as exc:
                result["exc"] = exc
            result["s"] = time.monotonic() - t0

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "request(timeout=0.3) did not return within 5 s"
        assert 0.3 <= result["s"] < 0.9, result["s"]
        assert str(result["exc"]).startswith("no reply from device ")
        assert " within 0.3s" in str(result["exc"]) and dev._pending == {}
        # the late answer comes in with nobody waiting: the client goes on
        for topic, payload, corr in by_the_protocol(late[0]):
            agent.send(topic, payload, corr)
        time.sleep(0.1)
        assert dev.request("status", timeout=5)["ok"] is True


def test_the_default_request_and_state_timeouts_are_10_s(mosquitto: Broker, agent: Agent,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a clock that jumps 100 s between reading the deadline and waiting: the wait is 0 and the
    # error names the timeout that was applied
    class Jumpy:
        def __init__(self) -> None:
            self.now = 0.0

        def monotonic(self) -> float:
            self.now += 100.0
            return self.now

    agent.answer = lambda c: []
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        monkeypatch.setattr("edgeva.control.client.time", Jumpy())
        with pytest.raises(RequestTimeout, match=r"^no reply from device \S+ within 10s"):
            dev.request("status")
        state: list[BaseException] = []
        waiter = threading.Thread(target=lambda: state.append(pytest.raises(RequestTimeout, dev.wait_state).value),
                                  daemon=True)  # a wait that does not end fails the test, not hangs it
        waiter.start()
        waiter.join(5)
        assert not waiter.is_alive() and re.match(r"no state from device \S+ within 10s", str(state[0]))


def test_a_reply_that_is_not_a_reply_is_bad_reply(mosquitto: Broker, agent: Agent) -> None:
    agent.answer = lambda c: [(c.response_topic or "", json.dumps({"request_id": c.rid, "hello": 1}).encode(),
                               c.correlation)]
    with EdgevaClient(mosquitto.url, agent.device) as dev:
        with pytest.raises(BadReply, match=f"device {agent.device} sent a malformed reply to status"):
            dev.request("status", timeout=5)
        assert dev._pending == {}


def test_the_acl_hint_names_the_user_of_the_broker_url(mosquitto: Broker) -> None:
    # a user given in the URL (not in the options): the hint still names it
    url = mosquitto.url.replace("mqtt://", "mqtt://acme:pw@")
    with EdgevaClient(url, f"nobody-{uuid.uuid4().hex[:4]}", "acme") as dev, \
            pytest.raises(RequestTimeout, match="may user acme use tenant acme's topics"):
        dev.request("status", timeout=0.2)
    with EdgevaClient(mosquitto.url, "nobody") as dev, pytest.raises(RequestTimeout) as exc:
        dev.request("status", timeout=0.2)
    assert "ACL" not in str(exc.value)  # anonymous: no user to name


def test_options_are_keyword_only_and_used(mosquitto: Broker, agent: Agent) -> None:
    with EdgevaClient(broker_url=mosquitto.url, device=agent.device, tenant="t2",
                      options=m.MqttOptions(protocol="3.1.1", client_id_prefix="opx"), connect_timeout=3) as dev:
        assert not dev.v5 and dev._client._client_id.decode().startswith("opx-")
        assert dev.request("status", timeout=5)["ok"] is True
    assert agent.received[-1].topic == f"edgeva/v1/{agent.device}/t2/cmd/status"
    with pytest.raises(TypeError):
        EdgevaClient(mosquitto.url, agent.device, "t2", m.MqttOptions())  # type: ignore[misc]


def test_a_client_that_cannot_have_an_inbox_closes_its_connection(mosquitto: Broker) -> None:
    # a client id that cannot be a reply topic's last part: refused after connecting, and that
    # connection (its network thread) does not outlive the refusal
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(EdgevaError, match="invalid request_id"):
        EdgevaClient(mosquitto.url, "d1", options=m.MqttOptions(client_id_prefix="op#bad"))
    deadline = time.monotonic() + 5
    while {t.name for t in threading.enumerate()} - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {t.name for t in threading.enumerate()} - before == set()
