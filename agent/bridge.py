"""The agent's MQTT side: commands in, replies/state/metrics/events out.

Commands are queued by paho's network thread and executed one at a time by a worker thread, so
a slow deploy never stalls the connection (keep-alives, other replies) and two commands never
interleave. Replies go to the MQTT 5 response topic (with the correlation data) when the
request named one, else to ``edgeva/v1/{device}/{tenant}/reply/{request_id}``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core import AgentCore
from agent.mqtt import MqttOptions, Will, close, connect, is_v5, subscribe_wait
from schemas.commands import error_reply, extract_request_id, ok_reply, parse_command
from schemas.deployment import Deployment
from schemas.errors import INTERNAL, EdgevaError
from schemas.topics import (
    cmd_subscription,
    device_metrics_topic,
    events_topic,
    parse_cmd_topic,
    reply_topic,
    state_topic,
    tenant_metrics_topic,
)

log = logging.getLogger("edgeva.bridge")


class _Bucket:
    """Token bucket: at most ``rate`` events/s per app, bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.t = rate, 2 * rate, time.monotonic()
        self.dropped = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class AgentBridge:
    """Runs an ``AgentCore`` behind an MQTT connection until ``stop()``."""

    def __init__(
        self,
        core_args: dict[str, Any],
        broker: str,
        options: MqttOptions | None = None,
        metrics_period: float = 2.0,
        event_rate: float = 100.0,
        data_addr: str | None = None,
    ) -> None:
        self.device = core_args["device"]
        self.broker, self.options = broker, options or MqttOptions(client_id_prefix=f"edgeva-agent-{self.device}")
        self.metrics_period, self.event_rate, self.data_addr = metrics_period, event_rate, data_addr
        self.cmds: queue.Queue = queue.Queue()
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self._stop = threading.Event()
        self._state_dirty = threading.Event()
        self.core = AgentCore(**core_args, emit_event=self._emit_event, state_changed=self._state_dirty.set)
        self.client: mqtt.Client | None = None
        self._cmd_sub = cmd_subscription(self.device)

    # -- connection --------------------------------------------------------------------------------
    def start(self) -> None:
        offline = json.dumps({"device": self.device, "status": "offline"})
        self.client = connect(
            self.broker, self.options, will=Will(state_topic(self.device), offline),
            on_connect=self._on_connect,
        )
        self.client.on_message = self._on_message
        subscribe_wait(self.client, cmd_subscription(self.device))
        self._publish_state()
        threading.Thread(target=self._work, name="commands", daemon=True).start()
        threading.Thread(target=self._tick, name="metrics", daemon=True).start()
        log.info("agent %s connected to %s (MQTT %s)", self.device, self.broker, "5" if is_v5(self.client) else "3.1.1")

    def _on_connect(self, client: mqtt.Client) -> None:
        # After a reconnect: subscriptions of a clean session are gone, state must be re-told.
        client.subscribe(cmd_subscription(self.device), qos=1)
        self._state_dirty.set()

    def _on_message(self, client: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        # Some brokers (amqtt 0.12) deliver retained messages we never subscribed to: only
        # our own command topics are commands.
        if m.retain or not mqtt.topic_matches_sub(self._cmd_sub, m.topic):
            return
        self.cmds.put((m.topic, m.payload, getattr(m, "properties", None)))

    # -- commands ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, props = self.cmds.get(timeout=0.5)
            except queue.Empty:
                continue
            self._handle(topic, payload, props)

    def _handle(self, topic: str, payload: bytes, props: Properties | None) -> None:
        t0 = time.monotonic()
        request_id = extract_request_id(payload)
        tenant = None
        try:
            device, tenant, verb = parse_cmd_topic(topic)
            if device != self.device:
                return
            cmd = parse_command(verb, payload)
            request_id = getattr(cmd, "request_id", None) or request_id
            result = self._dispatch(tenant, verb, cmd)
            reply = ok_reply(request_id, result)
        except EdgevaError as e:
            log.info("%s refused: %s", topic, e)
            reply = error_reply(request_id, e)
        except Exception as e:  # never let one command take the agent down
            log.exception("command %s failed", topic)
            reply = error_reply(request_id, EdgevaError(INTERNAL, f"{type(e).__name__}: {e}"))
        self._reply(tenant, request_id, reply, props)
        log.debug("%s handled in %.1f ms", topic, (time.monotonic() - t0) * 1e3)
        if self._state_dirty.is_set():
            self._publish_state()

    def _dispatch(self, tenant: str, verb: str, cmd: Any) -> dict:
        core = self.core
        if verb == "deploy":
            assert isinstance(cmd, Deployment)
            return core.deploy(tenant, cmd)
        handler = {"update": core.update, "start": core.start, "stop": core.stop, "remove": core.remove,
                   "status": core.status, "metrics": core.metrics}[verb]
        return handler(tenant, cmd)

    def _reply(self, tenant: str | None, request_id: str | None, reply: bytes, props: Properties | None) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)
            corr = getattr(props, "CorrelationData", None)
            if corr is not None:
                out.CorrelationData = corr
            self.client.publish(response_topic, reply, qos=1, properties=out)
        elif tenant is not None and request_id is not None:
            self.client.publish(reply_topic(self.device, tenant, request_id), reply, qos=1)
        else:
            log.warning("no request_id and no response topic: cannot reply (%s)", reply[:200])

    # -- outputs ----------------------------------------------------------------------------------
    def _emit_event(self, tenant: str, app: str, event: dict) -> None:
        bucket = self.buckets.get((tenant, app))
        if bucket is None:
            bucket = self.buckets[(tenant, app)] = _Bucket(self.event_rate)
        if bucket.take() and self.client is not None:
            self.client.publish(events_topic(self.device, tenant, app), json.dumps(event, separators=(",", ":")), qos=0)

    def _publish_state(self) -> None:
        self._state_dirty.clear()
        state = self.core.device_state(self.data_addr)
        self.client.publish(state_topic(self.device), state.model_dump_json(), qos=1, retain=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.metrics_period):
            try:
                self.publish_metrics()
                if self._state_dirty.is_set():
                    self._publish_state()
            except Exception:
                log.exception("metrics publication failed")

    def publish_metrics(self) -> None:
        mods = self.core._module_metrics()
        self.client.publish(device_metrics_topic(self.device), self.core.device_metrics(mods).model_dump_json(), qos=0)
        for tenant in self.core.tenants():
            m = self.core.tenant_metrics(tenant, mods=mods)
            self.client.publish(tenant_metrics_topic(self.device, tenant), m.model_dump_json(), qos=0)

    def stop(self) -> None:
        """Stop modules (the desired state keeps the apps for the next start), say offline."""
        self._stop.set()
        self.core.close()
        if self.client is not None:
            offline = json.dumps({"device": self.device, "status": "offline", "ts": time.time()})
            self.client.publish(state_topic(self.device), offline, qos=1, retain=True).wait_for_publish(2)
            close(self.client)
