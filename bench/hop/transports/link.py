"""``link``: edgeva's nng link (``agent.dataplane.link``) over tcp loopback.

Frame: the array is encoded once, straight into an nng message (one memcpy), with the ring's
encoding behind a small link envelope; the receiver decodes numpy views over the nng message
buffer (no copy), released by its next ``recv``. Meta: the dict travels as the message's msgpack
``fields``. Flow control: the link's bounded send queue (``block`` stream, depth ``nslots``) and
TCP. Compare with ``nng-tcp``: the same socket type used the straightforward way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeva.bench.hop.transports.base import Received, Receiver, Sender, Transport, register

STREAM = "bench"


@register
class LinkTransport(Transport):
    name = "link"
    order = 45
    description = "edgeva nng link (Pair0, message API, views on receive) over tcp loopback"

    def sender(self) -> Sender:
        return _LinkSender(self)

    def receiver(self) -> Receiver:
        return _LinkReceiver(self)


def _max_bytes(t: Transport) -> int:
    return t.payload.max_bytes() + 4096  # room for the link envelope


class _LinkSender(Sender):
    def __init__(self, t: LinkTransport) -> None:
        self.t = t
        self.link = None

    def connect(self, info: dict[str, Any]) -> None:
        from edgeva.agent.dataplane.link import Link

        self.link = Link.dial(info["addr"], name="bench", max_message_size=_max_bytes(self.t),
                              send_timeout=30.0, depth=self.t.nslots)
        if not self.link.wait_connected(10.0):
            raise TimeoutError(f"link to {info['addr']} not connected within 10 s")

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        from edgeva.schemas.message import Message

        # ts_ns carries the bench's monotonic t0 (not wall-clock): the consumer reads it back.
        if isinstance(src, dict):
            self.link.send(STREAM, Message(frame_id, "bench", t0_ns, fields=src))
        else:
            self.link.send(STREAM, Message(frame_id, "bench", t0_ns, arrays={"frame": src}))

    def close(self) -> None:
        if self.link is not None:
            self.link.close()


class _LinkReceiver(Receiver):
    def __init__(self, t: LinkTransport) -> None:
        self.t = t
        self.link = None
        self.last = None

    def open(self) -> dict[str, Any]:
        from edgeva.agent.dataplane.link import Link

        self.link = Link.listen("tcp://127.0.0.1:0", name="bench", max_message_size=_max_bytes(self.t))
        return {"addr": self.link.address}

    def recv(self, timeout: float) -> Received | None:
        if self.last is not None:
            self.last.lease.release()  # the previous message's buffer goes back to nng
            self.last = None
        r = self.link.recv(timeout)
        if r is None:
            return None
        self.last = r
        msg = r.message
        obj = msg.fields if self.t.payload.kind == "meta" else msg.arrays["frame"]
        return msg.frame_id, msg.ts_ns, obj

    def close(self) -> None:
        self.last = None
        if self.link is not None:
            self.link.close()
