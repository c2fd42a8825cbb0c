"""``annotate``: draws detections, tracks, RoI polygons and re-id names on the frame and writes
the result to a video file or serves it as an MJPEG stream over HTTP (for a browser / VLC)."""

from __future__ import annotations

import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from edgeva.modules.base import (
    MAX_PATH_CHARS,
    MAX_POLYGONS,
    Module,
    ModuleConfig,
    ModuleError,
    Polygon,
    RegionName,
)
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports

Layer = Literal["detections", "tracks", "roi", "reid"]
_MJPEG = "mjpeg://"
_BOUNDARY = "edgevaframe"
# BGR colours: detections thin grey, tracks per id, polygons yellow, re-id magenta.
_DET, _POLY, _REID = (200, 200, 200), (0, 220, 255), (255, 0, 255)
_PALETTE = [(255, 128, 0), (0, 200, 0), (0, 128, 255), (200, 0, 200), (0, 0, 230), (255, 255, 0)]


class AnnotateConfig(ModuleConfig):
    """Arguments of the ``annotate`` module."""

    type: Literal["annotate"] = "annotate"
    # draws whichever of detections, tracks, roi and reid it gets: only the frame is needed
    ports: ClassVar[Ports] = Ports(consumes="frame", forwards="nothing")
    output: str = Field(
        max_length=MAX_PATH_CHARS,
        json_schema_extra={"edgeva_path": "output"},  # the agent confines it (agent/paths.py)
        description=(
            "A video file (.mp4 or .avi; its folder must exist) or mjpeg://HOST:PORT to serve "
            "http://HOST:PORT/ as a multipart MJPEG stream (any number of viewers; use "
            "0.0.0.0 to accept other machines, port 0 picks a free one)."
        ),
        examples=["mjpeg://127.0.0.1:8090", "annotated.mp4"],
    )
    fps: float = Field(10.0, gt=0, le=1000, description="Frame rate written into the file (playback speed).")
    draw: list[Layer] = Field(
        ["detections", "tracks", "roi", "reid"],
        max_length=8,
        description="What to draw, from the message fields of the same name.",
    )
    polygons: dict[RegionName, Polygon] = Field(
        {}, max_length=MAX_POLYGONS, description="RoI polygons to outline, {name: [[x, y], ...]} in frame pixels."
    )
    codec: str = Field(
        "mp4v",
        min_length=4,
        max_length=4,
        description="FourCC for files. The pip OpenCV writes mp4v, MJPG and XVID, not avc1/H.264.",
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="mjpeg: JPEG quality of each frame.")

    @field_validator("output")
    @classmethod
    def _output_kind(cls, v: str) -> str:
        if v.startswith(_MJPEG):
            host, _, port = v[len(_MJPEG) :].rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected mjpeg://HOST:PORT, got {v!r}")
        elif Path(v).suffix.lower() not in (".mp4", ".avi"):
            raise ValueError(f"output must end in .mp4 or .avi, or be mjpeg://HOST:PORT: {v!r}")
        return v


class Annotate(Module[AnnotateConfig]):
    """Terminal module: consumes ``arrays["frame"]`` (H x W x 3 uint8 BGR) with any of
    ``fields["detections"]``, ``["tracks"]``, ``["roi"]`` (counts, shown next to the polygon
    names) and ``["reid"]``; returns nothing. A message without a frame is skipped.

    The frame is copied into one canvas allocated at the first frame (the input may be a
    read-only ring view) and drawn on there. Files: the frame size is fixed by the first frame;
    a later frame of another size is resized to it. MJPEG: ``port`` is the bound port (useful
    with port 0); a viewer that falls behind gets the newest frame, never a queue.
    """

    config_class: ClassVar[type[ModuleConfig]] = AnnotateConfig

    def setup(self) -> None:
        c = self.config
        self._canvas: np.ndarray | None = None
        self._writer: cv2.VideoWriter | None = None
        self._server: _MjpegServer | None = None
        self._polys = {n: np.asarray(p, np.int32).reshape(-1, 1, 2) for n, p in c.polygons.items()}
        if c.output.startswith(_MJPEG):
            host, _, port = c.output[len(_MJPEG) :].rpartition(":")
            try:
                self._server = _MjpegServer(host, int(port))
            except OSError as e:
                raise ModuleError(f"annotate: cannot listen on {c.output}: {e}") from e
            self.port = self._server.port
        elif not Path(c.output).expanduser().parent.is_dir():
            raise ModuleError(f"annotate: folder of {c.output} does not exist")

    def process(self, msg: Message) -> None:
        frame = msg.arrays.get("frame")
        if frame is None:
            return None
        if self._canvas is None:
            self._canvas = np.empty_like(frame)
            self._open_writer(frame.shape[1], frame.shape[0])
        canvas = self._canvas
        if frame.shape == canvas.shape:
            np.copyto(canvas, frame)
        else:
            cv2.resize(frame, (canvas.shape[1], canvas.shape[0]), dst=canvas)
        self.draw(canvas, msg.fields)
        if self._writer is not None:
            self._writer.write(canvas)
        else:
            ok, jpg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
            if ok:
                self._server.publish(jpg.tobytes())
        return None

    def _open_writer(self, w: int, h: int) -> None:
        if self._server is not None:
            return
        c = self.config
        path = str(Path(c.output).expanduser())
        # The tenant's video is the tenant's alone: created 0600 before the writer opens it
        # (the writer keeps the mode), and anything else this process makes is private too.
        os.umask(0o077)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
        except OSError as e:
            raise ModuleError(f"annotate: cannot write {path}: {e.strerror or e}") from e
        self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*c.codec), c.fps, (w, h))
        if not self._writer.isOpened():
            self._writer = None
            raise ModuleError(f"annotate: cannot write {path} with codec {c.codec!r} (try mp4v or MJPG)")

    def draw(self, img: np.ndarray, fields: dict) -> None:
        """Draw the configured layers of ``fields`` onto ``img`` in place."""
        layers = self.config.draw
        if "roi" in layers:
            counts = fields.get("roi") or {}
            for name, pts in self._polys.items():
                cv2.polylines(img, [pts], True, _POLY, 2)
                n = counts.get(name, {}).get("count")
                _label(img, name if n is None else f"{name}: {n}", pts[0, 0], _POLY)
        if "detections" in layers:
            dets = fields.get("detections") or []
            labels = fields.get("labels")  # the detector's class names, parallel to detections
            if not isinstance(labels, list) or len(labels) != len(dets):
                labels = None
            for i, d in enumerate(dets):
                p1, p2 = (int(d[0]), int(d[1])), (int(d[2]), int(d[3]))
                cv2.rectangle(img, p1, p2, _DET, 1)
                name = labels[i] if labels is not None else int(d[5])
                _label(img, f"{name} {d[4]:.2f}", p1, _DET)
        if "tracks" in layers:
            for t in fields.get("tracks") or []:
                b, colour = t["box"], _PALETTE[int(t["id"]) % len(_PALETTE)]
                cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), colour, 2)
                _label(img, f"#{t['id']}", (int(b[0]), int(b[3]) + 12), colour)
        if "reid" in layers:
            for m in fields.get("reid") or []:
                b = m["box"]
                cv2.rectangle(img, (int(b[0]) - 2, int(b[1]) - 2), (int(b[2]) + 2, int(b[3]) + 2), _REID, 2)
                _label(img, f"{m['template']} {m['similarity']:.2f}", (int(b[0]), int(b[1]) - 14), _REID)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()  # writes the mp4 index: without it the file is unreadable
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None


def _label(img: np.ndarray, text: str, org, colour) -> None:
    x, y = int(org[0]), max(int(org[1]) - 3, 10)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


class _MjpegServer:
    """``multipart/x-mixed-replace`` JPEG stream on every GET, one thread per viewer.

    ``publish`` stores the newest JPEG and wakes the viewers; each viewer sends the newest one
    it has not sent yet, so a slow viewer drops frames instead of slowing the pipeline.
    """

    def __init__(self, host: str, port: int) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._closed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                super().setup()
                # Nagle would hold each part back for up to 40 ms (delayed ACK interplay).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                seen = 0
                while True:
                    jpeg, seen = server.wait(seen)
                    if jpeg is None:
                        return
                    try:
                        self.wfile.write(
                            f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"
                        )
                        self.wfile.flush()
                    except OSError:  # viewer went away
                        return

            def log_message(self, *args) -> None:  # no per-request logging
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="annotate-mjpeg", daemon=True)
        self._thread.start()

    def publish(self, jpeg: bytes) -> None:
        with self._cond:
            self._jpeg, self._seq = jpeg, self._seq + 1
            self._cond.notify_all()

    def wait(self, seen: int) -> tuple[bytes | None, int]:
        """The newest frame after ``seq`` ``seen`` (blocks), or None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._seq > seen)
            return (None, seen) if self._closed else (self._jpeg, self._seq)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
