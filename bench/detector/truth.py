"""Ground truth for ``edgeva bench detector``: persons on frames of the bundled clip, and how a
detector's person boxes score against them.

``data/vtest_persons.json`` (beside this file) holds the persons on 8 frames of
``asset:vtest.mp4`` (50, 150, ..., 750: 46 persons), checked by eye: every person box that the
CenterNet, YOLOX-Nano or SSDLite proposed at score >= 0.25 was kept when it framed one whole
visible person and dropped otherwise, plus one far person none of them found; people mostly
hidden behind the sign are ``ignore`` (a detection there is neither a hit nor a false alarm).
The box edges are the detectors' own, so IoU >= 0.5 is a fair test and a tighter IoU is not.
46 persons on one camera is a small sample: a labelled data set is the better judge.

``modules/scene.py``'s synthetic scene has exact boxes (``ground_truth``), but of drawn figures,
not people: a people detector's recall there says nothing, so it is not used here.

Matching (``score``): person boxes one to one with the truth at IoU >= ``iou``, greedy, best
IoU first; recall = hits / persons, precision = hits / (hits + false alarms), where a
detection left unmatched counts as a false alarm unless it overlaps an ``ignore`` box by IoU >=
``IGNORE_IOU``. ``tools/compare_detectors.py`` scores its standalone reference decoders with
the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: The persons of vtest checked by eye (shipped with the package: ``*.json`` is package data).
TRUTH_FILE = Path(__file__).resolve().parent / "data" / "vtest_persons.json"
#: IoU at which a detection counts as finding a person (and two detectors' boxes as agreeing).
MATCH_IOU = 0.5
#: An unmatched detection overlapping an ``ignore`` box by at least this IoU is not a false alarm.
IGNORE_IOU = 0.3

Coord = Annotated[float, Field(ge=0, le=10000)]
Box = tuple[Coord, Coord, Coord, Coord]


class FrameTruth(BaseModel):
    """One frame: the persons to find, and the regions where a detection counts neither way."""

    model_config = ConfigDict(extra="forbid")
    persons: list[Box]
    ignore: list[Box] = []


class PersonTruth(BaseModel):
    """``data/vtest_persons.json``: frame index in the clip (as a string) -> its persons, in
    frame pixels ``x1, y1, x2, y2``."""

    model_config = ConfigDict(extra="forbid")
    clip: str
    about: str
    frames: dict[str, FrameTruth]

    @property
    def indices(self) -> list[int]:
        """The labelled frame indices, in order."""
        return sorted(int(k) for k in self.frames)

    @property
    def n_persons(self) -> int:
        return sum(len(f.persons) for f in self.frames.values())


def load_truth(path: str | Path = TRUTH_FILE) -> PersonTruth:
    """The labelled persons (validated: a misspelt key or a bad box is an error)."""
    return PersonTruth.model_validate_json(Path(path).read_text())


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of boxes whose first 4 columns are ``x1, y1, x2, y2``."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _rows(boxes: np.ndarray | list) -> np.ndarray:
    """Boxes as a 2-D float array (``[0, 4]`` when there are none)."""
    r = np.asarray(boxes, np.float64)
    return r.reshape(len(r), -1) if r.size else np.empty((0, 4))


def match(a: np.ndarray, b: np.ndarray, thr: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, iou)`` of boxes ``a[i]``, ``b[j]`` with IoU >= ``thr``, greedy,
    best IoU first (each box in at most one pair)."""
    a, b = _rows(a), _rows(b)
    if not len(a) or not len(b):
        return []
    m = iou(a, b)
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < thr:
            return pairs
        pairs.append((int(i), int(j), float(m[i, j])))
        m[i, :] = -1
        m[:, j] = -1


@dataclass
class Score:
    """Detections against the truth: ``hits`` of ``persons``; ``false`` alarms."""

    hits: int = 0
    false: int = 0
    persons: int = 0

    @property
    def recall(self) -> float | None:
        return round(self.hits / self.persons, 3) if self.persons else None

    @property
    def precision(self) -> float | None:
        found = self.hits + self.false
        return round(self.hits / found, 3) if found else None

    def add(self, other: Score) -> Score:
        return Score(self.hits + other.hits, self.false + other.false, self.persons + other.persons)


def score_frame(dets: np.ndarray, truth: FrameTruth, thr: float = MATCH_IOU) -> Score:
    """One frame's person boxes (rows ``x1, y1, x2, y2, ...``, already filtered to persons and
    the score threshold) against its truth."""
    dets = _rows(dets)
    want = np.asarray(truth.persons, np.float64).reshape(-1, 4)
    pairs = match(dets, want, thr)
    hit = {p[0] for p in pairs}
    rest = np.array([d for i, d in enumerate(dets) if i not in hit]).reshape(-1, dets.shape[1])
    ign = np.asarray(truth.ignore, np.float64).reshape(-1, 4)
    if len(rest) and len(ign):
        rest = rest[iou(rest, ign).max(axis=1) < IGNORE_IOU]
    return Score(len(pairs), len(rest), len(want))


def score(dets: dict[int, np.ndarray], truth: PersonTruth, thr: float = MATCH_IOU) -> Score:
    """Person boxes per labelled frame index against the truth, summed over its frames. A
    labelled frame missing from ``dets`` counts as one with nothing found."""
    total = Score()
    for k, f in truth.frames.items():
        total = total.add(score_frame(dets.get(int(k), np.empty((0, 4))), f, thr))
    return total


@dataclass
class Agreement:
    """Two detectors' person boxes over the same frames, matched one to one at IoU >= 0.5."""

    pairs: int = 0
    ref_boxes: int = 0
    boxes: int = 0
    iou_sum: float = 0.0

    @property
    def of_ref(self) -> float | None:
        """Share of the reference's boxes that the other detector also found."""
        return round(self.pairs / self.ref_boxes, 3) if self.ref_boxes else None

    @property
    def of_self(self) -> float | None:
        """Share of this detector's boxes that the reference also found."""
        return round(self.pairs / self.boxes, 3) if self.boxes else None

    @property
    def mean_iou(self) -> float | None:
        return round(self.iou_sum / self.pairs, 3) if self.pairs else None


def agreement(ref: list[np.ndarray], other: list[np.ndarray], thr: float = MATCH_IOU) -> Agreement:
    """Frame by frame, the boxes of ``other`` matched with those of ``ref`` (same frames, same
    order)."""
    if len(ref) != len(other):
        raise ValueError(f"agreement over {len(ref)} and {len(other)} frames")
    a = Agreement()
    for r, o in zip(ref, other, strict=True):
        pairs = match(r, o, thr)
        a.pairs += len(pairs)
        a.ref_boxes += len(r)
        a.boxes += len(o)
        a.iou_sum += sum(p[2] for p in pairs)
    return a
