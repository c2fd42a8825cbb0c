"""Appearance embedders for the ``reid`` module: crops in, L2-normalised feature rows out.

Every embedder takes a batch of person crops already resized to ``CROP_H x CROP_W`` (uint8
BGR, ``[N, 256, 128, 3]``, the detector's ``arrays["crops"]`` format) and returns
``[N, dim]`` float32 rows of unit length, so that a dot product is a cosine similarity.

Registration, as for module types and detector backends (``modules/registry.py``): the
built-ins are listed in ``BUILTIN``; a package adds its own under the entry point group
``edgeva.embedders`` (``myembedder = "mypkg.mod:MyEmbedder"``), and reid's ``backend`` then
accepts its name (with an explicit ``threshold``: its scale is the model's). An embedder
implements :class:`Embedder`, ``from_args`` included (how it is built from reid's args).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, Protocol

import cv2
import numpy as np

from edgeva.modules.registry import discover

#: Entry point group of third-party embedders.
GROUP = "edgeva.embedders"
#: Built-in embedders: name -> ``"module:Embedder class"`` (reid's ``combined`` is onnx + hsv).
BUILTIN = {
    "onnx": "edgeva.modules.embedders.onnx:OnnxEmbedder",
    "hsv": "edgeva.modules.embedders.hsv:HsvEmbedder",
    "triton": "edgeva.modules.embedders.triton:TritonEmbedder",
}

#: Crop size every embedder takes (H, W): the usual person re-id input, and the detector's
#: ``arrays["crops"]`` size.
CROP_H, CROP_W = 256, 128
#: ImageNet normalisation, RGB order: what both the bundled MobileNetV2 and OSNet expect.
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


class EmbedderArgs(Protocol):
    """What an embedder may read of reid's config to build itself."""

    @property
    def model(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def triton(self) -> Any: ...
    @property
    def providers(self) -> list[str]: ...
    @property
    def provider_fallback(self) -> bool: ...


class Embedder(ABC):
    """One appearance model. ``dim`` is the length of a feature row."""

    dim: int
    #: The onnxruntime execution provider running it ("cpu", "cuda", ...; None: not onnxruntime).
    provider: str | None = None

    @classmethod
    def from_args(cls, args: EmbedderArgs) -> Embedder:
        """One built from reid's args (each embedder reads those it uses); loads the model or
        connects, failing with a ``ModuleError`` that says what to fix."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build it from reid's args")

    @abstractmethod
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``[N, CROP_H, CROP_W, 3]`` uint8 BGR -> ``[N, dim]`` float32, rows L2-normalised.
        The result may be a view of an internal buffer: copy it to keep it past the next call."""

    def close(self) -> None:  # noqa: B027 - optional hook, most embedders hold nothing
        """Release sessions and connections."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in place; an all-zero row stays zero (similarity 0)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(n, 1e-12, out=n)
    x /= n
    return x


def fit_crop(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Resize one BGR crop of any size into ``out`` (``CROP_H x CROP_W x 3`` uint8), stretching
    it as the embedders' training did (no letterbox). Grey images are expanded to BGR."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    cv2.resize(image, (CROP_W, CROP_H), dst=out, interpolation=cv2.INTER_LINEAR)
    return out


# (pixel / 255 - mean) / std per channel, folded into one multiply-add (CHW broadcast).
_SCALE = (1.0 / (255.0 * np.asarray(STD_RGB, np.float32)))[:, None, None]
_OFFSET = (-np.asarray(MEAN_RGB, np.float32) / np.asarray(STD_RGB, np.float32))[:, None, None]


def to_nchw(crops: np.ndarray, out: np.ndarray) -> np.ndarray:
    """BGR uint8 ``[N, H, W, 3]`` -> ImageNet-normalised RGB float32 ``[N, 3, H, W]``, written
    into ``out`` (preallocated by the caller, so no per-frame tensor is allocated)."""
    # Reversing the last axis reads BGR as RGB without a copy; copyto converts in one pass.
    np.copyto(out, crops[..., ::-1].transpose(0, 3, 1, 2), casting="unsafe")
    out *= _SCALE
    out += _OFFSET
    return out


class CombinedEmbedder(Embedder):
    """Concatenation of several embedders' unit rows, each scaled by ``sqrt(weight)``.

    With weights summing to 1 the concatenation has unit length too, and the cosine of two
    concatenated rows is exactly ``sum(weight_i * cosine_i)``: a weighted vote of the models.
    """

    def __init__(self, parts: list[tuple[Embedder, float]], max_batch: int = 16) -> None:
        total = sum(w for _, w in parts)
        self.parts = [(e, float(np.sqrt(w / total))) for e, w in parts]
        self.dim = sum(e.dim for e, _ in parts)
        self.provider = next((e.provider for e, _ in parts if e.provider), None)
        self._out = np.empty((max_batch, self.dim), np.float32)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        n = len(crops)
        if n > len(self._out):
            self._out = np.empty((n, self.dim), np.float32)
        out = self._out[:n]
        col = 0
        for e, scale in self.parts:
            np.multiply(e.embed(crops), scale, out=out[:, col : col + e.dim])
            col += e.dim
        return out

    def close(self) -> None:
        for e, _ in self.parts:
            e.close()


@functools.cache
def load_embedders() -> dict[str, type[Embedder]]:
    """Every installed embedder by name (built-ins first, then entry points); a class that is
    no :class:`Embedder` is left out, as a plugin that fails to import."""
    return {name: cls for name, (_, cls) in discover(BUILTIN, GROUP, "embedder").items()
            if isinstance(cls, type) and issubclass(cls, Embedder)}
