"""``http-msgpack``: the paper's cross-runtime design, msgpack over HTTP POST, keep-alive.

Client: ``http.client.HTTPConnection``, one persistent connection with TCP_NODELAY. Server: the
stdlib ``http.server`` request handler (HTTP/1.1, TCP_NODELAY), driven one request per ``recv``
from the consumer's own thread: no thread hand-off, so this is a lower bound of the paper's
Flask/gunicorn stack. Without TCP_NODELAY on both ends, Nagle and delayed ACKs add ~40 ms.

Written the way a careful implementer would, so that the design is measured, not waste: the
body is one msgpack map (frame: header, dtype, shape, raw bytes as bin), streamed from the
source array without building it in memory; the server reads it into a reused buffer and decodes
it with ``msgpack.unpackb`` (whose bin comes out as a new ``bytes``: the one copy left) into a
numpy view. It answers 204 after decoding, so a request completes once the consumer holds the
array. Remaining cost: kernel copies both ways over loopback, one copy in the decoder, the HTTP
parsing in Python, and a full round trip per message (no pipelining over one connection).
"""

from __future__ import annotations

import http.client
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

import msgpack
import numpy as np

from edgeva.bench.hop.transports.base import (
    Received,
    Receiver,
    Sender,
    Transport,
    frame_head,
    register,
    unpack,
)


@register
class HttpMsgpackTransport(Transport):
    name = "http-msgpack"
    order = 30
    description = "msgpack over HTTP POST (stdlib http.server / http.client, keep-alive)"

    def sender(self) -> Sender:
        return _HttpSender()

    def receiver(self) -> Receiver:
        return _HttpReceiver(self.payload.max_bytes())


class _HttpSender(Sender):
    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None

    def connect(self, info: dict[str, Any]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=30.0)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        c = self.conn
        if isinstance(src, dict):
            head, data = msgpack.packb(src), None
        else:
            head, data = frame_head(frame_id, t0_ns, src), src.data
        c.putrequest("POST", "/hop", skip_accept_encoding=True)
        c.putheader("Content-Type", "application/msgpack")
        c.putheader("Content-Length", str(len(head) + (src.nbytes if data is not None else 0)))
        c.endheaders(message_body=head)  # headers + msgpack head in one write
        if data is not None:
            c.send(data)  # the array's bytes straight from the source buffer
        resp = c.getresponse()
        resp.read()  # drain, so that the connection can carry the next request
        if resp.status != 204:
            raise RuntimeError(f"http-msgpack: server answered {resp.status} {resp.reason}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    result: Received | None = None
    body: memoryview  # a reused receive buffer, set by _HttpReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        n = int(self.headers["Content-Length"])
        if n > len(self.body):
            self.send_error(413)
            return
        got = 0
        while got < n:  # readinto may return short on a socket
            k = self.rfile.readinto(self.body[got:n])
            if not k:
                raise ConnectionError("http-msgpack: client closed mid-body")
            got += k
        self.result = unpack(self.body[:n])
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass  # no per-request stderr line


class _HttpReceiver(Receiver):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.lsock: socket.socket | None = None
        self.h: _Handler | None = None

    def open(self) -> dict[str, Any]:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        return {"port": self.lsock.getsockname()[1]}

    def _accept(self, timeout: float) -> bool:
        self.lsock.settimeout(timeout)
        try:
            conn, addr = self.lsock.accept()
        except TimeoutError:
            return False
        # The stdlib handler without its serve-until-close loop: one request per recv().
        h = _Handler.__new__(_Handler)
        h.request, h.client_address, h.server = conn, addr, None
        h.body = memoryview(bytearray(self.max_bytes))
        h.setup()  # rfile/wfile, TCP_NODELAY
        self.h = h
        return True

    def recv(self, timeout: float) -> Received | None:
        if self.h is None and not self._accept(timeout):
            return None
        h = self.h
        h.connection.settimeout(timeout)
        h.result = None
        h.handle_one_request()  # a timeout or a closed connection leaves result None
        return h.result

    def close(self) -> None:
        if self.h is not None:
            self.h.finish()
            self.h.connection.close()
        if self.lsock is not None:
            self.lsock.close()
