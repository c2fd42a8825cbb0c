"""Results published while the broker is away: kept (bounded), sent once it is back.

An edge device loses its broker now and then (a Wi-Fi drop, a broker restart). Frames keep
flowing between co-located modules meanwhile, and the apps keep producing events; paho drops a
QoS 0 publish when it has no connection, and would queue QoS 1 ones without bound. The outbox
keeps, per tenant, the last ``per_tenant`` messages (at most ``tenant_bytes`` bytes of them: the
oldest go first, counted as ``dropped``) and sends them at QoS 1, in order, when the connection
is back. One buffer for all tenants once let one tenant's busy apps push every other tenant's
events out; now a tenant can only push out its own. Past the device-wide ``total_bytes``, the
tenant holding the most bytes loses its oldest.

Order holds across the flush: paho sends QoS 1 messages only a window at a time (20 in flight),
while a QoS 0 publish goes out at once, so an event published right after the flush overtook
the backlog (bench chaos saw frame 421 arrive before 344..420). Until a tenant's last flushed
message is acknowledged, its new messages go at QoS 1 too, behind the backlog.
"""

from __future__ import annotations

import threading
from collections import deque

import paho.mqtt.client as mqtt

PER_TENANT = 2000  # messages kept per tenant while the broker is away
TENANT_BYTES = 4 << 20  # bytes of them per tenant
TOTAL_BYTES = 64 << 20  # bytes kept on the device, all tenants together


class Outbox:
    """``publish`` through it; call ``flush`` after a reconnect. Thread-safe."""

    def __init__(self, per_tenant: int = PER_TENANT, tenant_bytes: int = TENANT_BYTES,
                 total_bytes: int = TOTAL_BYTES) -> None:
        self.per_tenant, self.tenant_bytes, self.total_bytes = per_tenant, tenant_bytes, total_bytes
        self._q: dict[str, deque[tuple[str, bytes | str]]] = {}
        self._bytes: dict[str, int] = {}
        self._n = self._total = 0
        self._lock = threading.Lock()
        self.buffered_total = 0  # messages that had to wait for the broker
        self.dropped = 0  # buffered messages pushed out by newer ones (or too big to keep)
        self.dropped_by_tenant: dict[str, int] = {}
        self.flushed = 0
        self._draining: dict[str, mqtt.MQTTMessageInfo] = {}  # tenant -> its last QoS 1 still in paho's hands

    def publish(self, client: mqtt.Client, tenant: str, topic: str, payload: bytes | str, qos: int = 0) -> None:
        """Publish now if connected (and nothing older of this tenant still waits), else keep it
        in ``tenant``'s buffer."""
        size = len(payload)
        with self._lock:
            last = self._draining.get(tenant)
            if last is not None and last.is_published():
                del self._draining[tenant]
                last = None
            if tenant not in self._q and client.is_connected():
                info = client.publish(topic, payload, qos=1 if last is not None else qos)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    if last is not None:  # still behind the flushed backlog: stay in line
                        self._draining[tenant] = info
                    return
            if size > self.tenant_bytes:
                self._count_drop(tenant)
                return
            q = self._q.setdefault(tenant, deque())
            q.append((topic, payload))
            self._bytes[tenant] = self._bytes.get(tenant, 0) + size
            self._n += 1
            self._total += size
            self.buffered_total += 1
            while len(q) > self.per_tenant or self._bytes[tenant] > self.tenant_bytes:
                self._pop(tenant, dropped=True)
            while self._total > self.total_bytes:  # device-wide: the biggest holder gives up its oldest
                self._pop(max(self._bytes, key=self._bytes.__getitem__), dropped=True)

    def flush(self, client: mqtt.Client) -> int:
        """Send what waits (QoS 1, each tenant's oldest first) while connected; returns how many went."""
        sent = 0
        with self._lock:
            for tenant in list(self._q):
                while tenant in self._q and client.is_connected():
                    topic, payload = self._q[tenant][0]
                    info = client.publish(topic, payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                    self._draining[tenant] = info
                    self._pop(tenant)
                    sent += 1
            self.flushed += sent
        return sent

    def _pop(self, tenant: str, dropped: bool = False) -> None:
        q = self._q[tenant]
        _topic, payload = q.popleft()
        self._n -= 1
        self._total -= len(payload)
        self._bytes[tenant] -= len(payload)
        if not q:
            del self._q[tenant], self._bytes[tenant]
        if dropped:
            self._count_drop(tenant)

    def _count_drop(self, tenant: str) -> None:
        self.dropped += 1
        self.dropped_by_tenant[tenant] = self.dropped_by_tenant.get(tenant, 0) + 1

    def waiting(self, tenant: str) -> int:
        """Messages of ``tenant`` waiting for the broker."""
        with self._lock:
            return len(self._q.get(tenant, ()))

    def __len__(self) -> int:
        return self._n
