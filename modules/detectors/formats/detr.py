"""``output_format: detr``: DETR-style set predictions (RT-DETR, RF-DETR, D-FINE, DETR):
two outputs per image, ``boxes [Q, 4]`` (``cx, cy, w, h`` normalised 0-1 to the input) and
class ``logits [Q, C]`` for Q queries. Score = sigmoid of the best logit (``detr_activation:
sigmoid``: RT-DETR, RF-DETR, D-FINE), or its softmax over the classes with the last one a
"no object" class left out (``softmax``: the original DETR). No NMS: each object has one
query (the module's ``nms_iou`` and ``nms_contain`` are not applied).

Ultralytics RT-DETR exports (their metadata says so) have one output ``[Q, 4+C]``: the same
normalised boxes, then class scores already through the sigmoid; read as such.

Pre-processing: stretch, RGB, pixels / 255, NCHW (RF-DETR wants ImageNet ``input_mean``
[0.485, 0.456, 0.406] and ``input_std`` [0.229, 0.224, 0.225]; D-FINE exports that also take
the original size as a second input are not supported: export without it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgeva.modules.detectors.formats import (
    Format,
    FormatError,
    FormatOptions,
    ModelMeta,
    OutputSpec,
    Preprocess,
    rows_from_xywh,
)


class Detr(Format):
    name = "detr"
    preprocess = Preprocess(resize="stretch", channels="rgb", scale=1 / 255)
    nms = False

    def __init__(self, boxes: OutputSpec, logits: OutputSpec | None, size: tuple[int, int], activation: str) -> None:
        self.outputs = (boxes.name,) if logits is None else (boxes.name, logits.name)
        self._w, self._h = size
        self._activation = "none" if logits is None else activation  # none: scores already
        self.detail = (f"boxes and scores {boxes.name} {list(boxes.shape)} (Ultralytics RT-DETR)" if logits is None
                       else f"boxes {boxes.name} {list(boxes.shape)}, logits {logits.name} {list(logits.shape)}, "
                       f"{activation}")

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Detr:
        if meta.rtdetr and len(outputs) == 1 and len(outputs[0].shape) == 3 and (outputs[0].shape[2] or 5) > 4:
            return cls(outputs[0], None, size, options.activation)
        three = [o for o in outputs if len(o.shape) == 3]
        if len(outputs) != 2 or len(three) != 2:
            raise FormatError("needs two outputs, boxes [1, Q, 4] and logits [1, Q, C]")
        a, b = three
        if a.shape[1] is not None and b.shape[1] is not None and a.shape[1] != b.shape[1]:
            raise FormatError(f"boxes and logits need the same number of queries: {list(a.shape)}, {list(b.shape)}")
        fours = [o for o in three if o.shape[2] == 4]
        box = next((o for o in fours if "box" in o.name.lower() or "det" in o.name.lower()), fours[0] if fours else None)
        if box is None:
            raise FormatError(f"neither {a.name} {list(a.shape)} nor {b.name} {list(b.shape)} is boxes [1, Q, 4]")
        logit = b if box is a else a
        return cls(box, logit, size, options.activation)

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        if self._activation == "none":
            a = outs[0][0] if outs[0].ndim == 3 else outs[0]
            boxes, scores = a[:, :4], a[:, 4:]
            best = scores.max(axis=1)
            keep = np.flatnonzero(best >= min_score)
            k = scores[keep].argmax(axis=1)
            score = best[keep]
        else:
            boxes, logits = outs[0], outs[1]
            if boxes.ndim == 3:
                boxes, logits = boxes[0], logits[0]
            keep, k, score = self._scores(logits, min_score)
        b = boxes[keep]
        w, h = self._w, self._h
        return rows_from_xywh(b[:, 0] * w, b[:, 1] * h, b[:, 2] * w, b[:, 3] * h, score, k)

    def _scores(self, logits: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kept queries, their class, their score) from class logits."""
        if self._activation == "softmax":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = e[:, :-1] / e.sum(axis=1, keepdims=True)
            k = p.argmax(axis=1)
            score = p[np.arange(len(p)), k]
            keep = np.flatnonzero(score >= min_score)
            score, k = score[keep], k[keep]
        else:
            # sigmoid is monotonic: compare the best logit with the threshold's logit, and take
            # the sigmoid of the few that pass.
            best = logits.max(axis=1)
            cut = -math.inf if min_score <= 0 else math.inf if min_score >= 1 else math.log(min_score / (1 - min_score))
            keep = np.flatnonzero(best >= cut)
            k = logits[keep].argmax(axis=1)
            score = 1.0 / (1.0 + np.exp(-best[keep]))
        return keep, k, score
