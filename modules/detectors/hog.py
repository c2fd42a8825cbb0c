"""``backend: opencv-hog``: OpenCV's HOG + linear SVM people detector. Needs no model file.

Persons only (class 0). Cost grows with frame area: about 35 ms at 640x360 and 100-150 ms at
768x576 on a small 2-core machine (3-4x the bundled CenterNet, which also finds more people), so it suits low frame rates or a fallback where no model can
be shipped. ``hog_scale`` resizes the frame first: 0.5 is ~4x faster but misses people under
~250 px tall (the detection window is 64x128 px, so a person must be at least that tall after
scaling); 1.5 finds people down to ~85 px, ~2x slower.

Score: HOG gives an SVM margin (0 = on the boundary, 1-4 for clear people); it is mapped to
``1 - exp(-margin)`` so that the module's ``score_threshold`` reads the same way as for
models (0.4 keeps margins above 0.5, which drops most false positives). OpenCV uses
``threads`` worker threads for the whole process (modules run in processes of their own).
"""

from __future__ import annotations

import logging
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from edgeva.modules.detectors import Backend, BackendConfig, DetectorArgs


class HogConfig(BackendConfig):
    """``backend: opencv-hog``: OpenCV's HOG people detector (no model file, persons only,
    slow on large frames)."""

    type: Literal["opencv-hog"] = "opencv-hog"
    hog_scale: float = Field(
        1.0, gt=0.0, le=4.0, description="resize frames by this first (0.5: ~4x "
        "faster, misses people under ~250 px; 1.5: finds people down to ~85 px, slower)")


class HogBackend(Backend):
    config_class = HogConfig
    takes_tensor = False

    def __init__(self, config: HogConfig, args: DetectorArgs, log: logging.Logger) -> None:
        cv2.setNumThreads(args.threads)
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._scale = config.hog_scale
        self._small: np.ndarray | None = None  # reused resize target
        self.max_batch = 1
        log.info("detector: OpenCV HOG people detector, scale %.2f, %d thread(s)",
                 self._scale, args.threads)

    def infer_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [self._detect(f) for f in frames]

    def _detect(self, frame: np.ndarray) -> np.ndarray:
        img, s = frame, self._scale
        if s != 1.0:
            h, w = frame.shape[:2]
            size = (max(64, round(w * s)), max(128, round(h * s)))
            if self._small is None or self._small.shape[1::-1] != size:
                self._small = np.empty((size[1], size[0], 3), np.uint8)
            cv2.resize(frame, size, dst=self._small, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            img = self._small
        boxes, margins = self._hog.detectMultiScale(img, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(boxes) == 0:
            return np.zeros((0, 6), np.float32)
        b = np.asarray(boxes, np.float32) / s
        out = np.empty((len(b), 6), np.float32)
        out[:, 0:2] = b[:, 0:2]
        out[:, 2:4] = b[:, 0:2] + b[:, 2:4]
        out[:, 4] = 1.0 - np.exp(-np.asarray(margins, np.float32).ravel())
        out[:, 5] = 0
        return out
