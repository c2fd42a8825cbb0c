"""``decoder``: turns a video source into frames, decoded straight into the output ring slot."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from modules.base import Alloc, Module, ModuleConfig, ModuleError
from schemas.message import Message

ASSETS = Path(__file__).parent / "assets"
_LIVE = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://|^/dev/video\d+$|^\d+$")


class DecoderConfig(ModuleConfig):
    """Args of ``decoder``.

    ``source``: a video file path, ``asset:<name>`` for a clip bundled with edgeva (e.g.
    ``asset:vtest.mp4``), an ``rtsp://`` URL, a camera index (``0``) or ``/dev/videoN``, or
    ``synthetic`` for a generated test pattern (no file needed)."""

    type: Literal["decoder"] = "decoder"
    source: str = Field(description="file path, asset:<name>, rtsp:// URL, camera index, /dev/videoN or 'synthetic'")
    fps: float | None = Field(
        default=None, ge=0,
        description="frames per second to emit. Files and synthetic: paced in real time at this rate "
        "(None: the file's own rate; 0: as fast as possible). Live sources: frames above this rate are skipped.",
    )
    loop: bool = Field(default=True, description="files: start again at the end (False: end the stream)")
    max_frames: int | None = Field(default=None, gt=0, description="stop after this many frames")
    width: int | None = Field(default=None, gt=0, description="resize to this width (synthetic: its width, default 640)")
    height: int | None = Field(default=None, gt=0, description="resize to this height (synthetic: its height, default 360)")
    source_id: str | None = Field(default=None, description="name of the source in messages (default: from source)")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v == "synthetic" or _LIVE.match(v):
            return v
        path = resolve_path(v)
        if not path.is_file():
            raise ValueError(f"no such video file: {path}")
        return v


def resolve_path(source: str) -> Path:
    """``asset:<name>`` -> the bundled file; anything else is a path."""
    if source.startswith("asset:"):
        return ASSETS / source[len("asset:"):]
    return Path(source).expanduser()


class Decoder(Module[DecoderConfig]):
    """Source module. Emits one message per frame: ``arrays["frame"]`` (HxWx3 uint8 BGR),
    ``fields["width"]``, ``fields["height"]``; ``frame_id`` counts from 0 and keeps counting
    across loops. Frames are decoded straight into the output ring slot (no extra copy) unless
    a resize is asked for."""

    config_class = DecoderConfig
    is_source = True

    def setup(self) -> None:
        c = self.config
        self.live = c.source != "synthetic" and bool(_LIVE.match(c.source))
        self._frame_id = 0
        self._t0 = 0.0
        self._cap = None
        if c.source == "synthetic":
            self._w, self._h, rate = c.width or 640, c.height or 360, 10.0
            self._pattern = _Pattern(self._w, self._h)
        else:
            self._cap = self._open()
            self._w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self._h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            rate = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
            if self._w <= 0 or self._h <= 0:
                raise ModuleError(f"decoder: {c.source!r} reports no frame size")
        self._native = (self._w, self._h)
        if c.width or c.height:
            self._w, self._h = c.width or self._w, c.height or self._h
        self._scratch = None if (self._w, self._h) == self._native or c.source == "synthetic" else (
            np.empty((self._native[1], self._native[0], 3), np.uint8)
        )
        fps = rate if c.fps is None else c.fps
        self._period = 1.0 / fps if fps else 0.0
        self.source_id = c.source_id or (
            "synthetic" if c.source == "synthetic" else Path(resolve_path(c.source)).stem if not self.live else c.source
        )

    def _open(self) -> cv2.VideoCapture:
        src = self.config.source
        if re.match(r"^\d+$", src):
            cap = cv2.VideoCapture(int(src))
        else:
            cap = cv2.VideoCapture(src if self.live else os.fspath(resolve_path(src)))
        if not cap.isOpened():
            raise ModuleError(f"decoder: cannot open {src!r}")
        return cap

    def output_bytes(self) -> int:
        return self._w * self._h * 3 + 65536

    def produce(self, alloc: Alloc) -> Message | None:
        c = self.config
        if c.max_frames is not None and self._frame_id >= c.max_frames:
            return None
        frame = alloc("frame", (self._h, self._w, 3), np.uint8)
        if self._cap is None:
            self._pattern.render(self._frame_id, frame)
        elif not self._read(frame):
            return None
        msg = Message(self._frame_id, self.source_id, fields={"width": self._w, "height": self._h})
        self._frame_id += 1
        return msg

    def pace(self) -> None:
        if not self._period:
            return
        now = time.monotonic()
        if not self._t0:
            self._t0 = now
        due = self._t0 + self._frame_id * self._period
        if due > now:
            time.sleep(due - now)
        elif self.live and now - due > self._period:
            self._t0 = now - self._frame_id * self._period  # live: never try to catch up

    def _read(self, frame: np.ndarray) -> bool:
        target = frame if self._scratch is None else self._scratch
        ok, _ = self._cap.read(target)
        if not ok and self.config.loop and not self.live:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, _ = self._cap.read(target)
        if not ok:
            return False
        if self._scratch is not None:
            cv2.resize(self._scratch, (self._w, self._h), dst=frame, interpolation=cv2.INTER_AREA)
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


class _Pattern:
    """A moving test pattern whose pixels encode the frame id (for tests without a file)."""

    def __init__(self, w: int, h: int) -> None:
        x = np.linspace(0, 255, w, dtype=np.float32)
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        self.bg = np.dstack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                             np.full((h, w), 96, np.float32)]).astype(np.uint8)
        self.w, self.h = w, h

    def render(self, i: int, out: np.ndarray) -> None:
        np.copyto(out, self.bg)
        bw = max(8, self.w // 10)
        x = (i * 7) % max(1, self.w - bw)
        out[self.h // 3 : 2 * self.h // 3, x : x + bw] = (255, 255, 255)
        out[0, 0:4] = np.frombuffer(int(i).to_bytes(12, "little"), np.uint8).reshape(4, 3)
        cv2.putText(out, str(i), (8, self.h - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2)
