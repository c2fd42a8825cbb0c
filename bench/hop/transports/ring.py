"""``ring``: edgeva's shared-memory ring (``agent.dataplane.ring``), one ``block`` consumer.

Frame: ``reserve`` -> ``put`` (one memcpy into the slot) -> ``commit``; the consumer gets a view
into the slot, released by its next ``get``. Meta: no array, the dict travels as the message's
msgpack ``fields``. Flow control is the ring's: the producer waits while all slots are held.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import numpy as np

from edgeva.bench.hop.transports.base import Received, Receiver, Sender, Transport, register


@register
class RingTransport(Transport):
    name = "ring"
    order = 0
    description = "edgeva shared-memory ring, block policy"

    def setup(self) -> None:
        from edgeva.agent.dataplane.segment import segment_name

        self.segment = segment_name("bench", f"hop{os.getpid()}-{secrets.token_hex(4)}")

    def cleanup(self) -> None:
        # The producer unlinks on close; this covers a producer that died first.
        from edgeva.agent.dataplane.segment import unlink_segment

        unlink_segment(self.segment)

    def sender(self) -> Sender:
        return _RingSender(self)

    def receiver(self) -> Receiver:
        return _RingReceiver(self)


class _RingSender(Sender):
    def __init__(self, t: RingTransport) -> None:
        self.t = t
        self.prod = None

    def prepare(self) -> None:
        from edgeva.agent.dataplane.ring import RingProducer

        self.prod = RingProducer.create(self.t.segment, self.t.payload.max_bytes(), self.t.nslots)

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        from edgeva.schemas.message import Message

        # ts_ns carries the bench's monotonic t0 (not wall-clock): the consumer reads it back.
        if isinstance(src, dict):
            # Metadata goes the way modules send it: publish() encodes under one lock.
            self.prod.publish(Message(frame_id, "bench", t0_ns, fields=src), timeout=30.0)
        else:
            w = self.prod.reserve(timeout=30.0)
            w.put("frame", src)
            self.prod.commit(w, Message(frame_id, "bench", t0_ns))

    def close(self) -> None:
        if self.prod is not None:
            self.prod.close()


class _RingReceiver(Receiver):
    def __init__(self, t: RingTransport) -> None:
        self.t = t
        self.cons = None

    def open(self) -> dict[str, Any]:
        from edgeva.agent.dataplane.ring import RingConsumer

        self.cons = RingConsumer.attach(self.t.segment, policy="block")
        return {}

    def recv(self, timeout: float) -> Received | None:
        msg = self.cons.get(timeout)  # releases the previous message
        if msg is None:
            return None
        obj = msg.fields if self.t.payload.kind == "meta" else msg.arrays["frame"]
        return msg.frame_id, msg.ts_ns, obj

    def close(self) -> None:
        if self.cons is not None:
            self.cons.close()
