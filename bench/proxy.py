"""A TCP proxy that can cut the path it carries without closing it (tests and ``bench chaos``).

``cut()`` keeps forwarding what the client sends but silently drops everything the server
sends back: a half-open network path, as a flaky uplink gives. The client's connection stays
up and the server still sees it (an MQTT broker gets the client's publishes and pings), so a
device's retained state still says ``online`` while commands sent to it are lost.
``cut(both=True)`` drops both ways and holds new connections without reaching the server: a
cable pulled (nothing is refused, nothing arrives; only the ends' timeouts notice).
``heal()`` closes the connections (what was dropped broke their streams; the client
reconnects through the proxy) and forwards both ways again.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Listens on ``listen_host:listen_port`` (a free port unless given), forwards to ``host:port``."""

    def __init__(self, host: str, port: int, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream = (host, port)
        self.cut_now = False
        self.cut_both = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server((listen_host, listen_port))
        self.port = self._srv.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.dropped_bytes = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            if self.cut_both:  # the cable is out: the server never hears of it
                with self._lock:
                    self._conns.append(client)
                threading.Thread(target=self._pump, args=(client, None, True), daemon=True).start()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if dst is None or self.cut_both or (downstream and self.cut_now):
                    self.dropped_bytes += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                if s is None:
                    continue
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self, both: bool = False) -> None:
        """Drop what the server sends (``both``: and what the client sends, and hold new clients)."""
        self.cut_now = True
        self.cut_both = both

    def heal(self) -> None:
        """Close every connection (what was dropped broke the client's stream), then forward."""
        with self._lock:
            conns, self._conns = self._conns, []
            self.cut_now = self.cut_both = False
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._srv.close()
        self.heal()
