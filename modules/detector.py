"""``detector``: object detection on frames (paper section 4.2.2, the inference module).

Backends (``modules/detectors/``): ``onnx`` (in-process onnxruntime on the execution providers
``providers`` names; default model: the bundled CenterNet MobileNetV3, COCO-80,
``asset:centernet_mnv3_coco.onnx``; or a YOLO, YOLOX, SSD or DETR export, read by the output
formats of ``modules/detectors/formats/``, see the class docstring), ``opencv-hog`` (OpenCV's
people detector, no model file), ``triton`` (a model served by Triton or MLServer over the KServe
V2 protocol, HTTP or gRPC, with shared memory when the server is local).

Input: messages with ``arrays["frame"]`` (HxWx3 uint8 BGR, as the decoder makes them).
Output: one message per input frame, even with nothing detected, derived from the input:

- ``fields["detections"]``: ``[[x1, y1, x2, y2, score, class_id], ...]`` in pixels of the
  input frame (clipped to it), highest score first, after threshold, class filter and NMS;
- ``fields["labels"]``: class names, parallel to ``detections``;
- ``arrays["frame"]``: the input frame, when ``forward_frame`` (for annotate/reid downstream);
- ``arrays["crops"]`` (N x crop_h x crop_w x 3 uint8 BGR) and ``fields["crop_index"]`` (the
  index in ``detections`` of each crop), when ``crops``: the detections of ``crop_classes``,
  resized to ``crop_size`` (at most ``max_crops``, best scores first).

Batching: the runner hands ``process`` one message at a time. When the agent feeds several
cameras into one detector, frames that are waiting together can go through ``process_batch``
(one model call for up to ``max_batch`` frames), which pays off on a server with dynamic
batching or a GPU; on a CPU with the bundled fixed-batch model it is the same as one by one.
Results never depend on how frames were grouped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union

import cv2
import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgeva.modules.base import (
    MAX_CLASSES,
    MAX_NAME_CHARS,
    MAX_THREADS,
    NOT_A_PATH,
    ClassIds,
    Module,
    ModuleConfig,
    ModuleError,
    Side,
)
from edgeva.modules.detectors import DEFAULT, Backend, BackendConfig, load_backends, make_backend
from edgeva.modules.detectors.formats import (
    FormatName,
    Geometry,
    Preprocess,
    geometry,
    with_overrides,
)
from edgeva.modules.detectors.formats.rows import Rows
from edgeva.modules.detectors.forms import BackendForms
from edgeva.modules.detectors.nms import nms
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports

_NONE = np.empty((0, 6), np.float32)  # no rows: a frame skipped by interval
CropSide = Annotated[int, Field(ge=1, le=1024)]
Triple = tuple[Annotated[float, Field(ge=-1000.0, le=1000.0)], Annotated[float, Field(ge=-1000.0, le=1000.0)],
               Annotated[float, Field(ge=-1000.0, le=1000.0)]]

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Post-processing knobs: changing them needs no new session/connection and does not change the
# output size (forward_frame, crops, max_crops do: the output ring must be resized: restart).
_LIVE = {"score_threshold", "classes", "nms_iou", "nms_contain", "crop_classes", "class_names", "interval"}

#: Backend name -> its config class: the built-ins and the installed plugins
#: (``modules/detectors``), read once, at import, to build the config's union.
BACKEND_CONFIGS: dict[str, type[BackendConfig]] = {n: b.config_class for n, b in load_backends().items()}
#: One backend's config, told apart by its ``type``.
AnyBackendConfig = Annotated[Union[tuple(BACKEND_CONFIGS.values())], Field(discriminator="type")]  # noqa: UP007


def _not_contained(r: np.ndarray, frac: float) -> np.ndarray:
    """Mask of rows (sorted best first) not lying, by more than ``frac`` of their area, inside a
    better row of the same class."""
    x1, y1, x2, y2 = (r[:, k] for k in range(4))
    iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inside = iw * ih / ((x2 - x1) * (y2 - y1))[:, None]  # [j, i]: share of j inside i
    better = np.tri(len(r), k=-1, dtype=bool)  # i < j: i scores at least as high
    same = r[:, 5][:, None] == r[:, 5][None]
    return ~((inside > frac) & better & same).any(axis=1)


class DetectorConfig(ModuleConfig):
    """Args of ``detector``.

    ``backend`` is the backend's name with its args beside the detector's (``{"backend":
    "triton", "url": "gpu:8001", "model_name": "yolo", "score_threshold": 0.5}``), or an
    object holding the backend's args (``{"backend": {"type": "triton", "url": "gpu:8001",
    "model_name": "yolo"}, "score_threshold": 0.5}``); both mean the same. The ``backend.*``
    rows below are each backend's own args; an arg of another backend than the chosen one is
    refused, naming the backend it belongs to."""

    model_config = ConfigDict(json_schema_extra=lambda schema, cls: _forms().json_schema(schema))

    type: Literal["detector"] = "detector"
    ports: ClassVar[Ports] = Ports(consumes="frame", produces="detections labels predicted crop_index",
                                   arrays="crops", passes="frame",
                                   when={"crops": "crops", "crop_index": "crops", "frame": "forward_frame"})
    backend: AnyBackendConfig = Field(
        default_factory=lambda: BACKEND_CONFIGS[DEFAULT](), description="onnx: in-process onnxruntime; "
        "opencv-hog: OpenCV HOG people detector (no model, persons only, slow on large frames); "
        "triton: a KServe V2 server (Triton, MLServer); a plugin's name (entry point group "
        "edgeva.detector_backends). Its args (backend.* below): flat beside the name, or in an "
        "object with the name as its type", examples=["opencv-hog"])
    interval: int = Field(
        1, ge=1, le=100, description="run inference on every interval-th frame of each stream; the "
        "frames between pass on with no detections and fields['predicted'] = true, for a tracker "
        "downstream to predict the boxes of (k frames cost ~1/k of the inference; boxes between "
        "lag fast motion). 1: every frame. Needs a tracker downstream when above 1.")
    score_threshold: float = Field(
        0.4, ge=0.0, le=1.0, description="keep detections scoring at least this (the bundled "
        "model: 0.4 finds nearly every person on vtest; 0.3 lets rocks in)")
    classes: ClassIds | None = Field(
        [0], description="keep only these class ids (COCO-80: 0 person, 2 car, 7 truck); null keeps all")
    nms_iou: float | None = Field(
        0.5, gt=0.0, le=1.0, description="class-wise non-maximum suppression: drop a box overlapping "
        "a better one of its class by more than this IoU (the bundled model emits duplicates); null: off")
    nms_contain: float | None = Field(
        0.8, gt=0.0, le=1.0, description="also drop a box whose area lies inside a better box of its "
        "class by more than this fraction (CenterNet's duplicates are often half-body boxes inside "
        "the full one: IoU ~0.49, so IoU NMS alone keeps them); null: off")
    threads: int = Field(2, ge=1, le=MAX_THREADS, description="CPU threads of onnxruntime / OpenCV HOG")
    input_size: tuple[Side, Side] | None = Field(
        None, description="model input [width, height]; null: read from the model (needed only "
        "for models with a dynamic size)")
    output_format: FormatName = Field(
        "auto", description="how to read the model's outputs (modules/detectors/formats/): rows "
        "([K, 6] x1, y1, x2, y2, score, class: the bundled model), yolo (Ultralytics v5/v8/v11, "
        "raw), yolox, ssd (TF Object Detection API), detr (RT-DETR, RF-DETR, D-FINE); auto: by "
        "the output shapes, names and metadata (the log says which). Each brings its "
        "pre-processing; the args below override it")
    resize: Literal["auto", "letterbox", "stretch"] = Field(
        "auto", description="frame to model input: letterbox (aspect kept, grey bars; yolo, "
        "yolox) or stretch (rows, ssd, detr); auto: the format's")
    channel_order: Literal["auto", "rgb", "bgr"] = Field(
        "auto", description="channel order the model takes (auto: the format's: bgr for yolox, else rgb)")
    input_scale: float | None = Field(
        None, gt=0.0, le=1000.0, description="multiply 0-255 pixels by this before inference "
        "(null: the format's: 1.0 for rows, ssd and yolox, 1/255 for yolo and detr)")
    input_mean: Triple | None = Field(
        None, description="subtract per channel after input_scale, in the model's channel "
        "order (ImageNet: [0.485, 0.456, 0.406] with input_scale 1/255); null: none")
    input_std: Triple | None = Field(
        None, description="then divide per channel (ImageNet: [0.229, 0.224, 0.225]); null: none")
    class_offset: int = Field(
        0, ge=-1000, le=1000, description="added to the model's class ids (ssd: -1 for TF OD "
        "API models that number COCO from 1)")
    detr_activation: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="detr: class logits to scores (sigmoid: RT-DETR, RF-DETR, D-FINE; "
        "softmax: the original DETR, whose last class is 'no object')")
    input_name: str | None = Field(None, max_length=MAX_NAME_CHARS,
                                   description="onnx/triton: model input to feed (null: the only one)")
    output_name: str | None = Field(None, max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                                    description="onnx/triton: the output to read for rows, yolo, yolox "
                                    "(null: the only/first one)")
    class_names: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] | None = Field(
        None, max_length=MAX_CLASSES, description="names of class ids for fields['labels'] (null: "
        "the model's metadata names, else COCO-80)")
    forward_frame: bool = Field(True, description="pass the input frame on as arrays['frame']")
    crops: bool = Field(False, description="add arrays['crops'] and fields['crop_index'] (for reid)")
    crop_classes: ClassIds = Field([0], description="classes whose detections are cropped")
    crop_size: tuple[CropSide, CropSide] = Field((128, 256), description="crop [width, height] in pixels")
    max_crops: int = Field(16, ge=1, le=256, description="most crops per frame (best scores first)")
    max_frame_size: tuple[Side, Side] = Field(
        (1920, 1080), description="largest input frame [width, height]; only sizes the output "
        "buffer when crops is on (frames beyond it do not fit)")
    max_batch: int = Field(
        4, ge=1, le=64, description="most frames per model call in process_batch (capped by the "
        "model's own batch size: 1 for the bundled model)")

    @model_validator(mode="wrap")
    @classmethod
    def _backend_args(cls, data: Any, handler: Callable[[Any], DetectorConfig]) -> DetectorConfig:
        """Accept the flat form (a backend's args beside its name) and the nested one; refuse
        an arg of another backend at its path, naming the backend it belongs to."""
        return _forms().validate(data, handler, cls.__name__)

    @classmethod
    def known_args(cls) -> list[str]:
        """Every arg a deployment may write, flat backend args included (for error hints)."""
        return _forms().known_args()


@functools.cache
def _forms() -> BackendForms:
    return BackendForms(BACKEND_CONFIGS, DetectorConfig.model_fields, DEFAULT)


class Detector(Module[DetectorConfig]):
    """Runs a detector backend on each frame; see the module docstring for the message layout.

    **Output formats** (``output_format``, backends onnx and triton; ``modules/detectors/formats/``). ``auto``
    (the default) picks one by the model's output shapes, names and metadata and logs which; a
    model whose outputs fit none is refused at deploy, naming its output shapes and each format
    tried. Each format brings its pre-processing; ``resize``, ``channel_order``,
    ``input_scale``, ``input_mean``/``input_std`` override it. Boxes come back in frame pixels
    whatever the letterbox.

    | format | outputs (N candidates, C classes) | pre-processing | models |
    |---|---|---|---|
    | `rows` | `[1, K, 6]` x1, y1, x2, y2, score, class (input pixels) | stretch, RGB, 0-255 | the bundled CenterNet; any export with its decoding |
    | `yolo` | `[1, 4+C, N]` (v8/v11) or `[1, N, 5+C]` with objectness (v5), raw; NMS here | letterbox centred (114), RGB, 0-1 | Ultralytics YOLOv5/v8/v11 ONNX exports |
    | `yolox` | `[1, N, 5+C]` grid offsets, strides 8/16/32 | letterbox top-left (114), BGR, 0-255 | Megvii YOLOX |
    | `ssd` | boxes `[1, N, 4]` ymin, xmin, ymax, xmax (0-1), classes, scores, num | stretch, RGB, 0-255 (uint8 inputs as such) | TF Object Detection API (SSD, EfficientDet) |
    | `detr` | boxes `[1, Q, 4]` cx, cy, w, h (0-1), logits `[1, Q, C]` (Ultralytics RT-DETR: one `[1, Q, 4+C]`); no NMS | stretch, RGB, 0-1 | RT-DETR, RF-DETR, D-FINE, DETR |

    A model of these formats needs only its file (an Ultralytics export's metadata gives its
    class names and, for a dynamic-size export, its input size), plus what no metadata says:
    TF OD API class ids start at 1, RF-DETR wants ImageNet normalisation::

        {"type": "detector", "args": {"model": "/models/yolov8n.onnx"}}
        {"type": "detector", "args": {"model": "/models/yolox_s.onnx"}}
        {"type": "detector", "args": {"model": "/models/ssd_mobilenet_v2.onnx", "class_offset": -1}}
        {"type": "detector", "args": {"model": "/models/rfdetr_base.onnx",
         "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225]}}

    ``output_format`` says it outright (a dynamic-shape export, or to be sure):
    ``{"model": "/models/m.onnx", "output_format": "yolo"}``.

    **Execution providers** (``providers``, backend onnx, and reid's): most preferred first,
    among ``cpu``, ``openvino``, ``cuda``, ``tensorrt``, ``coreml``, ``directml``, ``rocm``.
    One that this onnxruntime wheel does not have (or that fails to start) is an error at
    deploy naming the installed ones, unless the list ends in ``cpu`` or ``provider_fallback``
    is true. The provider that runs is logged, in the deploy reply (``modules.<name>.info``:
    ``{"provider": "cpu", "output_format": "yolo"}``) and in the module's metrics
    (``counters.provider_<name>``: 1)::

        {"type": "detector", "args": {"model": "/models/yolov8n.onnx", "providers": ["openvino", "cpu"]}}
        {"type": "detector", "args": {"model": "/models/yolov8n.onnx", "providers": ["tensorrt", "cuda"]}}
    """

    config_class = DetectorConfig

    def setup(self) -> None:
        self._backend: Backend | None = None
        self._backend = make_backend(self.config.backend, self.config, self.ctx.log)
        b = self._backend
        if b.takes_tensor:
            w, h = b.input_size
            # Preprocessing buffers, allocated once: resize and colour conversion write into them.
            self._resized = np.empty((h, w, 3), np.uint8)
            self._rgb = np.empty((h, w, 3), np.uint8)
            self._x = b.input_buffer()
            self._pp = self._pixels(b)
            self._geo: Geometry | None = None  # letterbox placement of the last frame size
            self._frame_size: tuple[int, int] | None = None
            self._fit = np.empty((1, 1, 3), np.uint8)  # the frame scaled to fit (letterbox), reused
            # One inference now: onnxruntime plans memory and spins up threads on the first run
            # (several times a normal frame's cost), which would otherwise land on frame 0 and
            # delay the frames queued behind it. In-process only: a server warms its own.
            if b.warm_up:
                b.infer(1)
        self.max_batch = max(1, b.max_batch)  # the runtime batches frames of several inputs up to this
        self._last_run: dict[str, int] = {}  # stream -> frame id of its last inference (interval)
        self._apply(self.config)

    def _pixels(self, b: Backend) -> Preprocess:
        """The pre-processing: the backend's format's, with the deployment's overrides; a
        uint8 input takes the pixels as they are."""
        c = self.config
        pp = with_overrides(b.format.preprocess if b.format else Rows.preprocess, c.resize,
                            c.channel_order, c.input_scale, c.input_mean, c.input_std)
        if self._x.dtype == np.uint8:
            if (c.input_scale, c.input_mean, c.input_std) != (None, None, None):
                raise ModuleError("detector: the model takes uint8 pixels: input_scale, input_mean "
                                  "and input_std do not apply")
            pp = Preprocess(pp.resize, pp.anchor, pp.pad, pp.channels)
        mean = np.zeros(3, np.float32) if pp.mean is None else np.asarray(pp.mean, np.float32)
        std = np.ones(3, np.float32) if pp.std is None else np.asarray(pp.std, np.float32)
        # (value * scale - mean) / std as one multiply and one add, per channel
        self._mul: np.ndarray | float | None = (None if pp.scale == 1.0 and pp.mean is None and pp.std is None
                                               else np.float32(pp.scale) if pp.mean is None and pp.std is None
                                               else np.float32(pp.scale) / std)
        self._add = None if pp.mean is None and pp.std is None else -mean / std
        return pp

    def _apply(self, c: DetectorConfig) -> None:
        self.config = c
        model_names = self._backend.class_names if self._backend is not None else None
        self._names = tuple(c.class_names) if c.class_names is not None else model_names or COCO80
        if self._backend is not None:
            self._backend.min_score = c.score_threshold
        self._nms = self._backend is None or self._backend.format is None or self._backend.format.nms
        self._classes = None if c.classes is None else np.asarray(c.classes, np.float32)
        self._crop_classes = set(c.crop_classes)

    def update(self, config: DetectorConfig) -> bool:
        old, new = self.config.model_dump(exclude=_LIVE), config.model_dump(exclude=_LIVE)
        if old != new:
            return False
        self._apply(config)
        return True

    def describe(self) -> dict[str, str]:
        """For the deploy reply: the execution provider that runs the model (onnx backend) and
        the output format read from it (``output_format`` auto says which it chose)."""
        b = getattr(self, "_backend", None)
        fmt = getattr(b, "format", None)
        info = {"provider": b.provider} if b is not None and getattr(b, "provider", None) else {}
        if fmt is not None:
            info["output_format"] = fmt.name
        return info

    def metrics(self) -> dict[str, float]:
        """``provider_<name>``: 1 for the execution provider running the model (onnx backend)."""
        b = getattr(self, "_backend", None)
        return {f"provider_{b.provider}": 1.0} if b is not None and b.provider else {}

    def output_bytes(self) -> int | None:
        c = self.config
        if not c.crops:
            return None  # frame + a few KB of fields: the runtime's default (input slot + 256 KiB)
        frame = c.max_frame_size[0] * c.max_frame_size[1] * 3 if c.forward_frame else 0
        return frame + c.max_crops * c.crop_size[0] * c.crop_size[1] * 3 + 262144

    def process(self, msg: Message) -> Message:
        return self.process_batch([msg])[0]

    def process_batch(self, msgs: Sequence[Message]) -> list[Message]:
        """Detect on several frames (e.g. one per camera), up to the backend's batch size per
        model call; returns one message per input, in order."""
        b = self._backend
        if b is None:
            raise ModuleError("detector: process called before setup or after close")
        frames = [self._frame(m) for m in msgs]
        out: list[Message | None] = [None] * len(msgs)
        run = [k for k, m in enumerate(msgs) if self._due(m)]
        for k in set(range(len(msgs))) - set(run):  # between inferences: the tracker predicts
            out[k] = self._message(msgs[k], frames[k], _NONE, predicted=True)
        step = max(1, b.max_batch)
        for i in range(0, len(run), step):
            ks = run[i : i + step]
            chunk = [frames[k] for k in ks]
            if b.takes_tensor:
                places = [self._preprocess(f, j) for j, f in enumerate(chunk)]
                raws = b.infer(len(chunk))
            else:
                raws = b.infer_frames(chunk)
                places = [(1.0, 1.0, 0.0, 0.0)] * len(chunk)
            for k, f, raw, place in zip(ks, chunk, raws, places, strict=True):
                out[k] = self._message(msgs[k], f, self._postprocess(raw, f.shape[1], f.shape[0], *place))
        return out  # type: ignore[return-value]

    def _due(self, msg: Message) -> bool:
        """Whether this frame gets inference: the first of its stream, then every interval-th
        (by frame id, so frames dropped upstream do not stretch the interval)."""
        k = self.config.interval
        last = self._last_run.get(msg.source)
        if k > 1 and last is not None and 0 <= msg.frame_id - last < k:
            return False
        self._last_run[msg.source] = msg.frame_id
        return True

    @staticmethod
    def _frame(msg: Message) -> np.ndarray:
        f = msg.arrays.get("frame")
        if f is None or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            got = "no arrays['frame']" if f is None else f"a {f.dtype} {f.shape} frame"
            raise ModuleError(f"detector: needs HxWx3 uint8 BGR frames (a decoder upstream), got {got}")
        return f

    def _preprocess(self, frame: np.ndarray, i: int) -> tuple[float, float, float, float]:
        """Frame -> slot i of the model input (NHWC or NCHW, the model's channel order and pixel
        scale), allocating nothing while the frame size stays the same. Returns how to map
        input pixels back onto the frame: (sx, sy, px, py), frame = (input - p) * s."""
        w, h = self._backend.input_size
        pp = self._pp
        fh, fw = frame.shape[:2]
        if pp.resize == "stretch":
            cv2.resize(frame, (w, h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
            place = (fw / w, fh / h, 0.0, 0.0)
        else:
            g = self._geo
            if g is None or self._frame_size != (fw, fh):
                # A new frame size: new placement, bars painted once (the image area is
                # overwritten on every frame, the bars stay).
                g = self._geo = geometry(fw, fh, w, h, pp)
                self._frame_size = (fw, fh)
                self._fit = np.empty((g.nh, g.nw, 3), np.uint8)
                self._resized[...] = pp.pad
            cv2.resize(frame, (g.nw, g.nh), dst=self._fit, interpolation=cv2.INTER_LINEAR)
            self._resized[g.py : g.py + g.nh, g.px : g.px + g.nw] = self._fit
            place = g.to_frame(fw, fh)
        src = self._resized
        if pp.channels == "rgb":
            cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=self._rgb)
            src = self._rgb
        dst = self._x[i] if self._backend.layout == "nhwc" else self._x[i].transpose(1, 2, 0)
        if self._mul is None:
            np.copyto(dst, src, casting="unsafe")
        else:
            np.multiply(src, self._mul, out=dst, casting="unsafe")
            if self._add is not None:
                dst += self._add
        return place

    def _postprocess(self, raw: np.ndarray, w: int, h: int, sx: float, sy: float,
                     px: float = 0.0, py: float = 0.0) -> np.ndarray:
        """Raw [K, 6] rows in input pixels -> kept rows in frame pixels, best first
        (frame = (input - p) * s: p the letterbox offset, s the scale)."""
        c = self.config
        r = raw[raw[:, 4] >= c.score_threshold]  # NaN scores compare False: dropped too
        if self._classes is not None:
            r = r[np.isin(r[:, 5], self._classes)]
        if not len(r):
            return r
        r = r.copy()
        if px or py:
            r[:, 0:4] -= np.array([px, py, px, py], np.float32)
        r[:, 0:4] *= np.array([sx, sy, sx, sy], np.float32)
        np.clip(r[:, 0:4:2], 0, w - 1, out=r[:, 0:4:2])
        np.clip(r[:, 1:4:2], 0, h - 1, out=r[:, 1:4:2])
        r = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
        if c.nms_iou is not None and self._nms and len(r) > 1:
            r = r[nms(r, c.nms_iou)]  # best first
        else:
            r = r[np.argsort(-r[:, 4], kind="stable")]
        if c.nms_contain is not None and self._nms and len(r) > 1:
            r = r[_not_contained(r, c.nms_contain)]
        return r

    def _message(self, msg: Message, frame: np.ndarray, det: np.ndarray, predicted: bool = False) -> Message:
        c = self.config
        dets = [[round(float(x1), 1), round(float(y1), 1), round(float(x2), 1), round(float(y2), 1),
                 round(float(s), 4), int(k)] for x1, y1, x2, y2, s, k in det.tolist()]
        names = self._names
        labels = [names[d[5]] if 0 <= d[5] < len(names) else str(d[5]) for d in dets]
        out = msg.derive(detections=dets, labels=labels)
        if predicted:
            out.fields["predicted"] = True  # no inference on this frame (interval): not "nobody"
        if c.forward_frame:
            out.arrays["frame"] = frame
        if c.crops:
            idx = [i for i, d in enumerate(dets) if d[5] in self._crop_classes][: c.max_crops]
            cw, ch = c.crop_size
            # A new array per frame: the message may outlive this call (held downstream).
            crops = np.empty((len(idx), ch, cw, 3), np.uint8)
            for n, i in enumerate(idx):
                x1, y1, x2, y2 = (int(v) for v in dets[i][:4])
                cv2.resize(frame[y1 : y2 + 1, x1 : x2 + 1], (cw, ch), dst=crops[n],
                           interpolation=cv2.INTER_LINEAR)
            out.arrays["crops"] = crops
            out.fields["crop_index"] = idx
        return out

    def close(self) -> None:
        self._x = None  # a view on the backend's buffer (maybe shared memory): drop it first
        b, self._backend = getattr(self, "_backend", None), None
        if b is not None:
            b.close()
