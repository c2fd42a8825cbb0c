"""Real third-party detectors deployed with nothing but their file: the output format is picked
from the model's outputs, and the pedestrians of a vtest frame come out where the reference
pre- and post-processing of tools/ puts them (tools/convert_yolox_nano.py, tools/convert_coco_ssd.py,
measured in modules/assets/README.md).

- YOLOX-Nano (`modules/assets/yolox_nano_coco.onnx`, bundled): the `yolox` format.
- SSDLite MobileNetV2 (`out/models/ssdlite_mobilenet_v2_coco.onnx`, 18 MB, built on demand by
  tools/convert_coco_ssd.py): the `ssd` format; skipped where it has not been built.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("edgeva.modules.detectors.formats",
                    reason="needs the detector's output formats (issue 23)")

from edgeva.modules.base import ModuleContext  # noqa: E402
from edgeva.modules.detector import Detector, DetectorConfig  # noqa: E402
from edgeva.schemas.message import Message  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "modules" / "assets" / "vtest.mp4"
YOLOX = ROOT / "modules" / "assets" / "yolox_nano_coco.onnx"
SSDLITE = ROOT / "out" / "models" / "ssdlite_mobilenet_v2_coco.onnx"

# Persons >= 0.4 on vtest frame 200 (768x576) by the tools' reference decoding: seven
# pedestrians, and for YOLOX the signpost at the top left that it calls a person.
PEDESTRIANS = [(615, 264, 650, 368), (220, 188, 248, 266), (703, 252, 744, 355), (80, 152, 108, 219),
               (674, 98, 706, 155), (488, 146, 519, 223), (702, 106, 722, 154)]
SIGNPOST = (31, 108, 48, 143)
SSD_PEDESTRIANS = [(216, 195, 250, 267), (616, 264, 649, 373), (82, 156, 112, 216), (702, 255, 738, 348),
                   (489, 151, 513, 222), (684, 106, 701, 154), (694, 103, 715, 155)]


def frame_200() -> np.ndarray:
    cap = cv2.VideoCapture(str(CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, f = cap.read()
    assert ok
    return f


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def deploy(model: Path) -> Detector:
    d = Detector(DetectorConfig.model_validate({"type": "detector", "model": str(model), "threads": 1}),
                 ModuleContext("det"))
    d.setup()
    return d


def assert_found(got: list[list], want: list[tuple]) -> None:
    assert len(got) == len(want), got
    for w in want:
        best = max(iou(g[:4], w) for g in got)
        assert best >= 0.9, (w, got)
    assert all(g[5] == 0 for g in got)


def test_yolox_nano_by_its_file_alone() -> None:
    d = deploy(YOLOX)
    assert d._backend.format.name == "yolox"
    got = d.process(Message(0, "cam", arrays={"frame": frame_200()})).fields["detections"]
    assert_found(got, [*PEDESTRIANS, SIGNPOST])


@pytest.mark.skipif(not SSDLITE.exists(), reason="not built: python3 tools/convert_coco_ssd.py")
def test_ssdlite_by_its_file_alone() -> None:
    d = deploy(SSDLITE)
    assert d._backend.format.name == "ssd"
    got = d.process(Message(0, "cam", arrays={"frame": frame_200()})).fields["detections"]
    assert_found(got, SSD_PEDESTRIANS)
