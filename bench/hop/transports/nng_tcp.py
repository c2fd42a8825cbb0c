"""``nng-tcp``: raw pynng Pair0 over tcp loopback, ``send(bytes)`` / ``recv()``.

The straightforward pynng use: msgpack of header + array bytes into one ``bytes`` (pynng's
``send`` takes bytes only), ``recv()`` returns a fresh ``bytes`` (copied twice inside pynng),
decoded into a numpy view. ``recv_max_size`` is set explicitly: nng's default (1 MiB) drops a
720p frame silently. nng's own queues and TCP give the flow control.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np

from edgeva.bench.hop.transports.base import (
    Received,
    Receiver,
    Sender,
    Transport,
    pack,
    register,
    unpack,
)


@register
class NngTcpTransport(Transport):
    name = "nng-tcp"
    order = 40
    description = "raw pynng Pair0 over tcp loopback, bytes send/recv"

    def sender(self) -> Sender:
        return _NngSender(self.payload.max_bytes())

    def receiver(self) -> Receiver:
        return _NngReceiver(self.payload.max_bytes())


class _NngSender(Sender):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.sock = None

    def connect(self, info: dict[str, Any]) -> None:
        import pynng

        self.sock = pynng.Pair0(send_timeout=30_000, recv_max_size=self.max_bytes)
        self.sock.dial(info["addr"], block=True)

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        self.sock.send(pack(frame_id, t0_ns, src))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class _NngReceiver(Receiver):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.sock = None
        self.timeout_ms = -1

    def open(self) -> dict[str, Any]:
        import pynng

        self.sock = pynng.Pair0(recv_max_size=self.max_bytes)
        listener = self.sock.listen("tcp://127.0.0.1:0")  # port 0: no clash with other runs
        # pynng 0.9 returns the port as stored in the sockaddr, i.e. in network byte order.
        port = socket.ntohs(listener.local_address.port)
        return {"addr": f"tcp://127.0.0.1:{port}"}

    def recv(self, timeout: float) -> Received | None:
        import pynng

        ms = max(1, int(timeout * 1000))
        if ms != self.timeout_ms:  # an option write is a call into nng: only when it changes
            self.sock.recv_timeout = self.timeout_ms = ms
        try:
            return unpack(self.sock.recv())
        except pynng.Timeout:
            return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
