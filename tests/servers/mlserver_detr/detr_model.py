"""MLServer model for the tests: a DETR-style detector (RF-DETR's output layout) behind the KServe
V2 protocol, whose outputs are known constants (tests/test_detector_formats.py checks them).

Input ``images``: FP32 [N, 3, 640, 640]. Outputs per image: ``dets`` FP32 [300, 4] normalised
cx, cy, w, h and ``labels`` FP32 [300, 80] class logits: a person at (200, 100, 400, 500) with
score 0.9 and a car at (700, 300, 1000, 450) with 0.8, in a 1280x720 frame stretched to the
input; the second image of a batch has the person only (so a test sees images kept apart).
Runs inside .venv-mlserver (tools/make-mlserver-venv.sh), never imported by edgeva itself.
"""

from __future__ import annotations

import math

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

FW, FH = 1280, 720
BOXES = ((200.0, 100.0, 400.0, 500.0, 0.9, 0), (700.0, 300.0, 1000.0, 450.0, 0.8, 2))


def _image(n_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    dets = np.full((300, 4), 0.5, np.float32)
    logits = np.full((300, 80), -10.0, np.float32)
    for j, (x1, y1, x2, y2, score, cls) in enumerate(BOXES[:n_boxes]):
        dets[10 * j] = (x1 + x2) / 2 / FW, (y1 + y2) / 2 / FH, (x2 - x1) / FW, (y2 - y1) / FH
        logits[10 * j, cls] = math.log(score / (1 - score))
    return dets, logits


class Detr(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        n = len(x) if x.ndim == 4 else 1
        images = [_image(2 if i % 2 == 0 else 1) for i in range(n)]
        dets = np.stack([d for d, _ in images])
        logits = np.stack([lg for _, lg in images])
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("dets", dets), NumpyCodec.encode_output("labels", logits)],
        )
