"""annotate module: video file output and the MJPEG HTTP stream."""

from __future__ import annotations

import urllib.request

import cv2
import numpy as np
import pydantic
import pytest

from edgeva.modules.annotate import Annotate, AnnotateConfig
from edgeva.modules.base import ModuleContext, ModuleError
from edgeva.modules.decoder import resolve_path
from edgeva.schemas.message import Message

BOX = [300, 150, 360, 300]


def _frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(resolve_path("asset:vtest.mp4")))
    out = [cap.read()[1] for _ in range(n)]
    cap.release()
    return out


def _msg(i: int, frame: np.ndarray) -> Message:
    frame.flags.writeable = False  # as a ring view: annotate must draw on its own copy
    return Message(i, "vtest", fields={
        "detections": [[*BOX, 0.9, 0]],
        "tracks": [{"id": 5, "box": BOX, "class_id": 0, "score": 0.9}],
        "roi": {"door": {"count": 1, "inside": [5], "entered": 1}},
        "reid": [{"template": "coat", "similarity": 0.8, "box": BOX, "track_id": 5}],
    }, arrays={"frame": frame})


def test_writes_mp4_with_boxes(tmp_path):
    frames = _frames(5)
    path = tmp_path / "out.mp4"
    cfg = AnnotateConfig(output=str(path), fps=10, polygons={"door": [[10, 10], [200, 10], [200, 100]]})
    m = Annotate(cfg, ModuleContext("annotate"))
    m.setup()
    for i, f in enumerate(frames):
        assert m.process(_msg(i, f)) is None
    m.close()
    cap = cv2.VideoCapture(str(path))
    got = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        got.append(img)
    assert len(got) == 5 and got[0].shape == (576, 768, 3)
    diff = np.abs(got[2].astype(int) - frames[2].astype(int)).sum(axis=2)
    x1, y1, x2, y2 = BOX
    # The track box edge (2 px, coloured) and the polygon outline differ from the frame...
    assert diff[y1 - 1 : y1 + 2, x1 + 5 : x2 - 5].mean() > 60
    assert diff[8:13, 50:150].mean() > 60
    # ...while a region far from any drawing is only changed by compression.
    assert diff[450:550, 600:700].mean() < 15
    assert frames[2].flags.writeable is False


def _read_part(r) -> np.ndarray:
    """One multipart JPEG part of an MJPEG response, decoded."""
    assert r.readline().strip() == b"--edgevaframe"
    headers = {}
    while (line := r.readline().strip()):
        k, _, v = line.decode().partition(":")
        headers[k.lower()] = v.strip()
    assert headers["content-type"] == "image/jpeg"
    jpeg = r.read(int(headers["content-length"]))
    assert r.readline() == b"\r\n"
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (576, 768, 3)
    return img


def test_mjpeg_stream_serves_jpeg_parts():
    """Two viewers, two frames that look nothing alike (the second is the first inverted):
    each viewer gets the newest frame at once, then the one published after it connected,
    in order, never an older one again."""
    m = Annotate(AnnotateConfig(output="mjpeg://127.0.0.1:0"), ModuleContext("annotate"))
    m.setup()
    try:
        first = _frames(1)[0]
        second = np.ascontiguousarray(255 - first)

        def which(img: np.ndarray) -> str:
            d = [np.abs(img.astype(int) - f.astype(int)).mean() for f in (first, second)]
            assert min(d) < 20 and max(d) > 60, d  # clearly one of the two
            return "first" if d[0] < d[1] else "second"

        m.process(_msg(0, first))
        streams = [urllib.request.urlopen(f"http://127.0.0.1:{m.port}/", timeout=30) for _ in range(2)]
        m.process(_msg(1, second))  # viewers connected now: they get this one
        for r in streams:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            # the newest at connect time (first), unless second came before the viewer looked
            got = [which(_read_part(r))]
            if got == ["first"]:
                got.append(which(_read_part(r)))
            assert got in (["second"], ["first", "second"]), got
            r.close()
    finally:
        m.close()


def test_config_errors(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="mp4"):
        AnnotateConfig(output=str(tmp_path / "out.gif"))
    with pytest.raises(pydantic.ValidationError, match="HOST:PORT"):
        AnnotateConfig(output="mjpeg://8080")
    with pytest.raises(pydantic.ValidationError):
        AnnotateConfig(output="x.mp4", draw=["everything"])
    with pytest.raises(ModuleError, match="does not exist"):
        Annotate(AnnotateConfig(output=str(tmp_path / "no" / "x.mp4")), ModuleContext("a")).setup()


def _drawn(fields: dict) -> np.ndarray:
    mod = Annotate(AnnotateConfig(output="mjpeg://127.0.0.1:0", draw=["detections"]), ModuleContext("a"))
    img = np.zeros((240, 320, 3), np.uint8)
    mod.draw(img, fields)
    return img


def _text(text: str) -> np.ndarray:
    """A blank frame with only ``text`` written where annotate labels the box at (40, 60)."""
    img = np.zeros((240, 320, 3), np.uint8)
    cv2.putText(img, text, (40, 57), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (40, 57), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 200, 200), 1, cv2.LINE_AA)
    return img


def test_detections_are_labelled_by_class_name():
    det = [40, 60, 120, 200, 0.57, 0]
    # the label sits above the box's top edge (y 60): compare that band
    labelled = _drawn({"detections": [det], "labels": ["person"]})
    assert np.array_equal(labelled[:58], _text("person 0.57")[:58])
    # without the detector's labels (or with a list that does not match), the class id
    unnamed = _drawn({"detections": [det]})
    assert np.array_equal(unnamed[:58], _text("0 0.57")[:58])
    assert np.array_equal(_drawn({"detections": [det], "labels": ["a", "b"]})[:58], _text("0 0.57")[:58])
