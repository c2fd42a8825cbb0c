"""``EdgevaClient``: talk to one device's agent over MQTT (protocol v1, see docs/protocol.md).

    with EdgevaClient("mqtt://127.0.0.1:1883", "cam-01") as dev:
        reply = dev.request("status", {})            # {"request_id", "ok", "result"|"error"}
        for m in dev.watch_metrics():                 # TenantMetrics / DeviceMetrics models
            ...

Replies: under MQTT 5 each request carries a response topic (this client's inbox,
``edgeva/v1/{device}/{tenant}/reply/{client_id}``) and its request id as correlation data;
under MQTT 3.1.1 the client subscribes to ``edgeva/v1/{device}/{tenant}/reply/{request_id}``
before publishing. Both live under ``.../{tenant}/reply/``, so one ACL line covers them.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edgeva.agent import mqtt as m
from edgeva.schemas.commands import extract_request_id, parse_reply
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.metrics import DeviceMetrics, TenantMetrics
from edgeva.schemas.state import DeviceState
from edgeva.schemas.topics import (
    DEFAULT_TENANT,
    cmd_topic,
    device_metrics_topic,
    events_subscription,
    events_topic,
    parse_topic,
    reply_subscription,
    reply_topic,
    state_topic,
    tenant_metrics_topic,
)

__all__ = ["BadReply", "EdgevaClient", "Incoming", "RequestTimeout", "Subscription"]


class RequestTimeout(m.MqttError):
    """The device did not answer (or publish) in time: its agent is down or elsewhere."""


class BadReply(RuntimeError):
    """The device answered with something that is not a protocol v1 reply."""


@dataclass(frozen=True)
class Incoming:
    """One received message."""

    topic: str
    payload: bytes
    retained: bool = False

    def json(self) -> Any:
        """The payload as JSON (raises ``ValueError`` when it is not)."""
        return json.loads(self.payload)


class Subscription:
    """Messages matching some topic filters, queued until read; ``close()`` unsubscribes.

    The queue keeps the newest ``maxsize`` messages: a slow reader loses the oldest, never
    the broker connection.
    """

    def __init__(self, owner: EdgevaClient, filters: list[str], maxsize: int = 1000) -> None:
        self._owner = owner
        self.filters = filters
        self._queue: queue.Queue[Incoming] = queue.Queue(maxsize)
        self.closed = False

    def _put(self, msg: Incoming) -> None:
        while True:
            try:
                self._queue.put_nowait(msg)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> Incoming:
        """The next message; ``TimeoutError`` when none came within ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message on {', '.join(self.filters)} within {timeout:g}s") from None

    def __iter__(self) -> Iterator[Incoming]:
        while not self.closed:
            yield self.get()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._owner._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Slot:
    __slots__ = ("event", "payload")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.payload: bytes | None = None


class EdgevaClient:
    """A connection to the broker, aimed at one device and one tenant.

    Raises ``MqttError`` when the broker cannot be reached or refuses us, and
    ``EdgevaError(bad_request)`` for a device or tenant name that cannot be a topic part.
    """

    def __init__(
        self,
        broker_url: str,
        device: str,
        tenant: str = DEFAULT_TENANT,
        *,
        options: m.MqttOptions | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.broker = m.parse_broker_url(broker_url)
        self.device = device
        self.tenant = tenant
        self._replies = reply_subscription(device, tenant)  # validates both names
        self._lock = threading.Lock()
        self._pending: dict[str, _Slot] = {}
        self._subs: list[Subscription] = []
        self._filters: dict[str, int] = {}  # filter -> how many users, re-subscribed on reconnect
        opts = options or m.MqttOptions(client_id_prefix="edgeva-cli")
        self._username = opts.username or self.broker.username
        client_id = m.new_client_id(opts.client_id_prefix)
        self._client = m.connect(self.broker, opts, client_id=client_id,
                                 on_connect=self._resubscribe, timeout=connect_timeout)
        self._client.on_message = self._on_message
        self.v5 = m.is_v5(self._client)
        self.inbox: str | None = None
        if self.v5:
            try:
                self.inbox = reply_topic(device, tenant, client_id)
                self._add_filters([self.inbox], timeout=connect_timeout)
            except Exception:
                m.close(self._client)
                raise

    # -- plumbing -------------------------------------------------------------------------

    def _resubscribe(self, client: mqtt.Client) -> None:
        # network thread, after a reconnect: the broker forgot our subscriptions
        with self._lock:
            filters = list(self._filters)
        if filters:
            client.subscribe([(f, 1) for f in filters])

    def _add_filters(self, filters: list[str], timeout: float) -> None:
        with self._lock:
            new = [f for f in filters if self._filters.get(f, 0) == 0]
            for f in filters:
                self._filters[f] = self._filters.get(f, 0) + 1
        try:
            m.subscribe_wait(self._client, new, timeout=timeout)
        except m.MqttError:
            # unsubscribe too: a SUBACK that came too late means the broker holds a subscription
            # nobody reads (an UNSUBSCRIBE of a refused filter changes nothing)
            self._drop_filters(filters)
            raise

    def _drop_filters(self, filters: list[str]) -> None:
        with self._lock:
            gone = []
            for f in filters:
                self._filters[f] -= 1
                if self._filters[f] <= 0:
                    del self._filters[f]
                    gone.append(f)
        if gone and self._client.is_connected():
            self._client.unsubscribe(gone)  # no need to wait for the UNSUBACK

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if mqtt.topic_matches_sub(self._replies, msg.topic):
            self._on_reply(msg)
        with self._lock:
            subs = [s for s in self._subs if any(mqtt.topic_matches_sub(f, msg.topic) for f in s.filters)]
        for sub in subs:
            sub._put(Incoming(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_reply(self, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        if corr:
            rid: str | None = bytes(corr).decode("utf-8", "replace")
        elif msg.topic == self.inbox:  # a v5 reply that lost its correlation data
            rid = extract_request_id(msg.payload)
        else:  # reply/{request_id} (3.1.1), the only topics _replies matches besides the inbox
            rid = getattr(parse_topic(msg.topic), "name", None)
        with self._lock:
            slot = self._pending.get(rid or "")
        if slot is not None and not slot.event.is_set():
            slot.payload = bytes(msg.payload)
            slot.event.set()

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        self._drop_filters(sub.filters)

    def _no_answer(self, what: str, timeout: float) -> RequestTimeout:
        hint = ""
        if self._username:  # a broker drops a publish its ACL denies, silently
            hint = (f" Or the broker's ACL dropped it: may user {self._username} use tenant "
                    f"{self.tenant}'s topics?")
        return RequestTimeout(
            f"no {what} from device {self.device} within {timeout:g}s: is its agent running "
            f"and connected to this broker ({self.broker})?{hint}"
        )

    # -- public API -----------------------------------------------------------------------

    def subscribe(self, *filters: str, timeout: float = 5.0) -> Subscription:
        """Queue every message matching ``filters`` until the returned subscription is closed."""
        sub = Subscription(self, list(filters))
        with self._lock:
            self._subs.append(sub)
        try:
            self._add_filters(sub.filters, timeout)
        except m.MqttError:
            with self._lock:
                self._subs.remove(sub)
            raise
        return sub

    def request(self, verb: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Send ``cmd/{verb}`` (QoS 1) and return the device's reply as a dict.

        A ``request_id`` is generated when ``payload`` has none. The reply may say ``"ok":
        false``: that is the device's answer, not an exception. Raises ``RequestTimeout``
        (no reply within ``timeout`` s), ``MqttError`` (broker), ``BadReply`` (not a reply),
        ``EdgevaError(bad_request)`` (a verb or request id that cannot be sent).
        """
        body = dict(payload or {})
        rid = str(body.get("request_id") or uuid.uuid4().hex[:16])
        body["request_id"] = rid
        topic = cmd_topic(self.device, self.tenant, verb)
        direct = None if self.v5 else reply_topic(self.device, self.tenant, rid)
        deadline = time.monotonic() + timeout
        slot = _Slot()
        with self._lock:
            self._pending[rid] = slot
        subscribed = False
        try:
            props = None
            if direct is not None:
                self._add_filters([direct], timeout)
                subscribed = True
            else:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = self.inbox
                props.CorrelationData = rid.encode()
            info = self._client.publish(topic, json.dumps(body), qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise m.MqttError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
            if not slot.event.wait(max(0.0, deadline - time.monotonic())):
                raise self._no_answer("reply", timeout)
        finally:
            with self._lock:
                self._pending.pop(rid, None)
            if subscribed and direct is not None:
                self._drop_filters([direct])
        try:
            parse_reply(slot.payload or b"")
        except EdgevaError as exc:
            raise BadReply(f"device {self.device} sent a malformed reply to {verb}: {exc}") from None
        return json.loads(slot.payload or b"")

    def wait_state(self, online: bool = True, timeout: float = 10.0) -> DeviceState:
        """Wait until the device's retained state says online (or offline); return it.

        Raises ``RequestTimeout``. Needs read access to ``edgeva/v1/{device}/state``.
        """
        want = "online" if online else "offline"
        deadline = time.monotonic() + timeout
        last: DeviceState | None = None
        with self.subscribe(state_topic(self.device), timeout=timeout) as sub:
            while True:
                try:
                    msg = sub.get(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    if last is None:
                        raise self._no_answer("state", timeout) from None
                    raise RequestTimeout(f"device {self.device} is still {last.status} after "
                                         f"{timeout:g}s (waited for {want})") from None
                try:
                    last = DeviceState.model_validate_json(msg.payload)
                except ValidationError:
                    continue  # a foreign or older agent's state: keep waiting for a good one
                if last.status == want:
                    return last

    def watch_metrics(
        self, app: str | None = None, *, device_wide: bool = False, idle_timeout: float | None = None
    ) -> Iterator[TenantMetrics | DeviceMetrics]:
        """Yield each metrics message as it comes: ``TenantMetrics`` (this tenant's apps and
        their modules; with ``app``, only that app) and, with ``device_wide``, ``DeviceMetrics``.

        Raises ``RequestTimeout`` after ``idle_timeout`` s without a message (None: wait
        forever). Payloads that do not fit the schema are skipped.
        """
        filters = [tenant_metrics_topic(self.device, self.tenant)]
        if device_wide:
            filters.append(device_metrics_topic(self.device))
        with self.subscribe(*filters) as sub:
            while True:
                try:
                    msg = sub.get(idle_timeout)
                except TimeoutError:
                    raise self._no_answer("metrics", idle_timeout or 0) from None
                try:
                    if msg.topic == filters[0]:
                        tm = TenantMetrics.model_validate_json(msg.payload)
                        if app is not None:
                            tm.apps = {k: v for k, v in tm.apps.items() if k == app}
                        yield tm
                    else:
                        yield DeviceMetrics.model_validate_json(msg.payload)
                except ValidationError:
                    continue

    def subscribe_events(self, app: str | None = None) -> Subscription:
        """Events of one app (or of every app of the tenant); read with ``get()`` or iterate,
        ``Incoming.json()`` gives the event. Close the subscription when done."""
        if app is not None:
            return self.subscribe(events_topic(self.device, self.tenant, app))
        return self.subscribe(events_subscription(self.device, self.tenant))

    def close(self) -> None:
        """Unsubscribe everything and disconnect."""
        for sub in list(self._subs):
            sub.closed = True
        self._subs.clear()
        m.close(self._client)

    def __enter__(self) -> EdgevaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
