"""A third-party module type for tests (``blur``), as a package outside edgeva would ship it.

Not importable from the test suite's path: a test copies it into a temporary directory with
a dist-info whose ``entry_points.txt`` registers ``blur = edgeva_blur:Blur`` in the
``edgeva.modules`` group, and runs ``edgeva`` with that directory on ``PYTHONPATH``.
"""

from typing import Literal

import cv2
from pydantic import Field

from edgeva.modules.base import Module, ModuleConfig


class BlurConfig(ModuleConfig):
    """Args of ``blur``: a Gaussian blur of the frame."""

    type: Literal["blur"] = "blur"
    kernel: int = Field(5, ge=1, le=99, description="kernel size in pixels (odd)")
    sigma: float | None = Field(None, ge=0, description="Gaussian sigma; null: from the kernel size")


class Blur(Module[BlurConfig]):
    """Blurs ``arrays["frame"]`` and passes the message on."""

    config_class = BlurConfig

    def process(self, msg):
        frame = msg.arrays.get("frame")
        if frame is None:
            return msg
        k = self.config.kernel | 1
        out = msg.derive()
        out.arrays["frame"] = cv2.GaussianBlur(frame, (k, k), self.config.sigma or 0)
        return out
