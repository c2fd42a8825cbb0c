"""``output_format: yolo``: Ultralytics YOLO exports, raw (``nms=False``, the default).

- v8, v9, v10-without-NMS, v11, v12: one output ``[1, 4+C, N]``: ``cx, cy, w, h`` in input
  pixels then C class scores (already sigmoid), N candidates (8,400 at 640x640);
- v5 (and v7): one output ``[1, N, 5+C]``: ``cx, cy, w, h``, an objectness, C class scores;
  score = objectness x class score (N = 25,200 at 640x640: 3 anchors per cell).

Told apart by the output's orientation (N is the long axis). Pre-processing as Ultralytics
trains: letterbox centred with grey 114, RGB, pixels / 255, NCHW. The export's metadata gives
the class names (``names``) and the input size of a dynamic-size export (``imgsz``).
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


class Yolo(Format):
    name = "yolo"
    preprocess = Preprocess(resize="letterbox", anchor="center", pad=114, channels="rgb", scale=1 / 255)

    def __init__(self, out: OutputSpec, v8: bool | None) -> None:
        self.outputs = (out.name,)
        self.v8 = v8  # None: told at the first frame (both axes dynamic)
        self.detail = f"{'v8' if v8 else 'v5' if v8 is False else '?'} {out.name} {list(out.shape)}"
        self._best = np.empty(0, np.float32)  # per-candidate best class score, reused

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Yolo:
        if meta.rtdetr:
            raise FormatError("an Ultralytics RT-DETR export (metadata): detr")
        if meta.task not in (None, "detect"):
            raise FormatError(f"an Ultralytics {meta.task} model (metadata task); only detect models are read")
        if len(outputs) > 1 and options.output_name is None and not meta.ultralytics:
            raise FormatError(f"needs one output (or output_name), got {len(outputs)}")
        out = pick(outputs, options.output_name)
        if len(out.shape) != 3:
            raise FormatError(f"needs one [1, 4+C, N] or [1, N, 5+C] output, {out.name} is {list(out.shape)}")
        a, b = out.shape[1], out.shape[2]
        if a is not None and b is not None:
            if a == b:
                raise FormatError(f"{out.name} {list(out.shape)}: cannot tell candidates from values")
            v8: bool | None = a < b
        else:
            v8 = True if b is None and a is not None else False if a is None and b is not None else None
        fixed, n = (a, b) if v8 else (b, a)
        if fixed is not None and fixed < (5 if v8 else 6):
            raise FormatError(f"{out.name} {list(out.shape)} has too few values per candidate "
                              f"({fixed}) for boxes and classes")
        if meta.names and fixed is not None and fixed != len(meta.names) + (4 if v8 else 5):
            raise FormatError(f"{out.name} {list(out.shape)} has {fixed} values per candidate; the metadata's "
                              f"{len(meta.names)} class names need {len(meta.names) + (4 if v8 else 5)}")
        cells = [sum((size[0] // s) * (size[1] // s) for s in strides) for strides in ((8, 16, 32), (8, 16, 32, 64))]
        grids = cells if v8 else [3 * c for c in cells]  # v5: 3 anchors per cell
        if not (options.explicit or meta.ultralytics) and n not in grids:
            # Guessing: only outputs whose candidates are the cells of a YOLO grid at this size.
            raise FormatError(f"needs [1, 4+C, N] or [1, N, 5+C] with N one of {grids} (the grid "
                              f"cells at {size[0]}x{size[1]}), {out.name} is {list(out.shape)}")
        return cls(out, v8)

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        a = outs[0]
        if a.ndim == 3:
            a = a[0]
        v8 = self.v8 if self.v8 is not None else a.shape[0] < a.shape[1]
        return self._v8(a, min_score) if v8 else self._v5(a, min_score)

    def _v8(self, a: np.ndarray, thr: float) -> np.ndarray:
        cls = a[4:]  # [C, N]
        n = a.shape[1]
        if self._best.shape[0] != n:
            self._best = np.empty(n, a.dtype)
        best = cls.max(axis=0, out=self._best)
        keep = np.flatnonzero(best >= thr)
        if not keep.size:
            return EMPTY
        box = a[:4, keep]
        return rows_from_xywh(box[0], box[1], box[2], box[3], best[keep], cls[:, keep].argmax(axis=0))

    @staticmethod
    def _v5(a: np.ndarray, thr: float) -> np.ndarray:
        # Class scores are <= 1, so a candidate whose objectness is under the threshold cannot
        # pass: filter on it first (one column), then look at the classes of the few left.
        c = a[a[:, 4] >= thr]
        if not len(c):
            return EMPTY
        cls = c[:, 5:]
        k = cls.argmax(axis=1)
        score = cls[np.arange(len(c)), k] * c[:, 4]
        ok = score >= thr
        c = c[ok]
        return rows_from_xywh(c[:, 0], c[:, 1], c[:, 2], c[:, 3], score[ok], k[ok])
