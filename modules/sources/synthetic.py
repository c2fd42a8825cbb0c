"""The ``synthetic`` source: a test pattern, for tests and demos without a video file."""

from __future__ import annotations

import cv2
import numpy as np


class Pattern:
    """A moving test pattern whose pixels encode the frame id (for tests without a file)."""

    def __init__(self, w: int, h: int) -> None:
        x = np.linspace(0, 255, w, dtype=np.float32)
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        self.bg = np.dstack(
            [
                np.broadcast_to(x, (h, w)),
                np.broadcast_to(y, (h, w)),
                np.full((h, w), 96, np.float32),
            ]
        ).astype(np.uint8)
        self.w, self.h = w, h

    def render(self, i: int, out: np.ndarray) -> None:
        np.copyto(out, self.bg)
        bw = max(8, self.w // 10)
        x = (i * 7) % max(1, self.w - bw)
        out[self.h // 3 : 2 * self.h // 3, x : x + bw] = (255, 255, 255)
        out[0, 0:4] = np.frombuffer(int(i).to_bytes(12, "little"), np.uint8).reshape(4, 3)
        cv2.putText(out, str(i), (8, self.h - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2)
