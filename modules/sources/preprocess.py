"""The paper's decoder preprocessing (section 4.2.1): color order, transpose, normalisation.

Applied to the already resized uint8 BGR frame and written straight into the output slot;
the only buffer is a color scratch, allocated once, for the cases where the conversion cannot
go straight to the output (a later transpose or normalisation reads it).
"""

from __future__ import annotations

from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Color = Literal["bgr", "rgb", "gray"]
Layout = Literal["hwc", "chw"]
_Value = Annotated[float, Field(ge=-1e6, le=1e6)]


class Normalize(BaseModel):
    """``out = (pixel * scale - mean) / std`` per channel, as float32. ImageNet-style models:
    ``{mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}`` with ``color: rgb``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: tuple[_Value, ...] = Field(
        default=(0.0,), max_length=3, description="per channel (in the output color order) or one value for all"
    )
    std: tuple[_Value, ...] = Field(
        default=(1.0,), max_length=3, description="per channel or one value for all; no zeros"
    )
    scale: float = Field(
        default=1 / 255, ge=-1e6, le=1e6, description="multiplies the 0-255 pixel first (1/255 maps it to 0-1)"
    )

    @model_validator(mode="after")
    def _check(self) -> Normalize:
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, 3):
                raise ValueError(f"normalize.{name}: give 1 value or 3 (one per channel)")
        if any(s == 0 for s in self.std):
            raise ValueError("normalize.std: must not contain 0")
        return self


def per_channel(values: tuple[float, ...], channels: int) -> np.ndarray:
    """One value for every channel, or one per channel."""
    if len(values) == 1:
        return np.full(channels, values[0], np.float64)
    if len(values) != channels:
        raise ValueError(f"{len(values)} values for {channels} channel(s)")
    return np.asarray(values, np.float64)


class Preprocess:
    """Turns a uint8 BGR HxWx3 frame into ``shape``/``dtype`` (``apply(bgr, out)``)."""

    def __init__(
        self,
        w: int,
        h: int,
        color: Color = "bgr",
        layout: Layout = "hwc",
        normalize: Normalize | None = None,
    ) -> None:
        self.w, self.h, self.color, self.layout, self.normalize = w, h, color, layout, normalize
        self.channels = 1 if color == "gray" else 3
        c = self.channels
        self.shape: tuple[int, int, int] = (h, w, c) if layout == "hwc" else (c, h, w)
        self.dtype = np.dtype(np.float32 if normalize else np.uint8)
        #: False: the output would be the input (BGR HWC uint8); nothing to do.
        self.active = color != "bgr" or layout != "hwc" or normalize is not None
        self._code = {"rgb": cv2.COLOR_BGR2RGB, "gray": cv2.COLOR_BGR2GRAY}.get(color)
        # The conversion writes straight into the output when nothing follows it.
        direct = layout == "hwc" and normalize is None
        self._col = None if self._code is None or direct else np.empty((h, w, c), np.uint8)
        if normalize:
            # (x * scale - mean) / std == x * alpha + beta: one multiply and one add, in place.
            mean, std = per_channel(normalize.mean, c), per_channel(normalize.std, c)
            alpha, beta = normalize.scale / std, -mean / std
            bshape = (c,) if layout == "hwc" else (c, 1, 1)
            self._alpha = alpha.astype(np.float32).reshape(bshape)
            self._beta = beta.astype(np.float32).reshape(bshape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def apply(self, bgr: np.ndarray, out: np.ndarray) -> None:
        src = bgr
        if self._code is not None:
            dst = self._col if self._col is not None else out
            # cv2 wants the 2-D view for one channel; both are views of the same memory.
            cv2.cvtColor(bgr, self._code, dst=dst[..., 0] if self.channels == 1 else dst)
            src = dst
        if self.normalize is None:
            if self.layout == "chw":
                np.copyto(out, src.transpose(2, 0, 1))
            elif src is bgr:
                np.copyto(out, bgr)
            return
        view = src if self.layout == "hwc" else src.transpose(2, 0, 1)
        np.multiply(view, self._alpha, out=out)
        np.add(out, self._beta, out=out)
