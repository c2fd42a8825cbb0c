"""Opening cv2 captures for network streams and V4L2 cameras, and a capture that reconnects.

Network URLs (rtsp, rtmp, http, udp, tcp) go through the FFmpeg backend with open/read
timeouts, so a dead server fails a read in milliseconds instead of hanging the source.
Cameras (``/dev/videoN`` or an index) go through V4L2. Both can drop while running (a camera
reboots, a cable is pulled): ``LiveCapture`` then releases the capture and retries opening it
with a capped exponential backoff, each attempt bounded by the open timeout.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np

_CAMERA = re.compile(r"^/dev/video\d+$|^\d+$")
_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def is_camera(source: str) -> bool:
    return bool(_CAMERA.match(source))


def camera_exists(source: str) -> bool:
    """Whether the device node of a camera source (``/dev/videoN`` or ``N``) is there."""
    return os.path.exists(f"/dev/video{source}" if source.isdigit() else source)


@contextmanager
def _ffmpeg_options(options: str) -> Iterator[None]:
    # OpenCV reads FFmpeg demuxer options (such as rtsp_transport) only from this variable,
    # at open time. An operator's own options come last so they win over ours.
    old = os.environ.get(_OPTIONS_ENV)
    os.environ[_OPTIONS_ENV] = f"{options}|{old}" if old else options
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_OPTIONS_ENV, None)
        else:
            os.environ[_OPTIONS_ENV] = old


def open_stream(
    url: str, *, transport: str, open_timeout_s: float, read_timeout_s: float
) -> cv2.VideoCapture | None:
    """A network stream through FFmpeg, or None if it cannot be opened within the timeout."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_timeout_s * 1000),
    ]
    options = f"rtsp_transport;{transport}" if url.startswith(("rtsp://", "rtsps://")) else ""
    if options:
        with _ffmpeg_options(options):
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    else:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def open_camera(
    source: str, *, width: int | None, height: int | None, fps: float | None, fourcc: str | None
) -> cv2.VideoCapture | None:
    """A V4L2 camera with the requested format, or None if it cannot be opened.

    The camera may pick another size or rate than requested (it offers a fixed list of modes);
    the caller reads the actual size back and resizes when it differs."""
    if not camera_exists(source):
        return None  # don't let V4L2 print a scary warning for the common "not plugged in" case
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        return None
    # FOURCC first: with MJPG many USB cameras offer larger sizes and higher rates than raw YUYV.
    if fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
    if width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    if height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if fps:
        cap.set(cv2.CAP_PROP_FPS, fps)
    return cap


def frame_size(cap: cv2.VideoCapture) -> tuple[int, int]:
    return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


class LiveCapture:
    """A capture that survives its source going away.

    ``grab``/``retrieve`` work like cv2's; a failure releases the capture instead of ending
    anything. ``reconnect(max_wait_s)`` is one bounded step (wait for the next attempt, at most
    ``max_wait_s``, then try once), so the caller stays responsive while the source is down.
    Attempts are ``reconnect_s`` apart at first, doubling up to ``reconnect_max_s``.
    """

    def __init__(
        self,
        opener: Callable[[], cv2.VideoCapture | None],
        *,
        name: str,
        reconnect_s: float,
        reconnect_max_s: float,
        log: logging.Logger,
    ) -> None:
        self._opener = opener
        self.name = name
        self.reconnect_s, self.reconnect_max_s = reconnect_s, max(reconnect_s, reconnect_max_s)
        self.log = log
        self.cap: cv2.VideoCapture | None = None
        self.reconnects = 0  # successful reopenings after a drop
        self._delay = reconnect_s
        self._next_try = 0.0
        self._down_since = 0.0

    @property
    def connected(self) -> bool:
        return self.cap is not None

    def open(self, fail_fast_s: float) -> bool:
        """The first open (setup): retry for up to ``fail_fast_s`` seconds, then give up."""
        deadline = time.monotonic() + fail_fast_s
        delay = self.reconnect_s
        while (cap := self._opener()) is None:
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)
        self.cap = cap
        return True

    def grab(self) -> bool:
        if self.cap is None:
            return False
        if self.cap.grab():
            return True
        self._drop("read failed")
        return False

    def retrieve(self, out: np.ndarray) -> bool:
        if self.cap is None:
            return False
        ok, img = self.cap.retrieve(out)
        if not ok:
            self._drop("decode failed")
        elif img is not out:
            # cv2 allocated instead of writing into `out`: the stream changed size. Reopening
            # makes the caller read the new size back and resize it to the one it emits.
            self._drop("frame size changed")
            return False
        return ok

    def mark_down(self) -> None:
        """The source is not there yet (setup gave up on it): reconnect from now on."""
        self.cap = None
        self._down_since = time.monotonic()
        self._next_try = self._down_since + self._delay

    def reconnect(self, max_wait_s: float) -> bool:
        """Wait (at most ``max_wait_s``) for the next attempt, make it, say if it worked."""
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max_wait_s))
            if wait > max_wait_s:
                return False
        cap = self._opener()
        if cap is None:
            self._delay = min(self._delay * 2, self.reconnect_max_s)
            self._next_try = time.monotonic() + self._delay
            return False
        self.cap = cap
        self.reconnects += 1
        self._delay = self.reconnect_s
        self.log.info(
            "%s: reconnected after %.1f s (reconnect #%d)",
            self.name,
            time.monotonic() - self._down_since,
            self.reconnects,
        )
        return True

    def _drop(self, why: str) -> None:
        # Logged once per outage, not per attempt: attempts are visible as the gap in frames.
        self.log.warning(
            "%s: %s; reconnecting every %.1f-%.1f s",
            self.name,
            why,
            self.reconnect_s,
            self.reconnect_max_s,
        )
        self.release()
        self._down_since = time.monotonic()
        self._delay = self.reconnect_s
        self._next_try = self._down_since + self._delay

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
