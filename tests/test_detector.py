"""The ``detector`` module on real frames of the bundled clip, with every backend.

Expected counts come from the bundled CenterNet on vtest (frames 0/200/400/600 have 3/7/4/6
persons at score >= 0.4; frame 200 also has a duplicate person box at 0.390 inside the 0.595
one). The triton backend runs against real servers: MLServer (``.venv-mlserver``, required:
``tools/make-mlserver-venv.sh``) and, where ``.venv-pytriton`` exists, a real Triton on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from edgeva.modules.base import ModuleContext, ModuleError
from edgeva.modules.decoder import ASSETS
from edgeva.modules.detector import COCO80, Detector, DetectorConfig
from edgeva.modules.detectors.onnx import parse_input_shape
from edgeva.modules.detectors.triton import split_url
from edgeva.schemas.message import Message
from tests.servers.fixtures import Server, free_ports, mlserver_fixture, pytriton_fixture  # noqa: F401

FRAMES = (0, 200, 400, 600)
PERSONS = {0: 3, 200: 7, 400: 4, 600: 6}  # at score >= 0.4, after NMS


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(ASSETS / "vtest.mp4"))
    out = {}
    try:
        for i in range(max(FRAMES) + 1):
            ok, f = cap.read()
            assert ok, f"vtest.mp4 ended at frame {i}"
            if i in FRAMES:
                out[i] = f
    finally:
        cap.release()
    return out


def make(**args) -> Detector:
    """A detector set up the way the runner does it: validated args, a context, setup()."""
    d = Detector(DetectorConfig.model_validate({"type": "detector", **args}), ModuleContext("det"))
    d.setup()
    return d


@pytest.fixture(scope="module")
def onnx_det() -> Iterator[Detector]:
    d = make()
    yield d
    d.close()


def msg(frame: np.ndarray, i: int = 0) -> Message:
    return Message(i, "vtest", fields={"width": frame.shape[1], "height": frame.shape[0]},
                   arrays={"frame": frame})


def persons(out: Message) -> list[list]:
    return [d for d in out.fields["detections"] if d[5] == 0]


def assert_well_formed(out: Message, frame: np.ndarray) -> None:
    h, w = frame.shape[:2]
    dets, labels = out.fields["detections"], out.fields["labels"]
    assert len(labels) == len(dets)
    for (x1, y1, x2, y2, s, k), label in zip(dets, labels, strict=True):
        assert type(x1) is float and type(s) is float and type(k) is int
        assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1
        assert label == COCO80[k]
    assert [d[4] for d in dets] == sorted((d[4] for d in dets), reverse=True)
    msgpack.packb(out.fields)  # plain types only: it must cross the wire


def same_detections(a: list[list], b: list[list], px: float = 3.0, score: float = 0.02) -> None:
    assert len(a) == len(b), (a, b)
    for da, db in zip(a, b, strict=True):
        assert np.allclose(da[:4], db[:4], atol=px), (da, db)
        assert abs(da[4] - db[4]) <= score and da[5] == db[5], (da, db)


# -- onnx -------------------------------------------------------------------------------------

@pytest.mark.parametrize("i", FRAMES)
def test_onnx_finds_the_people_of_vtest(onnx_det: Detector, frames, i: int) -> None:
    out = onnx_det.process(msg(frames[i], i))
    assert len(persons(out)) == PERSONS[i]
    assert_well_formed(out, frames[i])
    assert out.frame_id == i and out.fields["width"] == 768  # derived from the input


def test_onnx_frame0_has_three_confident_people(frames) -> None:
    d = make(score_threshold=0.5)
    try:
        assert len(persons(d.process(msg(frames[0])))) == 3
    finally:
        d.close()


def test_nms_removes_the_duplicate_on_frame_200(frames) -> None:
    with_nms = make(score_threshold=0.35)
    without = make(score_threshold=0.35, nms_iou=None, nms_contain=None)
    try:
        kept = persons(with_nms.process(msg(frames[200])))
        raw = persons(without.process(msg(frames[200])))
    finally:
        with_nms.close()
        without.close()
    assert len(raw) == 8 and len(kept) == 7
    dup = [d for d in raw if d not in kept]
    assert len(dup) == 1 and 0.37 < dup[0][4] < 0.41  # the 0.390 box inside the 0.595 one
    iou_only = make(score_threshold=0.35, nms_contain=None)  # its IoU is 0.49: containment needed
    try:
        assert len(persons(iou_only.process(msg(frames[200])))) == 8
    finally:
        iou_only.close()


def test_all_classes_and_class_filter(frames) -> None:
    d = make(classes=None)
    try:
        labels = set(d.process(msg(frames[0])).fields["labels"])
    finally:
        d.close()
    assert "person" in labels and labels & {"car", "truck"}  # the parked car / the van
    d = make(classes=[2, 7])
    try:
        assert set(d.process(msg(frames[0])).fields["labels"]) <= {"car", "truck"}
    finally:
        d.close()


def test_module_api_forwarding_crops_and_batches(frames) -> None:
    d = make(crops=True, max_batch=4)
    try:
        m = msg(frames[200], 200)
        out = d.process(m)
        assert out is not m and out.arrays["frame"] is frames[200]
        crops, idx = out.arrays["crops"], out.fields["crop_index"]
        assert crops.shape == (len(idx), 256, 128, 3) and crops.dtype == np.uint8
        assert idx == list(range(PERSONS[200]))  # persons only, best first
        assert d.output_bytes() >= 768 * 576 * 3 + 16 * 256 * 128 * 3
        # Several cameras at once: same results as one by one, one message per frame, in order.
        batch = d.process_batch([msg(frames[i], i) for i in FRAMES])
        assert [o.frame_id for o in batch] == list(FRAMES)
        for i, o in zip(FRAMES, batch, strict=True):
            same_detections(o.fields["detections"], d.process(msg(frames[i], i)).fields["detections"], px=0, score=0)
    finally:
        d.close()
    d = make(forward_frame=False)
    try:
        out = d.process(msg(frames[0]))
        assert out.arrays == {} and d.output_bytes() is None
    finally:
        d.close()


def test_empty_frame_still_gives_a_message() -> None:
    d = make()
    try:
        out = d.process(msg(np.zeros((360, 640, 3), np.uint8), 7))
    finally:
        d.close()
    assert out.frame_id == 7 and out.fields["detections"] == [] and out.fields["labels"] == []


def test_update_applies_postprocessing_in_place(frames) -> None:
    d = make()
    try:
        n = len(d.process(msg(frames[200])).fields["detections"])
        assert d.update(d.config.model_copy(update={"score_threshold": 0.6}))
        assert len(d.process(msg(frames[200])).fields["detections"]) < n
        assert not d.update(d.config.model_copy(update={"threads": 1}))  # new session: restart
    finally:
        d.close()


def test_bad_input_and_missing_model_are_module_errors() -> None:
    d = make()
    try:
        with pytest.raises(ModuleError, match="HxWx3 uint8"):
            d.process(Message(0, "x", fields={}))
        with pytest.raises(ModuleError, match="HxWx3 uint8"):
            d.process(Message(0, "x", arrays={"frame": np.zeros((10, 10), np.uint8)}))
    finally:
        d.close()
    with pytest.raises(ModuleError, match="no ONNX model"):
        make(model="asset:nope.onnx")


# -- opencv-hog -------------------------------------------------------------------------------

def _holds_centre(box: list, person: list) -> bool:
    cx, cy = (person[0] + person[2]) / 2, (person[1] + person[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


HOG_AT_600 = 4  # measured (OpenCV 4.x HOG, 1 or 2 threads): 4 of the 6 people, all real


def test_hog_finds_large_people(frames, onnx_det: Detector) -> None:
    d = make(backend="opencv-hog", threads=1)
    try:
        out = d.process(msg(frames[600], 600))  # people ~100-140 px tall near the camera
    finally:
        d.close()
    found = persons(out)
    assert HOG_AT_600 <= len(found) <= PERSONS[600], found
    # ...and each is a different one of the people CenterNet finds there, not a false
    # positive (HOG's boxes are padded: they hold the person's centre, IoU is low)
    truth = persons(onnx_det.process(msg(frames[600], 600)))
    matched = [next((k for k, t in enumerate(truth) if _holds_centre(f, t)), None) for f in found]
    assert None not in matched and len(set(matched)) == len(found), (found, truth)
    assert_well_formed(out, frames[600])


# -- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    ({"backend": "tensorflow"}, "backend"),
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"score_threshold": -0.1}, "score_threshold"),
    ({"nms_iou": 0}, "nms_iou"),
    ({"threads": 0}, "threads"),
    ({"treshold": 0.3}, "treshold"),
    ({"backend": "triton"}, "model_name"),
    ({"url": "localhost:8000"}, "only for backend triton"),
    ({"backend": "opencv-hog", "model": "x.onnx"}, "model is only for backend onnx"),
    ({"hog_scale": 0.5}, "hog_scale"),
    ({"graph_optimization": "max"}, "graph_optimization"),
    ({"backend": "opencv-hog", "graph_optimization": "basic"}, "only for backend onnx"),
    ({"interval": 0}, "interval"),
    ({"backend": "triton", "model_name": "m", "shared_memory": "posix"}, "shared_memory"),
])
def test_config_is_validated(args: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DetectorConfig.model_validate({"type": "detector", **args})


def test_helpers() -> None:
    assert split_url("http://127.0.0.1:8000/") == ("127.0.0.1:8000", "127.0.0.1")
    assert split_url("[::1]:8001") == ("[::1]:8001", "[::1]")
    assert parse_input_shape([-1, 3, 640, 640], None, 4, "x") == ("nchw", (640, 640), 4)
    assert parse_input_shape([1, 512, 512, 3], None, 4, "x") == ("nhwc", (512, 512), 1)
    with pytest.raises(ModuleError, match="input_size"):
        parse_input_shape(["n", "h", "w", 3], None, 4, "x")


# -- triton: errors without a server ----------------------------------------------------------

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_without_server_is_a_clear_setup_error(protocol: str) -> None:
    (port,) = free_ports(1)
    with pytest.raises(ModuleError, match=f"no inference server answers at 127.0.0.1:{port}"):
        make(backend="triton", url=f"127.0.0.1:{port}", protocol=protocol, model_name="centernet",
             timeout_s=2)


# -- triton against MLServer ------------------------------------------------------------------

# A request deadline, not a speed limit: a 4-image batch as JSON (MLServer) on one busy core
# can take longer than the 5 s default.
SLOW_OK = 120.0

@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_mlserver_matches_onnx(mlserver_centernet: Server, onnx_det: Detector, frames,
                                      protocol: str) -> None:
    s = mlserver_centernet
    d = make(backend="triton", url=s.url(protocol), protocol=protocol, model_name=s.model, timeout_s=SLOW_OK)
    try:
        # MLServer has no shared memory and no binary HTTP tensors: auto falls back to both.
        assert d._backend.shared_memory == "none" and not d._backend._binary
        for i in (0, 200):
            out = d.process(msg(frames[i], i))
            same_detections(out.fields["detections"], onnx_det.process(msg(frames[i], i)).fields["detections"])
        batch = d.process_batch([msg(frames[i], i) for i in FRAMES])  # one request of 4 images
        assert [len(persons(o)) for o in batch] == [PERSONS[i] for i in FRAMES]
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_mlserver_refuses_system_shared_memory_clearly(mlserver_centernet: Server,
                                                              protocol: str) -> None:
    s = mlserver_centernet
    with pytest.raises(ModuleError, match="does not support system shared memory.*shared_memory: none"):
        make(backend="triton", url=s.url(protocol), protocol=protocol, model_name=s.model,
             shared_memory="system")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_wrong_model_name_is_a_clear_setup_error(mlserver_centernet: Server, protocol: str) -> None:
    s = mlserver_centernet
    with pytest.raises(ModuleError, match="no ready model 'yolo'"):
        make(backend="triton", url=s.url(protocol), protocol=protocol, model_name="yolo")
    with pytest.raises(ModuleError, match="no input 'pixels'"):
        make(backend="triton", url=s.url(protocol), protocol=protocol, model_name=s.model,
             input_name="pixels")


# -- triton against a real Triton (PyTriton) --------------------------------------------------

@pytest.mark.pytriton
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("shm", ["system", "none"])
def test_triton_pytriton_matches_onnx(pytriton_centernet: Server, onnx_det: Detector, frames,
                                      protocol: str, shm: str) -> None:
    """Needs .venv-pytriton (tools/make-pytriton-venv.sh); skipped where it is absent, which
    is what the ``pytriton`` marker is for. Covers system shared memory, which MLServer lacks."""
    s = pytriton_centernet
    d = make(backend="triton", url=s.url(protocol), protocol=protocol, model_name=s.model,
             shared_memory=shm, headers=s.headers(protocol), timeout_s=SLOW_OK)
    try:
        assert d._backend.shared_memory == shm and d._backend.max_batch == 4
        assert d._backend._binary == (protocol == "http")
        for i in (0, 200):
            out = d.process(msg(frames[i], i))
            same_detections(out.fields["detections"], onnx_det.process(msg(frames[i], i)).fields["detections"])
        batch = d.process_batch([msg(frames[i], i) for i in FRAMES])
        assert [len(persons(o)) for o in batch] == [PERSONS[i] for i in FRAMES]
    finally:
        d.close()


@pytest.mark.pytriton
@pytest.mark.slow
def test_triton_pytriton_shm_without_token_falls_back(pytriton_centernet: Server, frames) -> None:
    """auto: a refused registration (here: no access token) means tensors in the request."""
    s = pytriton_centernet
    d = make(backend="triton", url=s.http, model_name=s.model, timeout_s=SLOW_OK)
    try:
        assert d._backend.shared_memory == "none"
        assert len(persons(d.process(msg(frames[0])))) == PERSONS[0]
    finally:
        d.close()


def test_interval_runs_inference_on_every_kth_frame_of_each_stream(frames) -> None:
    """interval 3: frames 0, 3, 6 of each stream are detected; the others pass on flagged
    predicted with no detections (and their frame, for the tracker/annotate)."""
    d = make(interval=3)
    f = frames[200]
    try:
        got = {}
        for i in range(7):
            for cam in ("a", "b"):
                out = d.process(Message(i, cam, arrays={"frame": f}))
                got[cam, i] = (bool(out.fields.get("predicted")), len(persons(out)))
                assert out.arrays["frame"] is f
        for cam in ("a", "b"):
            assert [got[cam, i][0] for i in range(7)] == [False, True, True, False, True, True, False]
            assert all((n > 0) != p for p, n in (got[cam, i] for i in range(7)))
        # Frames lost upstream do not stretch the interval: ids 10, 11 after 6 -> 10 is due.
        assert not d.process(Message(10, "a", arrays={"frame": f})).fields.get("predicted")
        assert d.process(Message(11, "a", arrays={"frame": f})).fields.get("predicted")
        # A restarted source (ids back at 0) is detected at once.
        assert not d.process(Message(0, "a", arrays={"frame": f})).fields.get("predicted")
    finally:
        d.close()

