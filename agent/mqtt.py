"""MQTT plumbing of the agent, reused by the operator side (CLI, ``EdgevaClient``): paho 2.x only.

It lives in ``agent`` because dependencies point one way: the agent must not import ``control``
(the operator side), while the CLI, which starts agents anyway, may use the agent's plumbing.

- ``parse_broker_url("mqtts://broker.lan")`` -> ``BrokerURL(host, port=8883, tls=True)``.
- ``connect(url, MqttOptions(...), will=..., on_connect=...)`` -> a connected
  ``paho.mqtt.client.Client`` whose network loop runs in a background thread and reconnects
  by itself. ``protocol="auto"`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses
  the version (amqtt does); ``is_v5(client)`` says which one was agreed.
- ``subscribe_wait(client, topics)`` subscribes and waits for the SUBACK, so that nothing
  published right after (a command whose reply we expect) can be missed.

Failures raise ``MqttError``; its message names the broker and says what to check.
This module knows nothing of edgeva's topics or of the CLI.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
Protocol = Literal["auto", "5", "3.1.1"]
PROTOCOLS: tuple[str, ...] = ("auto", "5", "3.1.1")

_UNSUPPORTED_VERSION = 132  # CONNACK reason code (3.1.1 rc 1 is mapped to it by paho)
_REFUSAL_HINTS = {
    134: "check the username and password",
    135: "the broker's ACL does not let this user connect",
    133: "the broker refused the client id",
}


class MqttError(ConnectionError):
    """The broker cannot be reached, refused us, or did not answer in time."""


@dataclass(frozen=True)
class BrokerURL:
    """Where a broker listens; ``tls`` is true for ``mqtts://``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT``, for messages."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.address}"


def parse_broker_url(url: str) -> BrokerURL:
    """Read ``mqtt://HOST[:PORT]`` (default port 1883) or ``mqtts://HOST[:PORT]`` (8883).

    ``HOST[:PORT]`` alone means ``mqtt://``. ``mqtt://user:pass@host`` carries credentials
    (explicit options win over them). Raises ``ValueError`` with what is wrong.
    """
    text = url.strip()
    if "://" not in text:
        text = f"mqtt://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT, nothing after the port")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"broker URL {url!r}: the port must be a number 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r}: no host")
    return BrokerURL(parts.hostname, port, scheme == "mqtts", parts.username, parts.password)


@dataclass(frozen=True)
class MqttOptions:
    """How to connect, besides where.

    ``ca``/``cert``/``key`` are PEM file paths (``cert``+``key``: client certificate);
    ``insecure`` skips the check that the broker's certificate names the host (the chain is
    still verified), like ``mosquitto_pub --insecure``. ``clean_start=False`` with a fixed
    ``client_id`` keeps QoS 1 messages queued by the broker while the client was away.
    ``max_packet`` (MQTT 5 only): the largest packet, in bytes, the broker may send us (the
    CONNECT's Maximum Packet Size); the broker drops a bigger message for this client instead
    of sending it. paho reads every packet whole before any callback sees it, so nothing
    else bounds what one message costs a client's memory. None: no limit (MQTT's 256 MiB).
    """

    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False
    protocol: Protocol = "auto"
    client_id_prefix: str = "edgeva"
    keepalive: int = 30
    clean_start: bool = True
    max_packet: int | None = None


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when we vanish (default: QoS 1, retained)."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


def is_v5(client: mqtt.Client) -> bool:
    """True when ``client`` speaks MQTT 5 (response topics, correlation data, reason codes)."""
    return client.protocol == mqtt.MQTTv5


def new_client_id(prefix: str = "edgeva") -> str:
    """``prefix-`` + 8 hex digits: unique enough, and within 3.1.1's 23-character advice."""
    return f"{prefix}-{secrets.token_hex(4)}"


class _Acks:
    """SUBACK/UNSUBACK bookkeeping by message id, safe whichever thread gets there first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.done: dict[int, list[Any]] = {}

    def record(self, mid: int, codes: list[Any]) -> None:
        with self.cond:
            self.done[mid] = codes
            self.cond.notify_all()

    def wait(self, mid: int, timeout: float) -> list[Any] | None:
        with self.cond:
            self.cond.wait_for(lambda: mid in self.done, timeout)
            return self.done.pop(mid, None)


def _acks(client: mqtt.Client) -> _Acks:
    acks = client.user_data_get()
    if not isinstance(acks, _Acks):
        raise TypeError("subscribe_wait needs a client made by agent.mqtt.connect")
    return acks


def _build(url: BrokerURL, opts: MqttOptions, v5: bool, client_id: str) -> mqtt.Client:
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        # paho refuses clean_session for MQTT 5 (clean_start goes to connect() there)
        clean_session=None if v5 else opts.clean_start,
        protocol=protocol,
        userdata=_Acks(),
    )
    username = opts.username if opts.username is not None else url.username
    password = opts.password if opts.password is not None else url.password
    if username is not None:
        client.username_pw_set(username, password)
    if url.tls:
        client.tls_set(ca_certs=opts.ca, certfile=opts.cert, keyfile=opts.key,
                       cert_reqs=ssl.CERT_REQUIRED)
        if opts.insecure:
            client.tls_insecure_set(True)
    elif opts.ca or opts.cert or opts.key or opts.insecure:
        raise MqttError(f"TLS options given for {url}: use mqtts://{url.address} to enable TLS")
    client.on_subscribe = lambda c, acks, mid, codes, props: acks.record(mid, list(codes))
    client.on_unsubscribe = lambda c, acks, mid, codes, props: acks.record(mid, list(codes))
    # Reconnect quickly after a broker restart (commands work again within seconds), without
    # hammering a broker that is down: one try every 3 s per client is nothing to mosquitto.
    client.reconnect_delay_set(min_delay=1, max_delay=3)
    return client


def _attempt(
    client: mqtt.Client, url: BrokerURL, opts: MqttOptions, timeout: float,
    on_connect: Callable[[mqtt.Client], None] | None,
) -> tuple[bool, Any]:
    """One connection try: (True, None) when accepted, else (False, reason code or None)."""
    outcome: dict[str, Any] = {}
    answered = threading.Event()

    def _on_connect(c: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if not answered.is_set():
            outcome["rc"] = rc
            answered.set()
        if not rc.is_failure and on_connect is not None:
            on_connect(c)  # every (re)connect: the place to (re)subscribe

    def _on_disconnect(c: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if not answered.is_set():
            outcome["closed"] = rc
            answered.set()

    client.on_connect = _on_connect
    client.on_disconnect = _on_disconnect
    client.connect_timeout = timeout
    v5: dict[str, Any] = {}
    if is_v5(client):
        v5["clean_start"] = opts.clean_start
        if opts.max_packet is not None:
            v5["properties"] = Properties(PacketTypes.CONNECT)
            v5["properties"].MaximumPacketSize = opts.max_packet
    try:
        client.connect(url.host, url.port, keepalive=opts.keepalive, **v5)
    except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake
        raise MqttError(f"cannot reach broker at {url.address}: {exc}") from None
    # Handshake in this thread; the background loop starts only once accepted: a loop started
    # earlier would retry a refused connection and take up to a second to stop.
    deadline = time.monotonic() + timeout
    while not answered.is_set() and time.monotonic() < deadline:
        if client.loop(timeout=0.05) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            break  # the broker closed the connection
    if "rc" in outcome and not outcome["rc"].is_failure:
        client.loop_start()
        return True, None
    client.disconnect()
    if not answered.is_set() and time.monotonic() >= deadline:
        raise MqttError(f"cannot reach broker at {url.address}: no CONNACK within {timeout:g}s "
                        "(is it an MQTT broker? TLS on one side only?)")
    return False, outcome.get("rc")


def _speaks_v5(url: BrokerURL, opts: MqttOptions, client_id: str, timeout: float) -> bool:
    """Whether the broker accepts MQTT 5 (True also when it refuses us for another reason:
    the real attempt then reports that reason)."""
    # another client id: a probe with clean start must not wipe the real one's session
    probe = _build(url, opts, True, f"{client_id}-probe")
    ok, reason = _attempt(probe, url, opts, timeout, None)
    if ok:
        close(probe)
        return True
    return reason is not None and getattr(reason, "value", None) != _UNSUPPORTED_VERSION


def connect(
    url: str | BrokerURL,
    options: MqttOptions | None = None,
    *,
    client_id: str | None = None,
    will: Will | None = None,
    on_connect: Callable[[mqtt.Client], None] | None = None,
    timeout: float = 5.0,
) -> mqtt.Client:
    """Connect to the broker and start paho's network thread; return the client.

    ``on_connect(client)`` runs in the network thread after the first connect and after every
    automatic reconnect: subscribe there (a clean session forgets subscriptions). Set
    ``on_message`` / ``message_callback_add`` before subscribing; do not replace ``on_connect``,
    ``on_disconnect`` before this returns, nor ``on_subscribe``/``on_unsubscribe`` (used by
    ``subscribe_wait``). ``will`` is registered on every try, so it holds for either protocol.

    Raises ``MqttError``: "cannot reach broker at HOST:PORT: ..." (nothing listens, DNS, TLS,
    no answer within ``timeout``), or "broker at HOST:PORT refused the connection: ..."
    (credentials, ACL, protocol version when ``protocol`` is not ``auto``).
    The client's ``userdata`` belongs to this module (SUBACK tracking): keep state elsewhere.
    Call ``close(client)`` when done.
    """
    url = parse_broker_url(url) if isinstance(url, str) else url
    opts = options or MqttOptions()
    if opts.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {opts.protocol!r}")
    cid = client_id or new_client_id(opts.client_id_prefix)
    tries = {"auto": (True, False), "5": (True,), "3.1.1": (False,)}[opts.protocol]
    deadline = time.monotonic() + timeout
    if opts.protocol == "auto" and will is not None:
        # amqtt 0.12 neither answers nor closes an MQTT 5 CONNECT that carries a will: ask
        # which version the broker speaks with a bare connection first (a few ms).
        tries = (_speaks_v5(url, opts, cid, timeout),)
    reason: Any = None
    for v5 in tries:
        client = _build(url, opts, v5, cid)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        ok, reason = _attempt(client, url, opts, max(0.5, deadline - time.monotonic()), on_connect)
        if ok:
            return client
        refused_version = reason is None or getattr(reason, "value", None) == _UNSUPPORTED_VERSION
        if not (v5 and opts.protocol == "auto" and refused_version):
            break  # a refusal for another reason will not go away with 3.1.1
    if reason is None:
        raise MqttError(f"cannot reach broker at {url.address}: it closed the connection "
                        "before accepting it")
    hint = _REFUSAL_HINTS.get(getattr(reason, "value", -1), "")
    if getattr(reason, "value", None) == _UNSUPPORTED_VERSION:
        hint = f"it does not speak MQTT {opts.protocol}; try protocol auto"
    raise MqttError(f"broker at {url.address} refused the connection: {reason}"
                    + (f" ({hint})" if hint else ""))


def subscribe_wait(
    client: mqtt.Client, topics: str | Iterable[str], qos: int = 1, timeout: float = 5.0
) -> None:
    """Subscribe to ``topics`` and return once the broker acknowledged every one.

    Raises ``MqttError`` when the broker refuses one (mosquitto's ACL answers "Not
    authorized" under MQTT 5 and a plain failure under 3.1.1) or does not answer in time.
    """
    wanted = [topics] if isinstance(topics, str) else list(topics)
    if not wanted:
        return
    acks = _acks(client)
    rc, mid = client.subscribe([(t, qos) for t in wanted])
    if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
        raise MqttError(f"cannot subscribe to {', '.join(wanted)}: {mqtt.error_string(rc)}")
    codes = acks.wait(mid, timeout)
    if codes is None:
        raise MqttError(f"no SUBACK for {', '.join(wanted)} within {timeout:g}s")
    for topic, code in zip(wanted, codes, strict=False):
        if code.is_failure:
            raise MqttError(f"broker refused subscription to {topic}: {code} "
                            "(does the broker's ACL let this user read it?)")


def unsubscribe(client: mqtt.Client, topics: str | Iterable[str], timeout: float = 2.0) -> None:
    """Unsubscribe and wait (briefly) for the UNSUBACK; a lost UNSUBACK is not an error."""
    wanted = [topics] if isinstance(topics, str) else list(topics)
    if not wanted or not client.is_connected():
        return
    rc, mid = client.unsubscribe(wanted)
    if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
        _acks(client).wait(mid, timeout)


def close(client: mqtt.Client) -> None:
    """Disconnect cleanly (no last will is sent) and stop the network thread."""
    client.disconnect()
    client.loop_stop()
