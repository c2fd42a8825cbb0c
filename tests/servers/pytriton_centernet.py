"""A real Triton Inference Server (on the CPU, via NVIDIA PyTriton) serving the bundled
CenterNet ONNX for the tests marked ``pytriton``.

Runs in .venv-pytriton (tools/make-pytriton-venv.sh), never in edgeva's .venv (PyTriton needs
numpy<2 and Debian's Python)::

    .venv-pytriton/bin/python tests/servers/pytriton_centernet.py --http-port 8000 --grpc-port 8001

Model ``centernet``: input ``images`` FP32 [-1, 512, 512, 3] (RGB 0-255), output ``detections``
FP32 [-1, 100, 6], max batch 4, dynamic batching. The shared-memory API needs the access token
(``--access-token``, PyTriton restricts it by default). Prints ``READY`` once it serves; stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

ONNX = Path(__file__).resolve().parents[2] / "modules" / "assets" / "centernet_mnv3_coco.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--access-token", default="edgeva-test",
                    help="PyTriton restricts the shared-memory API to requests carrying this "
                    "token (header triton-access-token; gRPC: triton-grpc-protocol-triton-access-token)")
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(ONNX), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        out = [sess.run(None, {name: images[i : i + 1].astype(np.float32)})[0][0] for i in range(len(images))]
        return {"detections": np.stack(out).astype(np.float32)}

    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port,
                          grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, log_verbose=0)
    security = TritonSecurityConfig(access_token=args.access_token)
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name="centernet",
            infer_func=infer,
            inputs=[Tensor(name="images", dtype=np.float32, shape=(512, 512, 3))],
            outputs=[Tensor(name="detections", dtype=np.float32, shape=(100, 6))],
            config=ModelConfig(max_batch_size=4, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)),
            strict=True,
        )
        triton.run()
        print("READY", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass
    os._exit(0)  # PyTriton's proxy threads can linger after stop; the server is down already


if __name__ == "__main__":
    main()
