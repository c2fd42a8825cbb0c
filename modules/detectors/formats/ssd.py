"""``output_format: ssd``: TensorFlow Object Detection API models with their post-processing
(SSD MobileNet, EfficientDet, as exported by tf2onnx or TF Lite's ``TFLite_Detection_PostProcess``):
four outputs per image, ``boxes [N, 4]`` (``ymin, xmin, ymax, xmax``, normalised 0-1),
``classes [N]``, ``scores [N]`` and ``num`` (how many of the N are valid). Picked by name
(``detection_boxes``, ``detection_classes``, ``detection_scores``, ``num_detections``, or
names holding box/class/score/num), else by shape, classes before scores (TF's order).

Class ids are the model's: TF OD API exports number COCO from 1 (1 = person, label map ids),
TF Lite ones from 0; ``class_offset: -1`` maps the former onto COCO-80's 0 = person (the label
map has gaps beyond it: give ``class_names``). Pre-processing: stretch, RGB, 0-255 (most take
uint8, which the backend feeds as such); NMS was done by the model, the module's is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeva.modules.detectors.formats import (
    Format,
    FormatError,
    FormatOptions,
    ModelMeta,
    OutputSpec,
    Preprocess,
    per_image,
)


def _named(outs: Sequence[OutputSpec], *words: str) -> list[OutputSpec]:
    return [o for o in outs if any(w in o.name.lower() for w in words) and "raw" not in o.name.lower()]


class Ssd(Format):
    name = "ssd"
    preprocess = Preprocess(resize="stretch", channels="rgb", scale=1.0)

    def __init__(self, boxes: OutputSpec, classes: OutputSpec, scores: OutputSpec, num: OutputSpec | None,
                 size: tuple[int, int], offset: int) -> None:
        self.outputs = (boxes.name, classes.name, scores.name) + ((num.name,) if num else ())
        w, h = size
        self._scale = np.array([h, w, h, w], np.float32)
        self._offset = offset
        self.detail = f"boxes {boxes.name}, classes {classes.name}, scores {scores.name}, num {num.name if num else '-'}"

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Ssd:
        boxes = [o for o in outputs if len(per_image(o.shape)) == 2 and o.shape[-1] == 4 and len(o.shape) == 3]
        if len(boxes) > 1:
            boxes = _named(boxes, "box")
        if len(boxes) != 1:
            raise FormatError("needs one boxes output [1, N, 4] beside classes, scores and num")
        b = boxes[0]
        flat = [o for o in outputs if len(o.shape) == 2 and o.shape[1] in (b.shape[1], None) and o is not b]
        classes, scores = _named(flat, "class", "label"), _named(flat, "score")
        if not classes and not scores and len(flat) == 2:
            classes, scores = [flat[0]], [flat[1]]  # TF's order: boxes, classes, scores, num
        if len(classes) != 1 or len(scores) != 1:
            raise FormatError(f"needs classes [1, N] and scores [1, N] beside the boxes {b.name} {list(b.shape)}")
        nums = [o for o in outputs if len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] == 1
                                                               and o not in flat)]
        if len(nums) > 1:
            nums = _named(nums, "num")
        return cls(b, classes[0], scores[0], nums[0] if len(nums) == 1 else None, size, options.class_offset)

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        boxes, classes, scores = (np.asarray(o).reshape(-1, 4) if i == 0 else np.asarray(o).ravel()
                                  for i, o in enumerate(outs[:3]))
        n = len(scores) if len(outs) < 4 else min(len(scores), int(np.asarray(outs[3]).ravel()[0]))
        keep = np.flatnonzero(scores[:n] >= min_score)
        b = boxes[keep] * self._scale
        out = np.empty((len(keep), 6), np.float32)
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = b[:, 1], b[:, 0], b[:, 3], b[:, 2]
        out[:, 4] = scores[keep]
        out[:, 5] = classes[keep] + self._offset
        return out
