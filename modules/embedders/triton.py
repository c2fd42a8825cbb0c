"""Triton / KServe-V2 embedder: a user's re-id model (e.g. OSNet x1.0, as in the paper) served
by Triton Inference Server or MLServer, reached over HTTP or gRPC with ``tritonclient``."""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgeva.modules.base import ModuleError
from edgeva.modules.embedders import CROP_H, CROP_W, Embedder, EmbedderArgs, l2_normalise, to_nchw


class TritonEmbedder(Embedder):
    """Sends ``[N, 3, 256, 128]`` float32 ImageNet-normalised RGB (OSNet's torchreid input)
    as ``input_name`` and reads ``[N, D]`` from ``output_name``.

    ``setup`` fails (``ModuleError``) if the server is not live or the model not ready, so a
    typo in the URL or model name fails the deployment instead of every frame. The request
    buffer is preallocated for ``max_batch`` crops; the model must accept that batch size
    (its config's ``max_batch_size``). MLServer refuses Triton's binary HTTP extension: use
    ``binary=False`` with it.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        protocol: Literal["http", "grpc"] = "http",
        input_name: str = "input",
        output_name: str = "output",
        model_version: str = "",
        max_batch: int = 16,
        binary: bool = True,
        timeout_s: float = 5.0,
    ) -> None:
        try:
            if protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModuleError(f"reid: the triton backend needs tritonclient[{protocol}]: {e}") from e
        self._tc, self._protocol, self._binary = tc, protocol, binary
        self.model_name, self.model_version = model_name, model_version
        self.input_name, self.output_name, self.max_batch = input_name, output_name, max_batch
        try:
            if protocol == "grpc":
                self._client = tc.InferenceServerClient(url=url)
            else:
                self._client = tc.InferenceServerClient(
                    url=url, connection_timeout=timeout_s, network_timeout=timeout_s
                )
            live = self._client.is_server_live()
            ready = live and self._client.is_model_ready(model_name, model_version)
        except Exception as e:
            raise ModuleError(f"reid: cannot reach inference server {protocol}://{url}: {e}") from e
        if not ready:
            raise ModuleError(
                f"reid: model {model_name!r} is not ready on {url} (server live: {live})"
            )
        self._x = np.empty((max_batch, 3, CROP_H, CROP_W), np.float32)
        self._inputs: dict[int, object] = {}
        self.dim = 0  # known after the first reply
        self._out: np.ndarray | None = None

    @classmethod
    def from_args(cls, args: EmbedderArgs) -> TritonEmbedder:
        t = args.triton
        return cls(t.url, t.model_name, t.protocol, t.input_name, t.output_name, t.model_version,
                   args.max_batch, t.binary)

    def _input(self, n: int):
        # One InferInput per batch size seen: they are cheap but not free to build.
        if n not in self._inputs:
            self._inputs[n] = self._tc.InferInput(self.input_name, [n, 3, CROP_H, CROP_W], "FP32")
        return self._inputs[n]

    def embed(self, crops: np.ndarray) -> np.ndarray:
        rows = []
        for s in range(0, len(crops), self.max_batch):
            chunk = crops[s : s + self.max_batch]
            x = to_nchw(chunk, self._x[: len(chunk)])
            inp = self._input(len(chunk))
            if self._protocol == "grpc":
                inp.set_data_from_numpy(x)
                out = [self._tc.InferRequestedOutput(self.output_name)]
            else:
                inp.set_data_from_numpy(x, binary_data=self._binary)
                out = [self._tc.InferRequestedOutput(self.output_name, binary_data=self._binary)]
            try:
                res = self._client.infer(self.model_name, [inp], self.model_version, outputs=out)
            except Exception as e:
                raise RuntimeError(f"reid: inference on {self.model_name!r} failed: {e}") from e
            rows.append(res.as_numpy(self.output_name).reshape(len(chunk), -1))
        e = np.concatenate(rows).astype(np.float32, copy=False)
        self.dim = e.shape[1]
        return l2_normalise(np.array(e, copy=True))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

