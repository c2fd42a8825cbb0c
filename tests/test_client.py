"""EdgevaClient and the device CLI commands against real brokers (mosquitto MQTT 5, amqtt 3.1.1),
with a stand-in agent written with plain paho, and the mosquitto command-line clients."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeva.agent import mqtt as m
from edgeva.cli import main
from edgeva.control.broker import free_port
from edgeva.control.client import EdgevaClient, RequestTimeout
from edgeva.schemas.commands import error_reply, ok_reply
from edgeva.schemas.deployment import parse_deployment
from edgeva.schemas.errors import NOT_FOUND, EdgevaError
from edgeva.schemas.metrics import AppMetrics, ModuleMetrics, TenantMetrics
from edgeva.schemas.state import DeviceState
from tests.brokers import Broker

NATIVE = {
    "app": "tracking",
    "modules": {
        "decoder": {"type": "decoder", "args": {"source": "synthetic", "fps": 10}, "outputs": ["publish"]},
        "publish": {"type": "publish", "args": {}},
    },
}
LISTING1 = {
    "Decoder_1": {"decoder_args": {"source": "synthetic"}, "runtime_args": {"outputs": ["Publish_1"]}},
    "Publish_1": {"publish_args": {}, "runtime_args": {}},
}


class Responder:
    """A stand-in agent for ``device``: a plain paho client (not edgeva's code) answering every
    command per protocol v1, on the response topic when the request carried one."""

    def __init__(self, broker: Broker, device: str = "dev1", username: str | None = None) -> None:
        self.device = device
        self.received: list[dict[str, Any]] = []
        self.stray: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"resp-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5 if broker.v5 else mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, broker.users[username])
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"edgeva/v1/{device}/+/cmd/+", qos=1)
        assert subscribed.wait(5)

    def answer(self, verb: str, body: dict[str, Any]) -> bytes | None:
        rid, app = body.get("request_id"), body.get("app")
        if app == "missing":
            return error_reply(rid, EdgevaError(NOT_FOUND, f"no app named {app!r}", "app"))
        if app == "silent":
            return None
        if verb == "deploy":
            dep = parse_deployment(body)
            mods = {n: {"instance": f"{n}-1", "status": "running", "shared_with": [], "pid": 42}
                    for n in dep.modules}
            return ok_reply(rid, {"app": dep.app, "status": "running", "modules": mods})
        if verb == "metrics":
            return ok_reply(rid, sample_metrics(self.device).model_dump(mode="json"))
        return ok_reply(rid, {"device": self.device, "apps": {}} if verb == "status" else {"app": app})

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not mqtt.topic_matches_sub(f"edgeva/v1/{self.device}/+/cmd/+", msg.topic):
            self.stray.append(msg.topic)  # amqtt 0.12 unpatched: other clients' retained msgs
            return
        tenant, verb = msg.topic.split("/")[3], msg.topic.split("/")[5]
        body = json.loads(msg.payload)
        props = msg.properties if msg.properties else None
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        self.received.append({"topic": msg.topic, "body": body, "response_topic": response_topic,
                              "correlation": correlation})
        reply = self.answer(verb, body)
        if reply is None:
            return
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                out.CorrelationData = correlation
            self.client.publish(response_topic, reply, qos=1, properties=out)
        else:
            self.client.publish(f"edgeva/v1/{self.device}/{tenant}/reply/{body['request_id']}", reply, qos=1)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sample_metrics(device: str, frames: int = 10, ts: float | None = None) -> TenantMetrics:
    return TenantMetrics(
        device=device, tenant="default", ts=ts or time.time(), interval_s=1.0,
        apps={"tracking": AppMetrics(frames=frames, latency_ms={"p50": 12.0, "p95": 30.0}, events=3)},
        modules={"decoder-1": ModuleMetrics(type="decoder", frames_out=frames,
                                            occupancy={"publish-1": 0.25}, dropped={"publish-1": 2})},
    )


@pytest.fixture
def responder(mqtt_broker: Broker) -> Iterator[Responder]:
    r = Responder(mqtt_broker)
    yield r
    r.close()
    assert r.stray == []  # nothing it did not subscribe to (see control.broker._fixed_broker_class)


@pytest.fixture
def mosquitto_responder(mosquitto: Broker) -> Iterator[Responder]:
    r = Responder(mosquitto)
    yield r
    r.close()


def cli(broker: Broker, *argv: str) -> int:
    return main([*argv, "--broker", broker.url])


# -- the client ---------------------------------------------------------------------------------


def test_request_reply_uses_the_brokers_protocol(mqtt_broker: Broker, responder: Responder) -> None:
    with EdgevaClient(mqtt_broker.url, "dev1") as dev:
        assert dev.v5 is mqtt_broker.v5  # auto: MQTT 5 on mosquitto, falls back on amqtt
        reply = dev.request("status", {})
        again = dev.request("status", {"request_id": "mine-1"})
    assert reply["ok"] is True and reply["result"] == {"device": "dev1", "apps": {}}
    assert again["request_id"] == "mine-1"
    sent = responder.received[-1]
    assert sent["topic"] == "edgeva/v1/dev1/default/cmd/status"
    if mqtt_broker.v5:  # response topic + correlation data, under the tenant's reply/ prefix
        assert sent["response_topic"].startswith("edgeva/v1/dev1/default/reply/edgeva-cli-")
        assert sent["correlation"] == b"mine-1"
    else:
        assert sent["response_topic"] is None


def test_v311_client_on_mqtt5_broker_uses_reply_topic(mosquitto: Broker) -> None:
    r = Responder(mosquitto)  # an MQTT 5 agent answering a 3.1.1 operator
    try:
        with EdgevaClient(mosquitto.url, "dev1", options=m.MqttOptions(protocol="3.1.1")) as dev:
            assert not dev.v5
            assert dev.request("start", {"app": "a"})["result"] == {"app": "a"}
        assert r.received[-1]["response_topic"] is None
    finally:
        r.close()


def test_error_reply_is_returned_not_raised(mqtt_broker: Broker, responder: Responder) -> None:
    with EdgevaClient(mqtt_broker.url, "dev1") as dev:
        reply = dev.request("remove", {"app": "missing"})
    assert reply["ok"] is False and reply["error"]["code"] == "not_found"


def test_timeout_says_what_to_check(mqtt_broker: Broker) -> None:
    with EdgevaClient(mqtt_broker.url, "nobody") as dev, pytest.raises(RequestTimeout) as exc:
        dev.request("status", {}, timeout=0.3)
    assert str(exc.value).startswith(
        "no reply from device nobody within 0.3s: is its agent running and connected to this broker"
    )


def test_unreachable_broker_and_bad_names() -> None:
    port = free_port()
    with pytest.raises(m.MqttError, match=f"cannot reach broker at 127.0.0.1:{port}"):
        EdgevaClient(f"mqtt://127.0.0.1:{port}", "dev1")
    with pytest.raises(EdgevaError, match="invalid device"):
        EdgevaClient(f"mqtt://127.0.0.1:{port}", "dev/#")
    assert m.parse_broker_url("mqtts://b.lan") == m.BrokerURL("b.lan", 8883, True)
    assert m.parse_broker_url("10.0.0.2").port == 1883
    with pytest.raises(ValueError, match="scheme"):
        m.parse_broker_url("http://b.lan")


def test_state_events_and_metrics_streams(mqtt_broker: Broker, responder: Responder) -> None:
    device = f"dev-{uuid.uuid4().hex[:6]}"
    state = DeviceState(device=device, status="online", ts=time.time())
    responder.publish(f"edgeva/v1/{device}/state", state.model_dump_json(), retain=True)
    with EdgevaClient(mqtt_broker.url, device) as dev:
        assert dev.wait_state(online=True, timeout=5).status == "online"
        with pytest.raises(RequestTimeout, match="still online"):
            dev.wait_state(online=False, timeout=0.3)
        with dev.subscribe_events() as events:
            responder.publish(f"edgeva/v1/{device}/default/events/tracking", '{"frame_id": 7}')
            got = events.get(timeout=5)
        assert got.topic.endswith("/events/tracking") and got.json() == {"frame_id": 7}
        stream = dev.watch_metrics(idle_timeout=5)
        threading.Timer(0.2, responder.publish, (f"edgeva/v1/{device}/default/metrics",
                                                 sample_metrics(device).model_dump_json())).start()
        assert next(stream).apps["tracking"].frames == 10
        stream.close()


def test_last_will_marks_the_device_offline(mqtt_broker: Broker) -> None:
    device = f"dev-{uuid.uuid4().hex[:6]}"
    offline = DeviceState(device=device, status="offline").model_dump_json()
    agent = m.connect(mqtt_broker.url, will=m.Will(f"edgeva/v1/{device}/state", offline))
    online = DeviceState(device=device, status="online").model_dump_json()
    agent.publish(f"edgeva/v1/{device}/state", online, qos=1, retain=True).wait_for_publish(5)
    with EdgevaClient(mqtt_broker.url, device) as dev:
        assert dev.wait_state(online=True, timeout=5).status == "online"
        agent.socket().shutdown(socket.SHUT_RDWR)  # vanish without DISCONNECT, like a crash
        agent.loop_stop()
        assert dev.wait_state(online=False, timeout=5).status == "offline"


def test_tenant_acl(mosquitto_auth: Broker) -> None:
    agent = Responder(mosquitto_auth, username="agent")
    acme = m.MqttOptions(username="acme", password="acme-secret")
    try:
        with EdgevaClient(mosquitto_auth.url, "dev1", "acme", options=acme) as dev:
            assert dev.request("status", {})["ok"]
        # acme may not command globex's apps: mosquitto acknowledges and drops the publish
        sent = len(agent.received)
        with EdgevaClient(mosquitto_auth.url, "dev1", "globex", options=acme) as dev, \
                pytest.raises(RequestTimeout, match="may user acme use tenant globex"):
            dev.request("status", {}, timeout=0.3)
        assert len(agent.received) == sent
        with pytest.raises(m.MqttError, match="refused the connection"):
            EdgevaClient(mosquitto_auth.url, "dev1", "acme", options=m.MqttOptions(username="acme", password="x"))
    finally:
        agent.close()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_exit_codes(mqtt_broker: Broker, responder: Responder, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(mqtt_broker, "status", "--device", "dev1") == 0
    assert cli(mqtt_broker, "start", "--device", "dev1", "--app", "a") == 0
    assert cli(mqtt_broker, "remove", "--device", "dev1", "--app", "missing") == 1
    assert "error not_found at app: no app named 'missing'" in capsys.readouterr().err
    assert cli(mqtt_broker, "stop", "--device", "nobody", "--app", "a", "--timeout", "0.3") == 3
    assert "no reply from device nobody within 0.3s" in capsys.readouterr().err
    assert cli(mqtt_broker, "update", "--device", "dev1", "--app", "a", "--module", "m") == 2
    assert "nothing to change" in capsys.readouterr().err
    assert cli(mqtt_broker, "update", "--device", "dev1", "--app", "a", "--module", "roi",
               "--set", "fps=5", "--set", "name=door", "--args", '{"polygon": [[0, 0], [1, 1]]}') == 0
    assert responder.received[-1]["body"]["args"] == {"polygon": [[0, 0], [1, 1]], "fps": 5, "name": "door"}
    capsys.readouterr()
    assert cli(mqtt_broker, "status", "--device", "dev1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["result"]["device"] == "dev1"
    with pytest.raises(SystemExit) as exc:
        main(["start", "--app", "a"])
    assert exc.value.code == 2


def test_cli_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["status", "--device", "d", "--broker", f"mqtt://127.0.0.1:{port}"]) == 3
    assert f"cannot reach broker at 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["status", "--device", "d", "--broker", "http://x"]) == 2


def test_cli_deploy_native_and_listing1(mqtt_broker: Broker, responder: Responder, tmp_path: Any,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    native, listing = tmp_path / "native.json", tmp_path / "listing1.json"
    native.write_text(json.dumps(NATIVE))
    listing.write_text(json.dumps(LISTING1))
    assert cli(mqtt_broker, "deploy", str(native), "--device", "dev1") == 0
    assert "app tracking: running" in capsys.readouterr().out
    assert responder.received[-1]["body"]["modules"]["decoder"]["outputs"] == ["publish"]

    assert cli(mqtt_broker, "deploy", str(listing), "--device", "dev1") == 1  # no app name
    assert "error bad_request at app" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(listing.read_text()))
    assert cli(mqtt_broker, "deploy", "-", "--device", "dev1", "--app", "paper") == 0
    body = responder.received[-1]["body"]
    assert body["app"] == "paper" and body["modules"]["Decoder_1"]["type"] == "decoder"
    assert body["modules"]["Decoder_1"]["outputs"] == ["Publish_1"]

    sent = len(responder.received)
    dup = tmp_path / "dup.json"
    dup.write_text('{"app": "x", "modules": {"a": {"type": "t"}, "a": {"type": "t"}}}')
    assert cli(mqtt_broker, "deploy", str(dup), "--device", "dev1") == 1
    assert "error duplicate_name at modules.a" in capsys.readouterr().err
    assert cli(mqtt_broker, "deploy", str(tmp_path / "nope.json"), "--device", "dev1") == 2
    assert len(responder.received) == sent  # nothing sent for a bad or missing file


def test_cli_metrics_watch(mqtt_broker: Broker, responder: Responder,
                           capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()

    def feed() -> None:  # the agent's periodic metrics
        frames = 10
        while not stop.wait(0.1):
            frames += 10
            responder.publish("edgeva/v1/dev1/default/metrics",
                              sample_metrics("dev1", frames).model_dump_json())

    threading.Thread(target=feed, daemon=True).start()
    try:
        assert cli(mqtt_broker, "metrics", "--device", "dev1", "--watch", "--count", "3") == 0
    finally:
        stop.set()
    out = capsys.readouterr().out
    assert out.count("APP") == 3 and "tracking" in out and "decoder-1" in out and "25%" in out
    assert cli(mqtt_broker, "metrics", "--device", "dev1") == 0
    assert "P95 MS" in capsys.readouterr().out


# -- interop with a client edgeva did not write -------------------------------------------------


def _tools() -> None:
    if not shutil.which("mosquitto_pub"):
        pytest.fail("mosquitto-clients missing: run tools/install-system-packages.sh", pytrace=False)


def _mosquitto_sub(port: str, topic: str) -> subprocess.Popen:
    """mosquitto_sub for one message on ``topic``, returned once the broker acknowledged the
    subscription (``-d`` prints "Subscribed" on SUBACK): no race with what is published next."""
    # stdbuf: line-buffered, or -d's lines sit in the pipe buffer until exit
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d", "-p", port, "-q", "1", "-C", "1",
                            "-W", "60", "-t", topic], stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    seen = []
    for line in sub.stdout:
        seen.append(line)
        if line.startswith("Subscribed"):
            return sub
    sub.wait(5)
    raise AssertionError(f"mosquitto_sub never subscribed to {topic}: {''.join(seen)}")


def _payload(sub: subprocess.Popen) -> dict:
    """The one message's JSON payload (the line among -d's debug lines that is JSON)."""
    out, _ = sub.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_mosquitto_clients_reply_topic_mode(mosquitto: Broker, mosquitto_responder: Responder) -> None:
    _tools()
    port = str(mosquitto.port)
    sub = _mosquitto_sub(port, "edgeva/v1/dev1/default/reply/op-1")
    subprocess.run(["mosquitto_pub", "-p", port, "-q", "1", "-t", "edgeva/v1/dev1/default/cmd/status",
                    "-m", '{"request_id": "op-1"}'], check=True, timeout=30)
    assert _payload(sub) == {"request_id": "op-1", "ok": True, "result": {"device": "dev1", "apps": {}}}


def test_mosquitto_rr_response_topic_mode(mosquitto: Broker, mosquitto_responder: Responder) -> None:
    """The docs' MQTT 5 examples: mosquitto_rr sets the response topic (no request id needed)."""
    _tools()
    rr = ["mosquitto_rr", "-V", "5", "-p", str(mosquitto.port), "-q", "1", "-W", "5",
          "-e", "edgeva/v1/dev1/default/reply/ops-1"]
    out = subprocess.run([*rr, "-t", "edgeva/v1/dev1/default/cmd/remove", "-m", '{"app": "missing"}'],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert json.loads(out)["error"]["code"] == "not_found"
    # mosquitto_rr 2.0 sends an empty payload for -f FILE: the docs use -m "$(cat FILE)"
    out = subprocess.run([*rr, "-t", "edgeva/v1/dev1/default/cmd/deploy", "-m", json.dumps(NATIVE, indent=2)],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert json.loads(out)["result"]["app"] == "tracking"


def test_edgeva_client_against_mosquitto_clients_agent(mosquitto: Broker) -> None:
    """The client's reply-topic mode answered by a shell agent: mosquitto_sub + mosquitto_pub."""
    _tools()
    port = str(mosquitto.port)
    sub = _mosquitto_sub(port, "edgeva/v1/shell/+/cmd/+")
    result: dict[str, Any] = {}

    def operator() -> None:
        with EdgevaClient(mosquitto.url, "shell", options=m.MqttOptions(protocol="3.1.1")) as dev:
            result["reply"] = dev.request("status", {"request_id": "sh-1"}, timeout=5)

    t = threading.Thread(target=operator)
    t.start()
    assert _payload(sub)["request_id"] == "sh-1"
    subprocess.run(["mosquitto_pub", "-p", port, "-q", "1", "-t", "edgeva/v1/shell/default/reply/sh-1",
                    "-m", '{"request_id": "sh-1", "ok": true, "result": {"apps": {}}}'], check=True)
    t.join(10)
    assert result["reply"]["ok"] is True
