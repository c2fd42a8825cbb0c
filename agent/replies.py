"""Commands are applied once per request id: a repeated request gets the first reply again.

A client that lost its broker connection may send a command again after the reconnect (it
cannot know whether the first one arrived), and a QoS 1 message may be delivered twice. A
``deploy`` or ``remove`` applied twice is at best wasted work; so the agent remembers the reply
to each recent ``(tenant, request_id)`` and answers a repeat with it, without applying anything.
Only commands that change something are remembered (not ``status``/``metrics``), and only for
``ttl`` seconds: a retry comes within seconds, while a flow that reuses one request id for
every click of a button should still be obeyed a minute later.

Each tenant has its own cache with its own caps: one cache for all once let a tenant that sent
many commands push every other tenant's replies out (and their retries were applied again).
Past the device-wide cap, the tenant holding the most replies loses its oldest: a tenant can
only ever push out its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

MUTATING = frozenset({"deploy", "update", "start", "stop", "remove"})
PER_TENANT = 128  # replies kept per tenant
TENANT_BYTES = 1 << 20  # bytes of replies kept per tenant
TOTAL = 4096  # replies kept on the device, all tenants together


class ReplyCache:
    """Per tenant, its last ``per_tenant`` replies (at most ``tenant_bytes`` bytes of them) by
    request id, each kept ``ttl`` s; at most ``total`` on the device. Thread-safe."""

    def __init__(self, per_tenant: int = PER_TENANT, ttl: float = 120.0, tenant_bytes: int = TENANT_BYTES,
                 total: int = TOTAL) -> None:
        self.per_tenant, self.ttl, self.tenant_bytes, self.total = per_tenant, ttl, tenant_bytes, total
        self._d: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}
        self._bytes: dict[str, int] = {}
        self._n = 0
        self._lock = threading.Lock()
        self.repeats = 0

    def get(self, tenant: str, request_id: str | None) -> bytes | None:
        """The reply already sent for this request, or None (a new request)."""
        if request_id is None:
            return None
        with self._lock:
            hit = self._d.get(tenant, {}).get(request_id)
            if hit is None or time.monotonic() - hit[0] > self.ttl:
                return None
            self.repeats += 1
            return hit[1]

    def put(self, tenant: str, request_id: str | None, reply: bytes) -> None:
        """Remember ``reply``; the tenant's oldest replies go past its caps (a reply bigger than
        ``tenant_bytes`` is not kept)."""
        if request_id is None or len(reply) > self.tenant_bytes:
            return
        now = time.monotonic()
        with self._lock:
            self._drop(tenant, request_id)
            d = self._d.setdefault(tenant, OrderedDict())
            while d and now - next(iter(d.values()))[0] > self.ttl:  # expired: never answered again
                self._drop(tenant, next(iter(d)))
            d = self._d.setdefault(tenant, OrderedDict())
            d[request_id] = (now, reply)
            self._bytes[tenant] = self._bytes.get(tenant, 0) + len(reply)
            self._n += 1
            while len(d) > self.per_tenant or self._bytes[tenant] > self.tenant_bytes:
                self._drop(tenant, next(iter(d)))
            while self._n > self.total:  # device-wide: the biggest holder gives up its oldest
                biggest = max(self._d, key=lambda t: len(self._d[t]))
                self._drop(biggest, next(iter(self._d[biggest])))

    def _drop(self, tenant: str, request_id: str) -> None:
        d = self._d.get(tenant)
        old = d.pop(request_id, None) if d is not None else None
        if old is None:
            return
        self._n -= 1
        self._bytes[tenant] -= len(old[1])
        if not d:
            del self._d[tenant], self._bytes[tenant]

    def __len__(self) -> int:
        return self._n
