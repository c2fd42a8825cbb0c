"""Output formats of detection models: how to feed a model and how to read its outputs.

A model's raw outputs differ by family; each format here turns them into the rows the
detector works with, ``[K, 6]`` float32 of ``x1, y1, x2, y2, score, class`` in **input**
pixels (the module maps them back to the frame, then applies threshold, classes and NMS):

==========  ===========================================  ==========================================
format      outputs (per image; N candidates, C classes)  default pre-processing
==========  ===========================================  ==========================================
``rows``    ``[K, 6]`` x1, y1, x2, y2, score, class       stretch, RGB, 0-255 (the bundled CenterNet)
``yolo``    Ultralytics v8/v11 ``[4+C, N]`` (cx, cy, w,   letterbox (centred, grey 114), RGB, 0-1
            h, class scores) or v5 ``[N, 5+C]`` (+ an
            objectness); raw, NMS by the module
``yolox``   ``[N, 5+C]`` grid offsets and log sizes per   letterbox (top-left, grey 114), BGR, 0-255
            stride 8/16/32, objectness, class scores
``ssd``     TF Object Detection API: boxes ``[N, 4]``     stretch, RGB, 0-255
            (ymin, xmin, ymax, xmax, normalised), classes
            ``[N]``, scores ``[N]``, num (a count)
``detr``    boxes ``[Q, 4]`` (cx, cy, w, h normalised)     stretch, RGB, 0-1
            and class logits ``[Q, C]`` (sigmoid, or
            softmax with a last no-object class); no NMS
            (Ultralytics RT-DETR: one ``[Q, 4+C]``)
==========  ===========================================  ==========================================

``auto`` picks by the outputs' shapes and names and the model's metadata (Ultralytics
exports say so in ``metadata_props``: ``names``, ``imgsz``, ``stride``); :func:`bind` says
which it chose, or why none fits.

A format is one small file here: a :class:`Format` subclass with its default
:class:`Preprocess`, a ``bind`` classmethod (the outputs it needs, or why it cannot read these)
and ``decode`` (one image's outputs -> rows). Decoders keep their per-candidate scratch
buffers between frames and drop candidates below the score threshold before building rows, so
an 8,400-candidate YOLO output costs well under a millisecond to read.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

#: A dimension of a model output: an int, or None when dynamic.
Dim = int | None


@dataclass(frozen=True)
class OutputSpec:
    """One model output: its name and shape (batch axis included; None: dynamic)."""

    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class Preprocess:
    """How a frame becomes a model input.

    ``resize``: ``stretch`` (to the input size, aspect not kept) or ``letterbox`` (scaled to
    fit, aspect kept, the rest filled with ``pad``, the image ``centred`` or at the top-left);
    ``channels``: the order the model wants; pixels are ``(value * scale - mean) / std`` per
    channel (mean/std in the model's channel order; None: none)."""

    resize: Literal["stretch", "letterbox"] = "stretch"
    anchor: Literal["center", "topleft"] = "center"
    pad: int = 114
    channels: Literal["rgb", "bgr"] = "rgb"
    scale: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ModelMeta:
    """What the model file says about itself (ONNX ``metadata_props``), where it says it."""

    names: tuple[str, ...] | None = None
    imgsz: tuple[int, int] | None = None  # (width, height)
    stride: int | None = None
    ultralytics: bool = False
    task: str | None = None  # Ultralytics: detect, segment, pose, obb, classify
    description: str = ""

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMeta:
        """From ONNX metadata (``{"names": "{0: 'person', ...}", "imgsz": "[640, 640]", ...}``,
        as Ultralytics writes it); what does not parse is left out."""
        names = imgsz = stride = None
        try:
            raw = ast.literal_eval(props["names"]) if "names" in props else None
            if isinstance(raw, dict) and raw and all(isinstance(k, int) for k in raw):
                names = tuple(str(raw.get(i, i)) for i in range(max(raw) + 1))
            elif isinstance(raw, list | tuple):
                names = tuple(str(n) for n in raw)
        except (ValueError, SyntaxError):
            pass
        try:
            sz = ast.literal_eval(props["imgsz"]) if "imgsz" in props else None
            if isinstance(sz, int):
                imgsz = (sz, sz)
            elif isinstance(sz, list | tuple) and len(sz) == 2:
                imgsz = (int(sz[1]), int(sz[0]))  # Ultralytics writes [height, width]
        except (ValueError, SyntaxError, TypeError):
            pass
        try:
            stride = int(float(props["stride"])) if "stride" in props else None
        except ValueError:
            pass
        ultra = "ultralytics" in (props.get("author", "") + props.get("description", "")).lower() or (
            stride is not None and names is not None)
        return cls(names, imgsz, stride, ultra, props.get("task"), props.get("description", ""))

    @property
    def rtdetr(self) -> bool:
        """An Ultralytics RT-DETR export (one output of normalised boxes and class scores)."""
        return self.ultralytics and "rt-detr" in self.description.lower()


class FormatError(ValueError):
    """The outputs cannot be read as the format asked for (or as any, for ``auto``)."""


class Format:
    """One output format; see the package docstring. Instances are bound to one model's
    outputs (``bind``) and decode one image at a time."""

    #: Its name in ``output_format``.
    name: ClassVar[str]
    #: Default pre-processing of the models of this format.
    preprocess: ClassVar[Preprocess] = Preprocess()
    #: Whether the module applies NMS to its rows (DETR-style set predictions need none).
    nms: ClassVar[bool] = True

    #: The outputs ``decode`` takes, in its order.
    outputs: tuple[str, ...]
    #: How it read the outputs, for the setup log ("v8 [1, 84, 8400], 80 classes").
    detail: str = ""

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Format:
        """This format read from these outputs (``size``: the input's width, height), or a
        FormatError saying why not (one line)."""
        raise NotImplementedError

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        """One image's outputs (no batch axis, in ``outputs``' order) -> float32 ``[K, 6]``
        rows in input pixels; may leave out candidates scoring below ``min_score``."""
        raise NotImplementedError


@dataclass(frozen=True)
class FormatOptions:
    """What the deployment says beyond the model: the output to read (rows), the class id
    offset (ssd), the class activation (detr)."""

    output_name: str | None = None
    class_offset: int = 0
    activation: Literal["sigmoid", "softmax"] = "sigmoid"
    #: Named by the deployment (not ``auto``): shapes with dynamic axes are taken on its word.
    explicit: bool = False


EMPTY = np.zeros((0, 6), np.float32)


def rows_from_xywh(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray,
                   score: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Centre/size columns (already filtered: few) -> ``[K, 6]`` corner rows."""
    out = np.empty((len(cx), 6), np.float32)
    out[:, 0] = cx - w * 0.5
    out[:, 1] = cy - h * 0.5
    out[:, 2] = cx + w * 0.5
    out[:, 3] = cy + h * 0.5
    out[:, 4] = score
    out[:, 5] = cls
    return out


def fmt_shapes(outputs: Sequence[OutputSpec]) -> str:
    """``output0 [1, 84, 8400], ...`` (dynamic dims as ?), for error messages."""
    return ", ".join(f"{o.name} [{', '.join('?' if d is None else str(d) for d in o.shape)}]" for o in outputs)


def per_image(shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """An output's shape without its batch axis (outputs of a batched model lead with it)."""
    return shape[1:] if len(shape) >= 2 else shape


# -- geometry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where a frame lands in the model input: scaled to ``nw x nh`` at ``(px, py)``."""

    nw: int
    nh: int
    px: int
    py: int

    def to_frame(self, fw: int, fh: int) -> tuple[float, float, float, float]:
        """(sx, sy, px, py): frame = (input - pad) * s, per axis."""
        return fw / self.nw, fh / self.nh, float(self.px), float(self.py)


def geometry(fw: int, fh: int, w: int, h: int, p: Preprocess) -> Geometry:
    """Placement of an ``fw x fh`` frame in a ``w x h`` input under ``p``."""
    if p.resize == "stretch":
        return Geometry(w, h, 0, 0)
    r = min(w / fw, h / fh)
    nw, nh = max(1, min(w, round(fw * r))), max(1, min(h, round(fh * r)))
    if p.anchor == "topleft":
        return Geometry(nw, nh, 0, 0)
    return Geometry(nw, nh, (w - nw) // 2, (h - nh) // 2)


# -- choosing --------------------------------------------------------------------------------


def formats() -> dict[str, type[Format]]:
    """Every format by name, in the order ``auto`` tries them."""
    from edgeva.modules.detectors.formats import detr, rows, ssd, yolo, yolox

    return {f.name: f for f in (ssd.Ssd, detr.Detr, rows.Rows, yolox.Yolox, yolo.Yolo)}


NAMES = ("rows", "yolo", "yolox", "ssd", "detr")
FormatName = Literal["auto", "rows", "yolo", "yolox", "ssd", "detr"]


def bind(name: str, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
         options: FormatOptions) -> Format:
    """The format ``name`` (or, for ``auto``, the first that reads these outputs) bound to
    them; a FormatError naming the shapes seen and each format tried with why it did not fit."""
    table = formats()
    if name != "auto":
        try:
            return table[name].bind(outputs, meta, size, replace(options, explicit=True))
        except FormatError as e:
            raise FormatError(f"outputs {fmt_shapes(outputs)} are not output_format {name}: {e}") from None
    why = []
    for f in _auto_order(table, meta):
        try:
            return f.bind(outputs, meta, size, options)
        except FormatError as e:
            why.append(f"{f.name}: {e}")
    if any(o.shape and o.shape[-1] is None for o in outputs):
        # An output whose last axis is dynamic (a server's -1) was taken as rows before formats
        # existed: still so, when nothing else fits (a wrong guess fails on the first frame).
        try:
            return table["rows"].bind(outputs, meta, size, replace(options, explicit=True))
        except FormatError:
            pass
    raise FormatError(f"outputs {fmt_shapes(outputs)} match no output format (tried {'; '.join(why)}); "
                      "set output_format (and output_name) if the model is one of them")


def _auto_order(table: dict[str, type[Format]], meta: ModelMeta) -> list[type[Format]]:
    # An Ultralytics export is YOLO even when its output could pass for rows ([1, N, 6]: v5
    # with one class): its metadata says so.
    order = list(table.values())
    if meta.ultralytics:
        order.sort(key=lambda f: f.name != "yolo")
    return order


def with_overrides(p: Preprocess, resize: str, channels: str, scale: float | None,
                   mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None) -> Preprocess:
    """A format's default pre-processing with what the deployment sets (``auto``/None: keep)."""
    out = p
    if resize != "auto":
        out = replace(out, resize=resize)
    if channels != "auto":
        out = replace(out, channels=channels)
    if scale is not None:
        out = replace(out, scale=scale)
    if mean is not None:
        out = replace(out, mean=tuple(mean))
    if std is not None:
        out = replace(out, std=tuple(std))
    return out
