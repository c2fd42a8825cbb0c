"""``output_format: yolox``: Megvii YOLOX exports (``export_onnx.py``, without
``--decode_in_inference``): one output ``[1, N, 5+C]`` per input, one row per grid cell of the
strides 8, 16 and 32 (N = 8,400 at 640x640): ``x, y`` offsets in the cell, ``log w, log h``
in strides, objectness and class scores (already sigmoid). Decoded as YOLOX does: centre
``(offset + cell) * stride``, size ``exp(v) * stride``, score objectness x class score.

Pre-processing as YOLOX (0.2+) trains: letterbox at the top-left corner, grey 114, BGR,
0-255, NCHW (set ``channel_order: rgb`` and ``input_mean``/``input_std`` for the legacy models
trained with ImageNet normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeva.modules.detectors.formats import (
    EMPTY,
    Format,
    FormatError,
    FormatOptions,
    ModelMeta,
    OutputSpec,
    Preprocess,
    rows_from_xywh,
)
from edgeva.modules.detectors.formats.rows import pick

STRIDES = (8, 16, 32)


def grid(w: int, h: int, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(cells [N, 2] of x, y; stride [N]) in YOLOX's order: stride by stride, row by row."""
    cells, steps = [], []
    for s in strides:
        gw, gh = w // s, h // s
        ys, xs = np.mgrid[0:gh, 0:gw]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full(gw * gh, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


class Yolox(Format):
    name = "yolox"
    preprocess = Preprocess(resize="letterbox", anchor="topleft", pad=114, channels="bgr", scale=1.0)

    def __init__(self, out: OutputSpec, size: tuple[int, int]) -> None:
        self.outputs = (out.name,)
        self.cells, self.strides = grid(*size)
        self.detail = f"{out.name} {list(out.shape)}, strides {STRIDES}"

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Yolox:
        if meta.ultralytics:
            raise FormatError("an Ultralytics export (metadata): yolo")
        if len(outputs) > 1 and options.output_name is None:
            raise FormatError(f"needs one output (or output_name), got {len(outputs)}")
        out = pick(outputs, options.output_name)
        n = sum((size[0] // s) * (size[1] // s) for s in STRIDES)
        rows = (n, None) if options.explicit else (n,)  # dynamic: only when the deployment says yolox
        if len(out.shape) != 3 or out.shape[1] not in rows or (out.shape[2] or 6) < 6:
            raise FormatError(f"needs [1, {n}, 5+C] (one row per cell of strides 8/16/32 at "
                              f"{size[0]}x{size[1]}), {out.name} is {list(out.shape)}")
        return cls(out, size)

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        a = outs[0]
        if a.ndim == 3:
            a = a[0]
        if len(a) != len(self.cells):
            raise ValueError(f"yolox output has {len(a)} rows, expected {len(self.cells)}")
        keep = np.flatnonzero(a[:, 4] >= min_score)  # class scores <= 1: objectness bounds the score
        if not keep.size:
            return EMPTY
        c = a[keep]
        cls = c[:, 5:]
        k = cls.argmax(axis=1)
        score = cls[np.arange(len(c)), k] * c[:, 4]
        ok = score >= min_score
        c, keep, s = c[ok], keep[ok], self.strides[keep[ok]]
        cell = self.cells[keep]
        return rows_from_xywh((c[:, 0] + cell[:, 0]) * s, (c[:, 1] + cell[:, 1]) * s,
                              np.exp(c[:, 2]) * s, np.exp(c[:, 3]) * s, score[ok], k[ok])
