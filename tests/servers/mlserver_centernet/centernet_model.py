"""MLServer model for the tests: the bundled CenterNet ONNX behind the KServe V2 protocol.

Input ``images``: FP32 [N, 512, 512, 3], RGB 0-255 (what edgeva's detector sends).
Output ``detections``: FP32 [N, 100, 6] = x1, y1, x2, y2 (512 space), score, class.
The ONNX graph takes one image at a time, so a batch runs image by image.

Runs inside .venv-mlserver (tools/make-mlserver-venv.sh), never imported by edgeva itself.
``EDGEVA_CENTERNET_ONNX`` overrides the model path (default: the repo's bundled asset).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

ONNX = Path(__file__).resolve().parents[3] / "modules" / "assets" / "centernet_mnv3_coco.onnx"


class CenterNet(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("EDGEVA_TEST_THREADS", "2"))
        path = os.environ.get("EDGEVA_CENTERNET_ONNX", str(ONNX))
        self._sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._in = self._sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        if x.ndim == 3:
            x = x[None]
        out = np.stack([self._sess.run(None, {self._in: x[i : i + 1]})[0][0] for i in range(len(x))])
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("detections", out.astype(np.float32))],
        )
