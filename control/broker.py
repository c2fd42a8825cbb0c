"""An embedded MQTT broker (amqtt, pure Python) for demos, tests and single-machine setups.

amqtt speaks **MQTT 3.1.1 only**: clients built with ``agent.mqtt.connect(protocol="auto")``
fall back to 3.1.1 by themselves, and edgeva's replies then go to
``edgeva/v1/{device}/{tenant}/reply/{request_id}`` instead of an MQTT 5 response topic.
QoS 1, retained messages and last wills work; anyone may connect (no passwords, no ACL), so
bind it to 127.0.0.1 unless the network is trusted. For tenants and ACLs run mosquitto.

Usage::

    broker = EmbeddedBroker(port=1883)
    broker.start()          # returns once it accepts connections
    ...                     # broker.url == "mqtt://127.0.0.1:1883"
    broker.stop()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from edgeva.agent.settings import DEFAULT_BROKER_HOST, DEFAULT_BROKER_PORT

log = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO; a demo's terminal should stay readable.
_NOISY_LOGGERS = ("amqtt", "transitions")
# Expected, not worth a warning: agent.mqtt's `auto` mode first tries MQTT 5, which amqtt
# refuses (the client then falls back to 3.1.1), and port probes connect without speaking.
_EXPECTED = ("Invalid connection from", "Invalid protocol from", "No data from")


class _ExpectedRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(text in msg for text in _EXPECTED)


def quiet_amqtt_logging() -> None:
    """amqtt and its state machine log at WARNING and above only, minus expected refusals."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    broker_logger = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, _ExpectedRefusals) for f in broker_logger.filters):
        broker_logger.addFilter(_ExpectedRefusals())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 5.0) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _fixed_broker_class() -> type:
    """amqtt's Broker, minus a bug of 0.12: on every CONNECT it sends the new client each
    retained message matching *any* client's subscription (an agent would receive every
    device's retained state without subscribing). Here a retained message goes only to a
    session that holds the matching subscription itself."""
    from amqtt.broker import Broker  # late: `edgeva deploy` should not import amqtt

    class _Broker(Broker):  # type: ignore[misc,valid-type]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], [])
            if any(s.client_id == session.client_id for s, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return _Broker


class EmbeddedBroker:
    """amqtt running in a background thread of this process (its own asyncio loop).

    ``port=0`` picks a free port. After ``start()``, ``host``, ``port`` and ``url`` say where
    clients connect. ``stop()`` disconnects everyone (no last will is sent for them: the broker
    itself is going away) and is safe to call twice.
    """

    def __init__(self, port: int = DEFAULT_BROKER_PORT, host: str = DEFAULT_BROKER_HOST) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for ``agent.mqtt`` and ``--broker``."""
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: amqtt's default plugin set also logs every packet and
            # publishes $SYS topics, which costs CPU on a 4-core board for nothing.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start serving; return once ``host:port`` accepts connections.

        Raises ``RuntimeError`` when it cannot (port in use, bad host) within ``timeout``.
        """
        if self._thread is not None:
            return self
        quiet_amqtt_logging()
        Broker = _fixed_broker_class()

        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"amqtt-{self.port}", daemon=True
        )
        self._thread.start()

        async def _start() -> Any:
            broker = Broker(self._config(), loop=loop)
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(_start(), loop).result(timeout)
        except Exception as exc:
            self._shutdown_loop()
            raise RuntimeError(f"embedded broker cannot listen on {self.host}:{self.port}: {exc}") from exc
        log.debug("embedded broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect every client and close the port."""
        loop, broker = self._loop, self._broker
        self._broker = None
        if loop is None:
            return
        if broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
            except Exception as exc:  # shutting down anyway: the loop goes next
                log.warning("embedded broker did not shut down cleanly: %s", exc)
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5.0)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
