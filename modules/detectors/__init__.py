"""Inference backends of the ``detector`` module (``modules/detector.py``).

A backend wraps one loaded model and knows nothing about messages. Two kinds:

- tensor backends (``onnx``, ``triton``): the module resizes each frame to ``input_size``,
  converts BGR -> RGB float32 and writes it into ``input_buffer()`` (preallocated once; for
  Triton with shared memory it *is* the shared memory region, so nothing is copied again);
  ``infer(n)`` runs on the first ``n`` images and returns, per image, an array [K, 6] of
  ``x1, y1, x2, y2, score, class`` in input pixels (raw: no threshold, no NMS).
- frame backends (``opencv-hog``): ``infer_frames(frames)`` takes the BGR frames themselves and
  returns the same [K, 6] layout in frame pixels.

The module does the rest (scaling back, clipping, threshold, class filter, NMS), so a new
backend only has to produce raw rows in that layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import logging

    from edgeva.modules.detector import DetectorConfig


class Backend:
    """Base of the detector backends; see the package docstring for the contract."""

    #: False for backends that take BGR frames (``infer_frames``) instead of a tensor.
    takes_tensor: bool = True
    #: (width, height) of one model input image (tensor backends).
    input_size: tuple[int, int] = (0, 0)
    #: "nhwc" ([N, H, W, 3], the bundled CenterNet) or "nchw" ([N, 3, H, W], most PyTorch exports).
    layout: Literal["nhwc", "nchw"] = "nhwc"
    #: Most images one ``infer`` call takes (1: the model has a fixed batch of one).
    max_batch: int = 1

    def input_buffer(self) -> np.ndarray:
        """The [max_batch, ...] float32 array the module writes preprocessed images into."""
        raise NotImplementedError

    def infer(self, n: int) -> list[np.ndarray]:
        """Run the model on the first ``n`` images of ``input_buffer()``."""
        raise NotImplementedError

    def infer_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Frame backends: detect on BGR frames; rows in frame pixels."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions, connections, shared memory. Idempotent."""


def make_backend(config: DetectorConfig, log: logging.Logger) -> Backend:
    """Load the backend ``config.backend`` names (imports its library only now)."""
    if config.backend == "onnx":
        from edgeva.modules.detectors.onnx import OnnxBackend

        return OnnxBackend(config, log)
    if config.backend == "opencv-hog":
        from edgeva.modules.detectors.hog import HogBackend

        return HogBackend(config, log)
    from edgeva.modules.detectors.triton import TritonBackend

    return TritonBackend(config, log)


def rows(raw: np.ndarray) -> np.ndarray:
    """A model output for one image as float32 [K, 6]; refuses other layouts with a clear error."""
    a = np.asarray(raw, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(
            f"detector output has shape {tuple(np.shape(raw))}; expected [K, 6] rows of "
            "x1, y1, x2, y2, score, class (in input pixels)"
        )
    return a
