"""Results published while the broker is away: kept (bounded), sent once it is back.

An edge device loses its broker now and then (a Wi-Fi drop, a broker restart). Frames keep
flowing between co-located modules meanwhile, and the apps keep producing events; paho drops a
QoS 0 publish when it has no connection, and would queue QoS 1 ones without bound. The outbox
keeps the last ``limit`` messages (the oldest go first, counted as ``dropped``) and sends them
at QoS 1, in order, when the connection is back.
"""

from __future__ import annotations

import threading
from collections import deque

import paho.mqtt.client as mqtt


class Outbox:
    """``publish`` through it; call ``flush`` after a reconnect. Thread-safe."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self._q: deque[tuple[str, bytes | str]] = deque()
        self._lock = threading.Lock()
        self.buffered_total = 0  # messages that had to wait for the broker
        self.dropped = 0  # buffered messages pushed out by newer ones
        self.flushed = 0

    def publish(self, client: mqtt.Client, topic: str, payload: bytes | str, qos: int = 0) -> None:
        """Publish now if connected (and nothing older still waits), else keep it."""
        with self._lock:
            if (not self._q and client.is_connected()
                    and client.publish(topic, payload, qos=qos).rc == mqtt.MQTT_ERR_SUCCESS):
                return
            if len(self._q) >= self.limit:
                self._q.popleft()
                self.dropped += 1
            self._q.append((topic, payload))
            self.buffered_total += 1

    def flush(self, client: mqtt.Client) -> int:
        """Send what waits (QoS 1, oldest first) while connected; returns how many went."""
        sent = 0
        with self._lock:
            while self._q and client.is_connected():
                topic, payload = self._q[0]
                if client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._q.popleft()
                sent += 1
            self.flushed += sent
        return sent

    def __len__(self) -> int:
        return len(self._q)
