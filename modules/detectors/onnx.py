"""``backend: onnx``: an ONNX detector run in-process with onnxruntime.

Expected model (the bundled ``asset:centernet_mnv3_coco.onnx`` is one):

- one float32 input, NHWC ``[N, H, W, 3]`` or NCHW ``[N, 3, H, W]``, RGB. Pixel values are
  0-255 times the detector's ``input_scale`` (1.0 for the bundled model; 1/255 for models trained
  on 0-1). ``N`` may be fixed (1: no batching) or dynamic (batches of up to ``max_batch``).
  ``H``/``W`` come from the model when fixed, else from the config's ``input_size``.
- one output (or the one ``output_name`` names) of rows ``x1, y1, x2, y2, score, class``: shape
  ``[N, K, 6]`` or ``[K, 6]``, boxes in input pixels, class an index into the config's
  ``class_names`` (COCO-80 by default). NMS inside the model is not needed: the module applies
  it. YOLO-style outputs (``[N, K, 85]``, centre/size + objectness + class scores) are not
  decoded here: export them with their decoding and NMS-free rows, or serve them via Triton
  with a post-processing step.

The session runs on the CPU provider with ``threads`` intra-op threads, whatever
onnxruntime wheel is installed (results and timings do not change with the wheel); for a GPU
or an accelerator, serve the model with Triton and use ``backend: triton``.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from edgeva.modules.base import MAX_PATH_CHARS, ModuleError
from edgeva.modules.decoder import resolve_path
from edgeva.modules.detectors import Backend, BackendConfig, DetectorArgs, rows

#: The model of a config that names none: the bundled CenterNet MobileNetV3 (COCO-80).
DEFAULT_MODEL = "asset:centernet_mnv3_coco.onnx"


class OnnxConfig(BackendConfig):
    """``backend: onnx``: an ONNX model run in-process by onnxruntime (CPU provider)."""

    type: Literal["onnx"] = "onnx"
    model: str | None = Field(
        None, max_length=MAX_PATH_CHARS, description=f"model path or asset:<name> (default {DEFAULT_MODEL}; "
        "tools/quantize_centernet.py builds an int8 variant, not bundled: see tools/README.md). "
        "See modules/detectors/onnx.py for the input/output layouts a model must have.",
        json_schema_extra={"edgeva_path": "read"})  # the agent confines it (agent/paths.py)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level (all: layout and fusion "
        "passes too; lower levels only to rule out an optimiser problem)")


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
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModuleError(f"detector: cannot load ONNX model {path}: {e}") from e
        inputs = self._sess.get_inputs()
        if args.input_name:
            inputs = [i for i in inputs if i.name == args.input_name]
        if len(inputs) != 1:
            names = [i.name for i in self._sess.get_inputs()]
            raise ModuleError(f"detector: {path.name}: set input_name to one of {names}")
        inp = inputs[0]
        if inp.type != "tensor(float)" or len(inp.shape) != 4:
            raise ModuleError(
                f"detector: {path.name} input {inp.name!r} is {inp.type} {inp.shape}; "
                "expected float32 [N, H, W, 3] or [N, 3, H, W]"
            )
        outs = [o.name for o in self._sess.get_outputs()]
        if args.output_name and args.output_name not in outs:
            raise ModuleError(f"detector: {path.name} has no output {args.output_name!r} ({outs})")
        self._in, self._out = inp.name, args.output_name or outs[0]
        self.layout, self.input_size, self.max_batch = parse_input_shape(
            list(inp.shape), args.input_size, args.max_batch, f"{path.name} input {inp.name!r}"
        )
        w, h = self.input_size
        shape = (self.max_batch, h, w, 3) if self.layout == "nhwc" else (self.max_batch, 3, h, w)
        self._x = np.zeros(shape, np.float32)
        log.info("detector: %s, input %s %s %dx%d, batch <= %d, %d thread(s), optimisation %s",
                 path.name, inp.name, self.layout, w, h, self.max_batch, args.threads,
                 config.graph_optimization)

    def input_buffer(self) -> np.ndarray:
        return self._x

    def infer(self, n: int) -> list[np.ndarray]:
        out = self._sess.run([self._out], {self._in: self._x[:n]})[0]
        if n == 1:
            return [rows(out)]
        return [rows(o) for o in out[:n]]

    def close(self) -> None:
        self._sess = None


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
