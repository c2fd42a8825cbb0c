"""Time the detector's post-processing of a YOLO-sized output: decoding 8,400 candidates and
class-aware NMS (``modules/detectors/nms.py``), the budget being 1 ms a frame.

    taskset -c 1 .venv/bin/python tools/time_nms.py

Cases (random but realistic: clusters of overlapping boxes around a few dozen objects):

- ``decode+nms``: a YOLOv8 output ``[84, 8400]`` read at score 0.4 (what a frame costs);
- ``nms K``: NMS alone on K candidates that all passed the threshold (a low threshold or a
  crowded frame), K = 100, 300, 1000, 8400 (the last: every candidate kept, the worst case;
  NMS is greedy, so its cost grows with the number of boxes *kept*, not only of candidates).

Prints the median of many runs in ms, and the OpenCV call the detector used before for
comparison.
"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np

from edgeva.modules.detectors.formats import FormatOptions, ModelMeta, OutputSpec
from edgeva.modules.detectors.formats.yolo import Yolo
from edgeva.modules.detectors.nms import nms


def clustered(rng: np.random.Generator, k: int, objects: int = 40) -> np.ndarray:
    """``k`` rows scattered around ``objects`` boxes (as a detector's duplicates are)."""
    centre = rng.uniform(50, 590, (objects, 2))
    size = rng.uniform(20, 200, (objects, 2))
    which = rng.integers(0, objects, k)
    c = centre[which] + rng.normal(0, 4, (k, 2))
    s = size[which] * rng.uniform(0.9, 1.1, (k, 2))
    return np.column_stack([c - s / 2, c + s / 2, rng.uniform(0.4, 1, k),
                            rng.integers(0, 3, objects)[which]]).astype(np.float32)


def median_ms(fn, runs: int = 200) -> float:
    fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    out = np.zeros((84, 8400), np.float32)
    out[4:] = rng.uniform(0, 0.3, (80, 8400))  # background: under the threshold
    hot = rng.choice(8400, 120, replace=False)  # ~120 candidates around ~40 objects pass
    rows = clustered(rng, len(hot))
    out[0, hot], out[1, hot] = (rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2
    out[2, hot], out[3, hot] = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
    out[4 + rows[:, 5].astype(int), hot] = rows[:, 4]
    yolo = Yolo.bind([OutputSpec("output0", (1, 84, 8400))], ModelMeta(), (640, 640), FormatOptions())

    def decode_nms() -> None:
        r = yolo.decode([out], 0.4)
        r[nms(r, 0.5)]

    print(f"decode+nms  [84, 8400] at 0.4 ({len(yolo.decode([out], 0.4))} pass): {median_ms(decode_nms):.3f} ms")
    for k in (100, 300, 1000, 8400):
        r = clustered(rng, k, objects=max(40, k // 3)) if k < 8400 else clustered(rng, k, objects=8400)
        xywh = np.column_stack([r[:, 0:2], r[:, 2:4] - r[:, 0:2]])
        cls = r[:, 5].astype(np.int32)
        kept = len(nms(r, 0.5))
        ours = median_ms(lambda r=r: nms(r, 0.5), runs=50 if k < 8400 else 5)
        theirs = median_ms(lambda xywh=xywh, r=r, cls=cls: cv2.dnn.NMSBoxesBatched(xywh, r[:, 4], cls, 0.0, 0.5),
                           runs=50 if k < 8400 else 5)
        print(f"nms {k:5d} candidates ({kept} kept): numpy {ours:.3f} ms, OpenCV NMSBoxesBatched {theirs:.3f} ms")


if __name__ == "__main__":
    main()
