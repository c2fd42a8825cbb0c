"""Output formats, pre-processing, NMS and execution providers of the detector's onnx backend.

Each format gets a small ONNX graph built here with the ``onnx`` package's helpers, whose
outputs are constants chosen so that known boxes of a 1280x720 frame come out: the test checks
them to a tenth of a pixel after the letterbox (or stretch) and the way back, deploying the
model with nothing but its file (and what no metadata can say). Only onnxruntime's CPU provider
is installed here: the provider tests cover the selection and its errors on the CPU (a GPU
provider's success path needs a machine that has one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeva.modules.base import ModuleContext, ModuleError
from edgeva.modules.detector import Detector, DetectorConfig
from edgeva.modules.detectors import nms as nms_module
from edgeva.modules.detectors.formats import (
    FormatError,
    FormatOptions,
    ModelMeta,
    OutputSpec,
    Preprocess,
    bind,
    geometry,
)
from edgeva.modules.detectors.nms import nms
from edgeva.modules.embedders.onnx import OnnxEmbedder
from edgeva.modules.providers import ProviderError, choose, running
from edgeva.schemas.message import Message
from tests.servers.fixtures import Server, _mlserver

FW, FH = 1280, 720
#: Known boxes of the frame: a person, a car, and a weaker duplicate of the person.
PERSON = (200.0, 100.0, 400.0, 500.0, 0.9, 0)
CAR = (700.0, 300.0, 1000.0, 450.0, 0.8, 2)
DUP = (204.0, 104.0, 404.0, 504.0, 0.6, 0)  # IoU with PERSON ~0.92: NMS drops it


def save(path: Path, inp: list, outputs: dict[str, np.ndarray], meta: dict[str, str] | None = None,
         in_type: int = TensorProto.FLOAT) -> str:
    """An ONNX model with one input of shape ``inp`` and constant outputs."""
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a.astype(np.float32), name))
             for name, a in outputs.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", in_type, inp)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)) for name, a in outputs.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8  # readable by older onnxruntime wheels too
    for k, v in (meta or {}).items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def make(**args) -> Detector:
    d = Detector(DetectorConfig.model_validate({"type": "detector", **args}), ModuleContext("det"))
    d.setup()
    return d


def frame(bgr: tuple[int, int, int] = (10, 20, 30)) -> np.ndarray:
    f = np.empty((FH, FW, 3), np.uint8)
    f[...] = bgr
    return f


def detect(d: Detector, f: np.ndarray | None = None) -> list[list]:
    out = d.process(Message(0, "cam", arrays={"frame": frame() if f is None else f}))
    return out.fields["detections"]


def to_input(box: tuple, sx: float, sy: float, px: float = 0.0, py: float = 0.0) -> tuple[float, ...]:
    """A frame box as centre/size in input pixels (input = frame * s + p)."""
    x1, y1, x2, y2 = box[0] * sx + px, box[1] * sy + py, box[2] * sx + px, box[3] * sy + py
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def assert_boxes(got: list[list], want: list[tuple]) -> None:
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert np.allclose(g[:4], w[:4], atol=0.11), (g, w)  # the message rounds to 0.1 px
        assert abs(g[4] - w[4]) < 1e-3 and g[5] == w[5], (g, w)


# -- one model per format -----------------------------------------------------------------------

def yolo_v8(path: Path, classes: int = 80, meta: dict | None = None, inp: list | None = None) -> str:
    """Ultralytics v8 raw output [1, 4+C, 8400] at 640x640: letterbox of 1280x720 is scale 0.5,
    bars of 140 px above and below."""
    out = np.zeros((1, 4 + classes, 8400), np.float32)
    for j, b in enumerate((PERSON, CAR, DUP)):
        out[0, :4, 100 * j + 7] = to_input(b, 0.5, 0.5, 0, 140)
        out[0, 4 + b[5], 100 * j + 7] = b[4]
    out[0, 4 + 1, 5000] = 0.3  # under the threshold: left out
    return save(path, inp or [1, 3, 640, 640], {"output0": out}, meta)


def yolo_v5(path: Path) -> str:
    """v5 raw output [1, 25200, 85]: score = objectness x class score."""
    out = np.zeros((1, 25200, 85), np.float32)
    for j, b in enumerate((PERSON, CAR, DUP)):
        out[0, 1000 * j + 3, :4] = to_input(b, 0.5, 0.5, 0, 140)
        out[0, 1000 * j + 3, 4] = b[4] / 0.5
        out[0, 1000 * j + 3, 5 + b[5]] = 0.5
    out[0, 20000, 4], out[0, 20000, 5] = 1.0, 0.2  # objectness alone is not enough
    return save(path, [1, 3, 640, 640], {"output": out})


def yolox_rows(size: int = 640) -> np.ndarray:
    """YOLOX raw output at size x size: per grid cell of strides 8, 16, 32, the offsets in the
    cell, log sizes in strides, objectness and class scores. Letterbox at the top-left."""
    out = np.zeros((1, sum((size // s) ** 2 for s in (8, 16, 32)), 85), np.float32)
    base = {8: 0, 16: (size // 8) ** 2, 32: (size // 8) ** 2 + (size // 16) ** 2}
    for b, s in ((PERSON, 32), (CAR, 8), (DUP, 16)):
        cx, cy, w, h = to_input(b, 0.5, 0.5)
        gx, gy = int(cx // s), int(cy // s)
        row = base[s] + gy * (size // s) + gx
        out[0, row, :4] = cx / s - gx, cy / s - gy, math.log(w / s), math.log(h / s)
        out[0, row, 4], out[0, row, 5 + b[5]] = 1.0, b[4]
    return out


def ssd(path: Path) -> str:
    """TF OD API outputs for a 300x300 uint8 NHWC input: normalised ymin, xmin, ymax, xmax;
    classes numbered from 1; num says 3 (the 4th row is padding and must be ignored)."""
    boxes, classes, scores = np.zeros((1, 10, 4)), np.zeros((1, 10)), np.zeros((1, 10))
    for j, b in enumerate((PERSON, DUP, CAR, (0, 0, 640, 360, 0.99, 0))):
        boxes[0, j] = b[1] / FH, b[0] / FW, b[3] / FH, b[2] / FW
        classes[0, j], scores[0, j] = b[5] + 1, b[4]
    return save(path, [1, 300, 300, 3], {"detection_boxes": boxes, "detection_classes": classes,
                                         "detection_scores": scores, "num_detections": np.array([3.0])},
                in_type=TensorProto.UINT8)


def detr(path: Path, softmax: bool = False) -> str:
    """RF-DETR-like outputs: dets [1, 300, 4] normalised cx, cy, w, h; labels [1, 300, 80] logits."""
    boxes = np.full((1, 300, 4), 0.5, np.float32)
    logits = np.full((1, 300, 81 if softmax else 80), -30.0 if softmax else -10.0, np.float32)
    for j, b in enumerate((PERSON, CAR, DUP)):
        cx, cy, w, h = to_input(b, 1 / FW, 1 / FH)
        boxes[0, 10 * j] = cx, cy, w, h
        if softmax:  # the rest of the mass on "no object" (the last class)
            logits[0, 10 * j, b[5]] = 0.0
            logits[0, 10 * j, -1] = math.log((1 - b[4]) / b[4])
        else:
            logits[0, 10 * j, b[5]] = math.log(b[4] / (1 - b[4]))
    if softmax:  # a query most likely nothing (0.7), a person at 0.3 (under the threshold)
        boxes[0, 100] = 0.2, 0.2, 0.1, 0.1
        logits[0, 100, 0], logits[0, 100, -1] = 0.0, math.log(0.7 / 0.3)
    return save(path, [1, 3, 640, 640], {"dets": boxes, "labels": logits})


CASES = {  # format -> (model builder, extra args, boxes expected: NMS drops DUP, except detr)
    "yolo": (yolo_v8, {}, [PERSON, CAR]),
    "yolo-v5": (yolo_v5, {}, [PERSON, CAR]),
    "yolox": (lambda p: save(p, [1, 3, 640, 640], {"output": yolox_rows()}), {}, [PERSON, CAR]),
    "ssd": (ssd, {"class_offset": -1}, [PERSON, CAR]),
    "detr": (detr, {}, [PERSON, CAR, DUP]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_model_named_alone_finds_its_known_boxes(case: str, tmp_path: Path) -> None:
    """Auto picks the format from the outputs; the boxes come back to the pixel after
    letterbox/stretch and back, NMS where the format needs it."""
    build, extra, want = CASES[case]
    d = make(model=build(tmp_path / "m.onnx"), classes=None, nms_contain=None, **extra)
    try:
        assert d._backend.format.name == case.split("-")[0]
        assert_boxes(detect(d), want)
        assert d.metrics() == {"provider_cpu": 1.0}
    finally:
        d.close()


def test_detr_softmax_leaves_the_no_object_class_out(tmp_path: Path) -> None:
    d = make(model=detr(tmp_path / "m.onnx", softmax=True), detr_activation="softmax", classes=None)
    try:
        assert_boxes(detect(d), [PERSON, CAR, DUP])
    finally:
        d.close()


def test_ultralytics_metadata_gives_names_and_the_size_of_a_dynamic_export(tmp_path: Path) -> None:
    """A dynamic-size export ([batch, 3, height, width]) with Ultralytics' metadata: its imgsz
    sizes the input, its names label the classes, and a [1, N, 6]-like output is still YOLO."""
    meta = {"author": "Ultralytics", "names": "{0: 'human', 1: 'bike', 2: 'auto'}",
            "imgsz": "[640, 640]", "stride": "32", "task": "detect"}
    path = yolo_v8(tmp_path / "m.onnx", classes=3, meta=meta, inp=["batch", 3, "height", "width"])
    d = make(model=path, classes=None)
    try:
        assert d._backend.input_size == (640, 640) and d._backend.format.name == "yolo"
        out = d.process(Message(0, "cam", arrays={"frame": frame()}))
        assert out.fields["labels"] == ["human", "auto"]
        assert_boxes(out.fields["detections"], [PERSON, CAR])
    finally:
        d.close()
    assert ModelMeta.from_props({"names": "not python", "imgsz": "[480, 640]"}).imgsz == (640, 480)


def test_ultralytics_rtdetr_reads_as_detr_and_other_tasks_are_refused(tmp_path: Path) -> None:
    """RT-DETR from Ultralytics: one output [1, 300, 4+C] of normalised boxes and sigmoid
    scores, told by its metadata; a segmentation export, or names that do not fit the output,
    are refused instead of being read as boxes."""
    names = "{0: 'person', 1: 'bicycle', 2: 'car'}"
    out = np.zeros((1, 300, 7), np.float32)
    for j, b in enumerate((PERSON, CAR)):
        out[0, 20 * j, :4] = to_input(b, 1 / FW, 1 / FH)
        out[0, 20 * j, 4 + b[5]] = b[4]
    meta = {"author": "Ultralytics", "description": "Ultralytics RT-DETR-l model trained on coco.yaml",
            "names": names, "imgsz": "[640, 640]", "stride": "32", "task": "detect"}
    d = make(model=save(tmp_path / "r.onnx", [1, 3, 640, 640], {"output0": out}, meta), classes=None)
    try:
        assert d._backend.format.name == "detr" and d._pp.resize == "stretch"
        assert_boxes(detect(d), [PERSON, CAR])
    finally:
        d.close()
    seg = {**meta, "description": "Ultralytics YOLOv8n-seg model", "task": "segment"}
    path = save(tmp_path / "s.onnx", [1, 3, 640, 640], {"output0": np.zeros((1, 39, 8400)),
                                                        "output1": np.zeros((1, 32, 160, 160))}, seg)
    with pytest.raises(ModuleError, match="yolo: an Ultralytics segment model"):
        make(model=path)
    path = yolo_v8(tmp_path / "y.onnx", meta={**meta, "description": "Ultralytics YOLOv8n model"})
    with pytest.raises(ModuleError, match=r"has 84 values per candidate; the metadata's 3 class names need 7"):
        make(model=path)


def test_the_bundled_model_reads_as_rows() -> None:
    d = make()
    try:
        assert d._backend.format.name == "rows" and d._pp.resize == "stretch" and d._mul is None
    finally:
        d.close()


def test_outputs_of_no_format_are_refused_with_their_shapes(tmp_path: Path) -> None:
    path = save(tmp_path / "m.onnx", [1, 3, 640, 640], {"out": np.zeros((1, 7, 9))})
    with pytest.raises(ModuleError, match=r"out \[1, 7, 9\] match no output format \(tried ssd: .*detr: .*rows: "
                       r".*yolox: .*yolo: "):
        make(model=path)
    yolo = yolo_v8(tmp_path / "y.onnx")
    with pytest.raises(ModuleError, match=r"output0 \[1, 84, 8400\] are not output_format ssd"):
        make(model=yolo, output_format="ssd")
    with pytest.raises(ModuleError, match=r"are not output_format yolox: needs \[1, 8400, 5\+C\]"):
        make(model=yolo, output_format="yolox")


# -- pre-processing ---------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "args", "at", "want"), [
    # yolo: letterbox centred, RGB, / 255, NCHW: red (30) in channel 0, bars of 114 above
    ("yolo", {}, lambda x: (x[0, :, 139, 5], x[0, :, 140, 5], x[0, :, 499, 5], x[0, :, 500, 5]),
     [[114 / 255] * 3, [30 / 255, 20 / 255, 10 / 255], [30 / 255, 20 / 255, 10 / 255], [114 / 255] * 3]),
    # yolox: letterbox at the top-left, BGR, 0-255: the bar is below the image only
    ("yolox", {}, lambda x: (x[0, :, 0, 5], x[0, :, 359, 639], x[0, :, 360, 5]),
     [[10, 20, 30], [10, 20, 30], [114, 114, 114]]),
    # ssd: stretch, RGB, uint8 NHWC, as it is
    ("ssd", {}, lambda x: (x[0, 0, 0], x[0, 299, 299]), [[30, 20, 10], [30, 20, 10]]),
    # overrides: stretch, BGR, ImageNet mean/std
    ("yolo", {"resize": "stretch", "channel_order": "bgr", "input_mean": [0.4, 0.5, 0.6],
              "input_std": [0.2, 0.25, 0.5]},
     lambda x: (x[0, :, 0, 0], x[0, :, 639, 639]),
     [[(10 / 255 - 0.4) / 0.2, (20 / 255 - 0.5) / 0.25, (30 / 255 - 0.6) / 0.5]] * 2),
])
def test_each_format_feeds_the_model_its_way(case: str, args: dict, at, want: list, tmp_path: Path) -> None:
    d = make(model=CASES[case][0](tmp_path / "m.onnx"), **CASES[case][1], **args)
    try:
        detect(d)
        got = [np.asarray(v, np.float64).tolist() for v in at(d._x)]
        assert np.allclose(got, want, atol=1e-5), got
    finally:
        d.close()


def test_letterbox_maps_back_for_other_frame_shapes(tmp_path: Path) -> None:
    """A portrait frame (bars left and right) and then a landscape one through the same
    detector: each frame's own placement maps its boxes back."""
    d = make(model=yolo_v8(tmp_path / "m.onnx"), classes=None)
    try:
        g = geometry(360, 640, 640, 640, Preprocess(resize="letterbox"))
        assert (g.nw, g.nh, g.px, g.py) == (360, 640, 140, 0)
        # The model's boxes are constants in input pixels; in this placement, frame = input - (140, 0)
        # (then clipped to the frame): the person (100, 190, 200, 390) lands at (0, 190, 60, 390).
        tall = detect(d, np.zeros((640, 360, 3), np.uint8))
        assert_boxes(tall, [(0, 190, 60, 390, 0.9, 0), (210, 290, 359, 365, 0.8, 2)])
        assert_boxes(detect(d), [PERSON, CAR])
    finally:
        d.close()


def test_uint8_models_refuse_pixel_scaling(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="uint8 pixels"):
        make(model=ssd(tmp_path / "m.onnx"), input_scale=0.5)


# -- NMS --------------------------------------------------------------------------------------

def brute_nms(r: np.ndarray, iou: float) -> list[int]:
    order = sorted(range(len(r)), key=lambda i: -r[i, 4])  # sorted() is stable
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            if r[i, 5] != r[j, 5]:
                continue
            iw = max(0.0, min(r[i, 2], r[j, 2]) - max(r[i, 0], r[j, 0]))
            ih = max(0.0, min(r[i, 3], r[j, 3]) - max(r[i, 1], r[j, 1]))
            inter = iw * ih
            union = (r[i, 2] - r[i, 0]) * (r[i, 3] - r[i, 1]) + (r[j, 2] - r[j, 0]) * (r[j, 3] - r[j, 1]) - inter
            if inter / union > iou:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("matrix", [True, False], ids=["matrix", "loop"])
def test_nms_matches_a_brute_force_reference_and_opencv(seed: int, matrix: bool, monkeypatch) -> None:
    if not matrix:  # the path of more than MATRIX_MAX candidates (a threshold near 0)
        monkeypatch.setattr(nms_module, "MATRIX_MAX", 10)
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 400, (n, 2))
    wh = rng.uniform(10, 120, (n, 2))
    r = np.column_stack([xy, xy + wh, rng.uniform(0, 1, n), rng.integers(0, 3, n)]).astype(np.float32)
    r[::7, 4] = r[1::7, 4][: len(r[::7])]  # ties in score: the input order decides
    for iou in (0.3, 0.5, 0.7):
        got = nms(r, iou).tolist()
        assert got == brute_nms(r, iou)
        xywh = np.column_stack([r[:, 0:2], r[:, 2:4] - r[:, 0:2]])
        cv = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, r[:, 4], r[:, 5].astype(np.int32), 0.0, iou)).ravel()
        assert sorted(got) == sorted(cv.tolist())  # what the detector used before
    assert nms(r[:0], 0.5).tolist() == [] and nms(r[:1], 0.5).tolist() == [0]


# -- execution providers (CPU only here) ---------------------------------------------------------

CPU = ["CPUExecutionProvider"]


def test_provider_choice_and_its_errors() -> None:
    with pytest.raises(ProviderError, match=r"cuda not installed .*\(installed: cpu\)"):
        choose(["cuda"], False, CPU)
    with pytest.raises(ProviderError, match=r"openvino, tensorrt not installed .*installed: cuda, cpu"):
        choose(["openvino", "tensorrt"], False, ["CUDAExecutionProvider", *CPU])
    assert choose(["cuda", "cpu"], False, CPU) == CPU  # a trailing cpu allows the fallback
    assert choose(["openvino", "cuda"], True, ["CUDAExecutionProvider", *CPU]) == ["CUDAExecutionProvider"]
    assert choose(["tensorrt"], True, CPU) == CPU
    assert choose(["tensorrt", "cuda"], False, ["TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider"]
    with pytest.raises(ProviderError, match="twice"):
        choose(["cpu", "cpu"], False, CPU)


class _Session:
    def __init__(self, got: list[str]) -> None:
        self.got = got

    def get_providers(self) -> list[str]:
        return self.got


def test_a_provider_that_did_not_start_is_an_error_unless_fallback(caplog) -> None:
    import logging

    log = logging.getLogger("t")
    asked = ["CUDAExecutionProvider", *CPU]
    with pytest.raises(ProviderError, match="cuda did not start"):
        running(_Session(CPU), ["CUDAExecutionProvider"], False, ["cuda"], log, "detector")
    assert running(_Session(CPU), asked, False, ["cuda", "cpu"], log, "detector") == "cpu"
    assert "not available here: running on cpu" in caplog.text
    assert running(_Session(asked), asked, False, ["cuda", "cpu"], log, "detector") == "cuda"


needs_no_gpu = pytest.mark.skipif(
    bool({"CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider"}
         & set(ort.get_available_providers())), reason="this onnxruntime has cuda, tensorrt or openvino")


@needs_no_gpu
def test_detector_and_embedder_refuse_a_provider_not_installed(tmp_path: Path) -> None:
    """On this CPU-only onnxruntime: naming cuda is an error naming what is installed; a
    trailing cpu or provider_fallback runs on the CPU, which the metrics say."""
    with pytest.raises(ModuleError, match=r"detector: execution provider cuda not installed .*installed: (azure, )?cpu\)"):
        make(providers=["cuda"])
    d = make(providers=["openvino", "cpu"])
    try:
        assert d.metrics() == {"provider_cpu": 1.0}
    finally:
        d.close()
    from edgeva.modules.decoder import ASSETS

    with pytest.raises(ModuleError, match=r"reid: execution provider tensorrt not installed"):
        OnnxEmbedder(ASSETS / "mobilenetv2_reid.onnx", 1, 2, providers=["tensorrt"])
    e = OnnxEmbedder(ASSETS / "mobilenetv2_reid.onnx", 1, 2, providers=["tensorrt"], provider_fallback=True)
    assert e.provider == "cpu"
    e.close()
    from edgeva.modules.reid import Reid, ReidConfig

    gallery = [{"name": "p", "image": "asset:demo_person.png"}]
    with pytest.raises(ModuleError, match=r"reid: execution provider cuda not installed"):
        Reid(ReidConfig(gallery=gallery, backend="onnx", providers=["cuda"]), ModuleContext("r")).setup()
    r = Reid(ReidConfig(gallery=gallery, backend="onnx", providers=["cuda", "cpu"]), ModuleContext("r"))
    r.setup()
    try:
        assert r.metrics()["provider_cpu"] == 1.0
    finally:
        r.close()


@pytest.fixture(scope="module")
def mlserver_detr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MLServer serving a DETR-layout model of known outputs (tests/servers/mlserver_detr)."""
    yield from _mlserver(tmp_path_factory, "mlserver_detr", "detr")


def test_triton_reads_a_served_model_of_two_outputs(mlserver_detr: Server) -> None:
    """backend triton: the format is picked from the outputs the server reports (two: boxes
    and logits), both are requested, and a batch of two frames is decoded image by image.
    Over gRPC (MLServer's HTTP takes tensors as JSON: two 640x640 images take longer than the
    timeout on this machine; the outputs are requested the same way over both)."""
    url, protocol = mlserver_detr.grpc, "grpc"
    d = make(backend="triton", url=url, protocol=protocol, model_name="detr", classes=None)
    try:
        assert d._backend.format.name == "detr" and d.max_batch > 1
        first, second = d.process_batch([Message(0, "a", arrays={"frame": frame()}),
                                         Message(0, "b", arrays={"frame": frame()})])
        assert_boxes(first.fields["detections"], [PERSON, CAR])
        assert_boxes(second.fields["detections"], [PERSON])
        assert d.metrics() == {}  # no onnxruntime provider: the server runs the model
    finally:
        d.close()
    with pytest.raises(ModuleError, match=r"model 'detr': outputs dets \[\?, 300, 4\], labels \[\?, 300, 80\] "
                       r"are not output_format yolo"):
        make(backend="triton", url=url, protocol=protocol, model_name="detr", output_format="yolo")


# -- through an agent -----------------------------------------------------------------------------

@pytest.fixture
def edgeva_agent(edgeva_agent_factory, tmp_path: Path):
    """An agent that may read the test's models (its media directory)."""
    return edgeva_agent_factory(None, "--media-dir", str(tmp_path))


def test_a_yolo_model_deploys_by_its_file_and_a_wrong_one_is_refused(edgeva, edgeva_client, tmp_path: Path) -> None:
    """A real deploy: a YOLOv8-layout model named by its file alone finds its boxes in 1280x720
    frames, the deploy reply and the metrics say which provider runs; a model of no format is refused at deploy
    with its output shapes (SETUP_FAILED from the module's setup)."""
    path = yolo_v8(tmp_path / "yolo.onnx")
    reply = edgeva.deploy({"app": "y", "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 10, "width": FW, "height": FH},
                "outputs": ["det"]},
        "det": {"type": "detector", "args": {"model": path, "classes": None}, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {"fields": ["detections", "labels"]}},
    }})
    # The operator who deploys sees what runs: the provider and the format auto chose.
    assert reply["modules"]["det"]["info"] == {"provider": "cpu", "output_format": "yolo"}, reply
    assert reply["modules"]["pub"]["info"] == {}
    event = edgeva.wait_events("y", n=1)[0]
    assert_boxes(event["detections"], [PERSON, CAR])
    assert event["labels"] == ["person", "car"]
    counters = {}
    for tm in edgeva_client.watch_metrics("y", idle_timeout=20):
        counters = {k: m.counters for k, m in tm.modules.items() if "det" in k}
        if any(c for c in counters.values()):
            break
    assert [c.get("provider_cpu") for c in counters.values()] == [1.0], counters
    bad = save(tmp_path / "bad.onnx", [1, 3, 640, 640], {"out": np.zeros((1, 7, 9))})
    with pytest.raises(AssertionError, match=r"out \[1, 7, 9\] match no output format \(tried ssd"):
        edgeva.deploy({"app": "b", "modules": {
            "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 10}, "outputs": ["det"]},
            "det": {"type": "detector", "args": {"model": bad}},
        }})


def test_a_dynamic_last_axis_is_still_read_as_rows_when_nothing_else_fits() -> None:
    """As before formats: a model whose one output is [N, K, ?] (a server's model often reports
    -1 axes) is taken as rows, after every format said no; a YOLO export with a dynamic
    candidate axis is YOLO when its metadata or the deployment says so (auto does not guess)."""
    opts = FormatOptions()
    assert bind("auto", [OutputSpec("det", (None, 100, None))], ModelMeta(), (512, 512), opts).name == "rows"
    yolo = [OutputSpec("out", (1, 84, None))]
    assert bind("yolo", yolo, ModelMeta(), (640, 640), opts).name == "yolo"
    assert bind("auto", yolo, ModelMeta(ultralytics=True), (640, 640), opts).name == "yolo"
    with pytest.raises(FormatError, match=r"out \[1, 7, 9\] match no output format"):
        bind("auto", [OutputSpec("out", (1, 7, 9))], ModelMeta(), (640, 640), opts)
