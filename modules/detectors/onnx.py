"""``backend: onnx``: an ONNX detector run in-process with onnxruntime.

Expected model (the bundled ``asset:centernet_mnv3_coco.onnx`` is one):

- one input, float32 (or uint8, fed 0-255 as such), NHWC ``[N, H, W, 3]`` or NCHW
  ``[N, 3, H, W]``. ``N`` may be fixed (1: no batching) or dynamic (batches of up to
  ``max_batch``). ``H``/``W`` come from the model when fixed, else from the config's
  ``input_size``, else from the model's metadata (``imgsz``, as Ultralytics writes it).
- outputs in one of the formats of ``modules/detectors/formats/`` (``output_format``; ``auto``
  picks by shapes, names and metadata and logs which): ``rows`` (``[N, K, 6]`` x1, y1, x2, y2,
  score, class in input pixels: the bundled model), ``yolo`` (Ultralytics v5/v8/v11, raw),
  ``yolox``, ``ssd`` (TF Object Detection API) or ``detr`` (RT-DETR, RF-DETR, D-FINE). Each
  format brings its pre-processing (letterbox or stretch, RGB or BGR, pixel scale), which the
  detector's ``resize``, ``channel_order``, ``input_scale``, ``input_mean``/``input_std``
  override. A model whose outputs fit no format is refused at setup, naming its output shapes
  and the formats tried.
- class names: the config's ``class_names``, else the model's metadata (``names``), else COCO-80.

Execution providers (``providers``, ``provider_fallback``; ``modules/providers.py``): CPU by
default; ``openvino``, ``cuda``, ``tensorrt``, ``coreml``... where the installed onnxruntime
wheel has them. The one that runs is logged and published in the module's metrics
(``provider_<name>``: 1).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from edgeva.modules.base import MAX_PATH_CHARS, ModuleError
from edgeva.modules.decoder import resolve_path
from edgeva.modules.detectors import Backend, BackendConfig, DetectorArgs
from edgeva.modules.detectors.formats import FormatError, FormatOptions, ModelMeta, OutputSpec, bind
from edgeva.modules.providers import (
    ProviderError,
    ProviderName,
    choose,
    fallback_field,
    providers_field,
    running,
)

#: The model of a config that names none: the bundled CenterNet MobileNetV3 (COCO-80).
DEFAULT_MODEL = "asset:centernet_mnv3_coco.onnx"


class OnnxConfig(BackendConfig):
    """``backend: onnx``: an ONNX model run in-process by onnxruntime."""

    type: Literal["onnx"] = "onnx"
    model: str | None = Field(
        None, max_length=MAX_PATH_CHARS, description=f"model path or asset:<name> (default {DEFAULT_MODEL}; "
        "tools/quantize_centernet.py builds an int8 variant, not bundled: see tools/README.md). "
        "Its output format: output_format (auto reads YOLO, YOLOX, SSD, DETR and rows).",
        json_schema_extra={"edgeva_path": "read"})  # the agent confines it (agent/paths.py)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level (all: layout and fusion "
        "passes too; lower levels only to rule out an optimiser problem)")
    providers: list[ProviderName] = providers_field()
    provider_fallback: bool = fallback_field()


class OnnxBackend(Backend):
    config_class = OnnxConfig
    warm_up = True  # onnxruntime plans memory and starts its threads on the first run

    def __init__(self, config: OnnxConfig, args: DetectorArgs, log: logging.Logger) -> None:
        import onnxruntime as ort  # heavy: only when this backend is used

        path = resolve_path(config.model or DEFAULT_MODEL)
        if not path.is_file():
            raise ModuleError(f"detector: no ONNX model at {path} (model: {config.model!r})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[config.graph_optimization]
        # Idle worker threads spin by default, stealing CPU from the other modules on a
        # small board between frames.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = list(config.providers)
        try:
            asked = choose(wanted, config.provider_fallback, ort.get_available_providers())
        except ProviderError as e:
            raise ModuleError(f"detector: {e}") from None
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=asked)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModuleError(f"detector: cannot load ONNX model {path}: {e}") from e
        try:
            self.provider = running(self._sess, asked, config.provider_fallback, wanted, log, "detector")
        except ProviderError as e:
            raise ModuleError(f"detector: {e}") from None
        inputs = self._sess.get_inputs()
        if args.input_name:
            inputs = [i for i in inputs if i.name == args.input_name]
        if len(inputs) != 1:
            names = [i.name for i in self._sess.get_inputs()]
            raise ModuleError(f"detector: {path.name}: set input_name to one of {names}")
        inp = inputs[0]
        dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}.get(inp.type)
        if dtype is None or len(inp.shape) != 4:
            raise ModuleError(
                f"detector: {path.name} input {inp.name!r} is {inp.type} {inp.shape}; "
                "expected float32 or uint8 [N, H, W, 3] or [N, 3, H, W]"
            )
        outputs = [OutputSpec(o.name, tuple(d if isinstance(d, int) and d > 0 else None for d in o.shape))
                   for o in self._sess.get_outputs()]
        if args.output_name and args.output_name not in [o.name for o in outputs]:
            raise ModuleError(f"detector: {path.name} has no output {args.output_name!r} "
                              f"({[o.name for o in outputs]})")
        meta = ModelMeta.from_props(self._sess.get_modelmeta().custom_metadata_map)
        self._in = inp.name
        self.layout, self.input_size, self.max_batch = parse_input_shape(
            list(inp.shape), args.input_size or _fixed_or(inp.shape, meta.imgsz), args.max_batch,
            f"{path.name} input {inp.name!r}"
        )
        try:
            self.format = bind(args.output_format, outputs, meta, self.input_size,
                               FormatOptions(args.output_name, args.class_offset, args.detr_activation))
        except FormatError as e:
            raise ModuleError(f"detector: {path.name}: {e}") from None
        self._outs = list(self.format.outputs)
        self.class_names = meta.names
        w, h = self.input_size
        shape = (self.max_batch, h, w, 3) if self.layout == "nhwc" else (self.max_batch, 3, h, w)
        self._x = np.zeros(shape, dtype)
        log.info("detector: %s, input %s %s %s %dx%d, batch <= %d, output format %s%s (%s), "
                 "provider %s, %d thread(s), optimisation %s", path.name, inp.name, self.layout,
                 np.dtype(dtype).name, w, h, self.max_batch, self.format.name,
                 " (auto)" if args.output_format == "auto" else "", self.format.detail, self.provider,
                 args.threads, config.graph_optimization)

    def input_buffer(self) -> np.ndarray:
        return self._x

    def infer(self, n: int) -> list[np.ndarray]:
        outs = self._sess.run(self._outs, {self._in: self._x[:n]})
        fmt, thr = self.format, self.min_score
        if n == 1:
            return [fmt.decode(outs, thr)]
        return [fmt.decode([o[i] for o in outs], thr) for i in range(n)]

    def close(self) -> None:
        self._sess = None


def _fixed_or(shape: list, imgsz: tuple[int, int] | None) -> tuple[int, int] | None:
    """The metadata's input size (``imgsz``) for an input whose height and width are both
    dynamic; None where the model fixes them (its own size wins) or says nothing."""
    dims = list(shape[1:])
    spatial = dims[:2] if dims[-1] == 3 else dims[1:] if dims[0] == 3 else dims
    return None if any(isinstance(d, int) and d > 0 for d in spatial) else imgsz


def parse_input_shape(
    shape: list, size: tuple[int, int] | None, max_batch: int, what: str
) -> tuple[str, tuple[int, int], int]:
    """(layout, (width, height), batch) from a 4-D input shape whose dims are ints or
    dynamic (None, -1, a name). Raises ModuleError when it cannot tell or ``size`` conflicts."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[3] == 3:
        layout, h, w = "nhwc", dims[1], dims[2]
    elif dims[1] == 3:
        layout, h, w = "nchw", dims[2], dims[3]
    else:
        raise ModuleError(f"detector: {what} has shape {shape}: no 3-channel axis (NHWC or NCHW)")
    if size is not None:
        if (w is not None and w != size[0]) or (h is not None and h != size[1]):
            raise ModuleError(f"detector: input_size {size} does not fit {what} shape {shape}")
        w, h = size
    if w is None or h is None:
        raise ModuleError(f"detector: {what} has dynamic size {shape}: set input_size [w, h]")
    batch = max_batch if dims[0] is None else min(dims[0], max_batch)
    return layout, (w, h), batch
