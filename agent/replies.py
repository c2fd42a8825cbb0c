"""Commands are applied once per request id: a repeated request gets the first reply again.

A client that lost its broker connection may send a command again after the reconnect (it
cannot know whether the first one arrived), and a QoS 1 message may be delivered twice. A
``deploy`` or ``remove`` applied twice is at best wasted work; so the agent remembers the reply
to each recent ``(tenant, request_id)`` and answers a repeat with it, without applying anything.
Only commands that change something are remembered (not ``status``/``metrics``), and only for
``ttl`` seconds: a retry comes within seconds, while a flow that reuses one request id for
every click of a button should still be obeyed a minute later.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

MUTATING = frozenset({"deploy", "update", "start", "stop", "remove"})


class ReplyCache:
    """The last ``size`` replies by (tenant, request id), each kept ``ttl`` s. Thread-safe."""

    def __init__(self, size: int = 512, ttl: float = 120.0) -> None:
        self.size, self.ttl = size, ttl
        self._d: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.repeats = 0

    def get(self, tenant: str, request_id: str | None) -> bytes | None:
        """The reply already sent for this request, or None (a new request)."""
        if request_id is None:
            return None
        with self._lock:
            hit = self._d.get((tenant, request_id))
            if hit is None or time.monotonic() - hit[0] > self.ttl:
                return None
            self.repeats += 1
            return hit[1]

    def put(self, tenant: str, request_id: str | None, reply: bytes) -> None:
        if request_id is None:
            return
        with self._lock:
            self._d[(tenant, request_id)] = (time.monotonic(), reply)
            self._d.move_to_end((tenant, request_id))
            while len(self._d) > self.size:
                self._d.popitem(last=False)
