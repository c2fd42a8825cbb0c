"""ONNX Runtime embedder: the bundled MobileNetV2 (``asset:mobilenetv2_reid.onnx``) or any
model with the same interface (``[N, 3, 256, 128]`` ImageNet-normalised RGB in, ``[N, D]`` out)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeva.modules.base import ModuleError
from edgeva.modules.decoder import resolve_path
from edgeva.modules.embedders import CROP_H, CROP_W, Embedder, EmbedderArgs, l2_normalise, to_nchw
from edgeva.modules.providers import ProviderError, choose, running


class OnnxEmbedder(Embedder):
    """Runs the model with ``threads`` intra-op threads, ``max_batch`` crops per call, on the
    first of ``providers`` installed (``modules/providers.py``: CPU by default).

    The NCHW float input buffer is allocated once for ``max_batch`` crops; bigger batches
    are cut into chunks, so no frame allocates a new input tensor.
    """

    def __init__(
        self,
        model: Path,
        threads: int = 2,
        max_batch: int = 16,
        input_name: str | None = None,
        output_name: str | None = None,
        providers: list[str] | None = None,
        provider_fallback: bool = False,
    ) -> None:
        try:
            import onnxruntime as ort  # here: ~0.3 s import, only for modules that need it
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModuleError(f"reid: the onnx backend needs onnxruntime: {e}") from e
        if not Path(model).is_file():
            raise ModuleError(f"reid: model file not found: {model}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # As the detector: idle worker threads must not spin (they would steal the CPU the
        # other modules, and the other cameras' detectors, need between embeddings).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = list(providers or ["cpu"])
        try:
            asked = choose(wanted, provider_fallback, ort.get_available_providers())
        except ProviderError as e:
            raise ModuleError(f"reid: {e}") from None
        try:
            self._sess = ort.InferenceSession(str(model), opts, providers=asked)
        except Exception as e:
            raise ModuleError(f"reid: cannot load ONNX model {model}: {e}") from e
        try:
            self.provider = running(self._sess, asked, provider_fallback, wanted,
                                    logging.getLogger("edgeva.module"), "reid")
        except ProviderError as e:
            raise ModuleError(f"reid: {e}") from None
        self._in = input_name or self._sess.get_inputs()[0].name
        self._outname = output_name or self._sess.get_outputs()[0].name
        shape = self._sess.get_outputs()[0].shape
        if not isinstance(shape[-1], int):
            raise ModuleError(f"reid: {model} output {self._outname!r} has no fixed width: {shape}")
        self.dim = shape[-1]
        self.max_batch = max_batch
        self._x = np.empty((max_batch, 3, CROP_H, CROP_W), np.float32)
        self._out = np.empty((max_batch, self.dim), np.float32)

    @classmethod
    def from_args(cls, args: EmbedderArgs) -> OnnxEmbedder:
        return cls(resolve_path(args.model), args.threads, args.max_batch,
                   providers=getattr(args, "providers", None),
                   provider_fallback=getattr(args, "provider_fallback", False))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        n = len(crops)
        if n > len(self._out):
            self._out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, self.max_batch):
            e = min(n, s + self.max_batch)
            x = to_nchw(crops[s:e], self._x[: e - s])
            self._out[s:e] = self._sess.run([self._outname], {self._in: x})[0]
        return l2_normalise(self._out[:n])

    def close(self) -> None:
        self._sess = None
