"""Inference backends of the ``detector`` module (``modules/detector.py``): the plugin contract.

A backend is two classes in one file: its **config** (a :class:`BackendConfig` whose ``type``
is a ``Literal`` of the backend's name, holding the args only it uses) and its **runner** (a
:class:`Backend` with ``config_class`` set to that config). The detector's config takes the
backends' configs as a union discriminated by ``type``, so a deployment writes either::

    "args": {"backend": {"type": "triton", "url": "gpu-box:8001", "model_name": "yolo"}, ...}
    "args": {"backend": "triton", "url": "gpu-box:8001", "model_name": "yolo", ...}   # flat

(the flat form, the backend's args beside its name, is what deployments wrote before backends
had configs of their own; both mean the same). The args every backend shares (thresholds,
classes, NMS, batching, ``threads``, the model's input and output names) stay in the detector's
config; a backend reads them through :class:`DetectorArgs`.

Registration: the built-ins are listed in ``BUILTIN``; a package adds its own under the entry
point group ``edgeva.detector_backends`` (``mybackend = "mypkg.mod:MyBackend"``), as module types
do (``modules/registry.py``). This package imports nothing of ``modules/detector.py`` (the
detector imports the backends: one direction only).

A runner wraps one loaded model and knows nothing about messages. Two kinds:

- tensor backends (``onnx``, ``triton``): the module resizes (stretch or letterbox) each frame
  to ``input_size``, converts it to the model's channel order and pixel scale and writes it into
  ``input_buffer()`` (preallocated once, float32 or uint8; for Triton with shared memory it *is*
  the shared memory region, so nothing is copied again); ``infer(n)`` runs on the first ``n``
  images and returns, per image, an array [K, 6] of ``x1, y1, x2, y2, score, class`` in input
  pixels (raw: no NMS; rows under ``min_score`` may be left out). A backend that reads other
  output layouts sets ``format`` (``formats/``: YOLO, YOLOX, SSD, DETR), whose default
  pre-processing the module then follows, and ``class_names`` when the model names its classes.
- frame backends (``opencv-hog``): ``infer_frames(frames)`` takes the BGR frames themselves and
  returns the same [K, 6] layout in frame pixels.

The module does the rest (scaling back, clipping, threshold, class filter, NMS), so a new
backend only has to produce raw rows in that layout.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgeva.modules.detectors.formats import Format
from edgeva.modules.registry import declared_type, discover

log = logging.getLogger("edgeva.registry")

#: Entry point group of third-party detector backends.
GROUP = "edgeva.detector_backends"
#: Built-in backends: name -> ``"module:Backend class"``.
BUILTIN = {
    "onnx": "edgeva.modules.detectors.onnx:OnnxBackend",
    "opencv-hog": "edgeva.modules.detectors.hog:HogBackend",
    "triton": "edgeva.modules.detectors.triton:TritonBackend",
}
#: The backend of a detector config that names none.
DEFAULT = "onnx"


def _tag_required(schema: dict[str, Any], cls: type) -> None:
    # In a deployment a backend's config object must say which backend it is: its ``type``
    # (which has a default in Python, where the class already says it) is the union's tag.
    schema["required"] = ["type", *[r for r in schema.get("required", []) if r != "type"]]


class BackendConfig(BaseModel):
    """Base of a backend's config: unknown keys refused, frozen (part of the module's
    identity). A subclass sets ``type: Literal["<name>"] = "<name>"`` and adds the args only
    its backend uses, each bounded and described (they reach the JSON Schema and the docs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_tag_required)

    type: str


class DetectorArgs(Protocol):
    """What a backend may read of the detector's own config (the args all backends share)."""

    @property
    def threads(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def input_size(self) -> tuple[int, int] | None: ...
    @property
    def input_name(self) -> str | None: ...
    @property
    def output_name(self) -> str | None: ...
    @property
    def output_format(self) -> str: ...
    @property
    def class_offset(self) -> int: ...
    @property
    def detr_activation(self) -> Literal["sigmoid", "softmax"]: ...


class Backend:
    """Base of the detector backends; see the package docstring for the contract.

    ``__init__(config, args, log)`` loads the model (or connects) and fails with a
    ``ModuleError`` that says what to fix: ``config`` is the backend's own config (an instance
    of ``config_class``), ``args`` the detector's shared args (:class:`DetectorArgs`)."""

    #: The backend's config class (its ``type`` Literal is the backend's name).
    config_class: ClassVar[type[BackendConfig]]
    #: False for backends that take BGR frames (``infer_frames``) instead of a tensor.
    takes_tensor: bool = True
    #: Run one inference at setup (an in-process runtime plans memory and starts threads on
    #: its first run, which would otherwise delay frame 0); a server warms up on its own.
    warm_up: bool = False
    #: (width, height) of one model input image (tensor backends).
    input_size: tuple[int, int] = (0, 0)
    #: "nhwc" ([N, H, W, 3], the bundled CenterNet) or "nchw" ([N, 3, H, W], most PyTorch exports).
    layout: Literal["nhwc", "nchw"] = "nhwc"
    #: Most images one ``infer`` call takes (1: the model has a fixed batch of one).
    max_batch: int = 1
    #: The output format it decodes (None: rows, the module's default pre-processing).
    format: Format | None = None
    #: Class names the model carries in its metadata (None: it has none).
    class_names: tuple[str, ...] | None = None
    #: The execution provider that runs the model ("cpu", "cuda", ...; None: not onnxruntime).
    provider: str | None = None
    #: Set by the module to its score_threshold: rows below may be left out early (a YOLO
    #: output has thousands of candidates; building rows for all would cost more than the model).
    min_score: float = 0.0

    def __init__(self, config: BackendConfig, args: DetectorArgs, log: logging.Logger) -> None:
        raise NotImplementedError

    def input_buffer(self) -> np.ndarray:
        """The [max_batch, ...] float32 array the module writes preprocessed images into."""
        raise NotImplementedError

    def infer(self, n: int) -> list[np.ndarray]:
        """Run the model on the first ``n`` images of ``input_buffer()``."""
        raise NotImplementedError

    def infer_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Frame backends: detect on BGR frames; rows in frame pixels."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions, connections, shared memory. Idempotent."""


@functools.cache
def load_backends() -> dict[str, type[Backend]]:
    """Every installed backend by name (built-ins first, then entry points). One whose
    config's ``type`` is not its name is logged and left out. Cached: the detector's config
    class is built from it once, at import."""
    found: dict[str, type[Backend]] = {}
    for name, (ref, cls) in discover(BUILTIN, GROUP, "detector backend").items():
        declared = declared_type(getattr(cls, "config_class", None))
        if declared != name:
            log.warning("detector backend %r (%s) declares type %r: ignored", name, ref, declared)
            continue
        found[name] = cls
    return found


def make_backend(config: BackendConfig, args: DetectorArgs, log: logging.Logger) -> Backend:
    """Load the backend ``config`` configures (its heavy library is imported only now)."""
    return load_backends()[config.type](config, args, log)


def rows(raw: np.ndarray) -> np.ndarray:
    """A model output for one image as float32 [K, 6]; refuses other layouts with a clear error."""
    a = np.asarray(raw, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(
            f"detector output has shape {tuple(np.shape(raw))}; expected [K, 6] rows of "
            "x1, y1, x2, y2, score, class (in input pixels)"
        )
    return a
