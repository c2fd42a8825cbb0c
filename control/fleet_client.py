"""``FleetClient``: one MQTT connection that talks to many devices at once.

``EdgevaClient`` talks to one device. An operator of a fleet wants "status of every camera" or
"deploy this to these 50" without one connection (and one subscription round trip) per device:

    with FleetClient("mqtt://broker:1883") as fleet:
        fleet.wait_devices(100, timeout=30)               # retained states of 100 online agents
        replies = fleet.request_many(fleet.online(), "status", {})
        replies = fleet.request_many(cams, "deploy", app) # same payload, a request id per device

Replies come on ``edgeva/v1/+/{tenant}/reply/+`` (one wildcard subscription, taken once), so it
works the same under MQTT 3.1.1 and 5 and needs only the tenant's usual ACL lines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edgeva.agent import mqtt as m
from edgeva.schemas.state import DeviceState
from edgeva.schemas.topics import (
    ANY,
    DEFAULT_TENANT,
    cmd_topic,
    parse_topic,
    reply_subscription,
    state_subscription,
)


class FleetClient:
    """Retained states of every device, and commands to many devices with their replies."""

    def __init__(self, url: str, tenant: str = DEFAULT_TENANT, options: m.MqttOptions | None = None) -> None:
        self.tenant = tenant
        self._cond = threading.Condition()
        self._states: dict[str, DeviceState] = {}
        self._replies: dict[str, dict[str, Any]] = {}  # request id -> reply
        self._client = m.connect(url, options or m.MqttOptions(client_id_prefix="edgeva-fleet"),
                                 on_connect=self._subscribe)
        self._client.on_message = self._on_message
        m.subscribe_wait(self._client, self._filters())

    def _filters(self) -> list[str]:
        return [state_subscription(), reply_subscription(ANY, self.tenant)]

    def _subscribe(self, client: mqtt.Client) -> None:
        client.subscribe([(t, 1) for t in self._filters()])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = parse_topic(msg.topic)
        if topic is None:
            return
        if topic.kind == "state":
            try:
                st = DeviceState.model_validate_json(msg.payload)
            except ValidationError:
                return  # not ours to judge: a stray retained message
            if topic.device != st.device:
                return  # a device speaks only for itself (the ACL decides who writes its topic)
            with self._cond:
                self._states[st.device] = st
                self._cond.notify_all()
        elif topic.kind == "reply" and not msg.retain:
            try:
                reply = json.loads(msg.payload)
            except ValueError:
                return
            with self._cond:
                self._replies[topic.name] = reply  # type: ignore[index]
                self._cond.notify_all()

    def states(self) -> dict[str, DeviceState]:
        """The latest retained state of every device heard of (online or not)."""
        with self._cond:
            return dict(self._states)

    def online(self) -> list[str]:
        """Ids of the devices whose latest state says online, sorted."""
        return sorted(d for d, s in self.states().items() if s.status == "online")

    def wait_devices(self, count: int, timeout: float = 30.0, online: bool = True,
                     since: float | None = None) -> list[str]:
        """Block until ``count`` devices are online (or, ``online=False``, until none is); ids.
        ``since``: count only states stamped at or after this unix time (a fresh announcement,
        e.g. after a broker restart)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                up = sorted(d for d, s in self._states.items() if s.status == "online"
                            and (since is None or (s.ts or 0) >= since))
                if (len(up) >= count) if online else not up:
                    return up
                left = deadline - time.monotonic()
                if left <= 0:
                    raise m.MqttError(f"{len(up)} of {count} devices online after {timeout:g}s")
                self._cond.wait(left)

    def request_many(self, devices: Iterable[str], verb: str, payload: dict[str, Any] | None = None,
                     timeout: float = 30.0) -> dict[str, dict[str, Any] | None]:
        """Send ``cmd/{verb}`` to every device at once (QoS 1); each device's reply, or None
        for a device that did not answer within ``timeout`` s."""
        rids: dict[str, str] = {}
        for dev in devices:
            rid = uuid.uuid4().hex[:16]
            rids[rid] = dev
            body = {**(payload or {}), "request_id": rid}
            self._client.publish(cmd_topic(dev, self.tenant, verb), json.dumps(body), qos=1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(r in self._replies for r in rids):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return {dev: self._replies.pop(rid, None) for rid, dev in rids.items()}

    def close(self) -> None:
        m.close(self._client)

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
