"""MLServer model for the tests: the bundled re-id embedding ONNX (MobileNetV2) behind the
KServe V2 protocol, as the reid module's ``triton`` backend expects a user's OSNet to be served.

Input ``input``: FP32 [N, 3, 256, 128], ImageNet-normalised RGB. Output ``output``: FP32 [N, D].

Runs inside .venv-mlserver (tools/make-mlserver-venv.sh), never imported by edgeva itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

ONNX = Path(__file__).resolve().parents[3] / "modules" / "assets" / "mobilenetv2_reid.onnx"


class ReidEmbedding(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("EDGEVA_TEST_THREADS", "2"))
        self._sess = ort.InferenceSession(str(ONNX), opts, providers=["CPUExecutionProvider"])
        self._in = self._sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        out = self._sess.run(None, {self._in: x})[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("output", out.astype(np.float32))],
        )
