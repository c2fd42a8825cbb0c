"""A TCP proxy between one client and its broker that can cut the path without closing it.

``cut()`` keeps forwarding what the client sends but silently drops everything the broker
sends back: a half-open network path, as a flaky uplink gives. The client's connection stays
up and the broker still sees it (it gets the client's publishes and pings), so the device's
retained state still says ``online`` while commands sent to it are lost. ``heal()`` closes the
connections (the client reconnects through the proxy) and forwards both ways again.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.cut_now = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
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

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if downstream and self.cut_now:
                    self.dropped_bytes += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.cut_now = True

    def heal(self) -> None:
        """Close every connection (what was dropped broke the client's stream), then forward."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.cut_now = False

    def close(self) -> None:
        self._srv.close()
        self.heal()
