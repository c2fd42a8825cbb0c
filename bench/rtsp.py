"""A tiny local RTSP camera for decoder tests and ``bench chaos``: ffmpeg encodes a test pattern
to RTP/UDP, this relays it to RTSP clients over TCP (interleaved RTP, what the decoder asks for
by default).

Debian's ffmpeg can push RTSP but not serve it, and gst-rtsp-server is not installed, so the
server side is ~100 lines here: OPTIONS, DESCRIBE (ffmpeg's own SDP), SETUP (TCP interleaved
only), PLAY, TEARDOWN; GET_PARAMETER keep-alives and the client's RTCP are read and ignored.
``stop()`` kills ffmpeg and drops every connection, which is what a camera reboot looks like
to the client; ``start()`` again on the same port brings it back.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

FFMPEG = "/usr/bin/ffmpeg"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspPeer:
    """``RtspPeer(tmp_path).start()``; ``url`` is ``rtsp://127.0.0.1:<port>/test``."""

    def __init__(
        self, workdir: Path, port: int | None = None, size: str = "320x240", rate: int = 25
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.size, self.rate = size, rate
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self._ffmpeg: subprocess.Popen | None = None
        self._listener: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = False
        self.sdp = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> RtspPeer:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.2)
        rtp_port = self._udp.getsockname()[1]
        sdp_path = self.workdir / f"peer-{self.port}.sdp"
        sdp_path.unlink(missing_ok=True)
        # Keyframes every 5 frames so a (re)connecting client decodes within ~0.2 s.
        self._ffmpeg = subprocess.Popen(
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={self.size}:rate={self.rate}",
                "-c:v",
                "mpeg4",
                "-g",
                "5",
                "-q:v",
                "5",
                "-f",
                "rtp",
                "-payload_type",
                "96",
                f"rtp://127.0.0.1:{rtp_port}?pkt_size=1200",
                "-sdp_file",
                str(sdp_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (sdp_path.exists() and "m=video" in sdp_path.read_text()):
            if time.monotonic() > deadline or self._ffmpeg.poll() is not None:
                self.stop()
                raise RuntimeError("rtsp peer: ffmpeg did not start")
            time.sleep(0.05)
        lines = [ln for ln in sdp_path.read_text().splitlines() if ln and not ln.startswith("c=")]
        lines = [ln.replace(f"m=video {rtp_port}", "m=video 0") for ln in lines]
        self.sdp = "\r\n".join([*lines, "c=IN IP4 0.0.0.0", "a=control:streamid=0"]) + "\r\n"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(4)
        self._running = True
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        threading.Thread(target=self._relay, args=(self._udp,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
            self._ffmpeg.wait()
            self._ffmpeg = None
        for s in (self._listener, self._udp):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept/recv
                s.close()
        self._listener = self._udp = None
        with self._lock:
            for c in self._clients:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._clients.clear()

    def __enter__(self) -> RtspPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- server ------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _relay(self, udp: socket.socket) -> None:
        while self._running:
            try:
                pkt = udp.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            frame = b"$\x00" + len(pkt).to_bytes(2, "big") + pkt
            with self._lock:
                for c in list(self._clients):
                    try:
                        c.sendall(frame)
                    except OSError:
                        self._clients.remove(c)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while self._running:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while buf:
                    if buf[:1] == b"$":  # the client's interleaved RTCP: skip it
                        if len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[2:4], "big"):
                            break
                        buf = buf[4 + int.from_bytes(buf[2:4], "big") :]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end].decode("latin-1"), buf[end + 4 :]
                    self._answer(conn, head)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._clients:
                    self._clients.remove(conn)
            conn.close()

    def _answer(self, conn: socket.socket, head: str) -> None:
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        hdr = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        extra, body = [], b""
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
        elif method == "DESCRIBE":
            body = self.sdp.encode()
            extra += ["Content-Type: application/sdp", f"Content-Base: {self.url}/"]
        elif method == "SETUP":
            if "interleaved" not in hdr.get("transport", ""):
                conn.sendall(
                    f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {hdr.get('cseq')}\r\n\r\n".encode()
                )
                return
            extra += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", "Session: 1234;timeout=60"]
        elif method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
            extra.append("Session: 1234")
        reply = (
            "\r\n".join(
                [
                    "RTSP/1.0 200 OK",
                    f"CSeq: {hdr.get('cseq')}",
                    *extra,
                    f"Content-Length: {len(body)}",
                    "",
                    "",
                ]
            ).encode()
            + body
        )
        with self._lock:
            conn.sendall(reply)
            if method == "PLAY":
                self._clients.append(conn)
