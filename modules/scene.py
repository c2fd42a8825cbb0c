"""A deterministic synthetic street scene with exact ground truth, for tests and demos.

Figures (filled rectangles and ellipses of distinct saturated colours, person-like aspect
ratio) walk along seeded piecewise-linear paths at constant speeds over a textured, static,
low-saturation background. Every path starts and ends outside the frame, so each figure enters
once, leaves once and never comes back; paths are random, so figures cross each other.

Because positions are a closed-form function of the frame index, tests can ask for the exact
boxes (``ground_truth``) and the exact number of RoI entries (``count_entries``) and compare
them with what the tracker and RoI modules report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np


class GroundTruthObject(NamedTuple):
    """One visible figure in one frame; ``box`` is ``[x1, y1, x2, y2]`` in pixels, clipped to
    the frame, with ``x2``/``y2`` exclusive (the figure covers ``out[y1:y2, x1:x2]``)."""

    id: int
    box: list[int]
    class_id: int

    def as_dict(self) -> dict:
        return {"id": self.id, "box": list(self.box), "class_id": self.class_id}


@dataclass(frozen=True)
class Figure:
    """A figure's appearance and path: ``waypoints`` (float x, y of the figure's centre),
    walked at ``speed`` pixels a frame starting at frame ``start``."""

    id: int
    width: int
    height: int
    color: tuple[int, int, int]
    ellipse: bool
    start: int
    speed: float
    waypoints: np.ndarray  # (n, 2) float64
    cumlen: np.ndarray  # (n,) path length up to each waypoint

    @property
    def end(self) -> int:
        """Last frame index at which the figure is on its path (it may be off-frame there)."""
        return self.start + int(self.cumlen[-1] / self.speed)

    def centre(self, frame_idx: int) -> tuple[float, float] | None:
        s = (frame_idx - self.start) * self.speed
        if s < 0 or s > self.cumlen[-1]:
            return None
        k = int(np.searchsorted(self.cumlen, s, side="right")) - 1
        k = min(k, len(self.cumlen) - 2)
        seg = self.cumlen[k + 1] - self.cumlen[k]
        t = 0.0 if seg == 0 else (s - self.cumlen[k]) / seg
        p = self.waypoints[k] + t * (self.waypoints[k + 1] - self.waypoints[k])
        return float(p[0]), float(p[1])


class SyntheticScene:
    """Seeded scene of ``n_objects`` figures over ``n_frames`` frames of ``width`` x ``height``.

    - ``render_into(i, out)`` draws frame ``i`` into a preallocated HxWx3 uint8 BGR array
      (no per-frame frame allocation) and returns the visible figures.
    - ``ground_truth(i)``: ``[{"id", "box": [x1, y1, x2, y2], "class_id": 0}]`` for frame ``i``.
    - ``ts_ns(i)``: the timestamp of frame ``i`` at ``fps`` (starts at 0).
    - ``count_entries(polygon, frames)``: exact expected RoI entries (see its docstring).
    """

    CLASS_ID = 0  # "person" in COCO, what a detector would report for these figures

    def __init__(
        self,
        width: int = 640,
        height: int = 360,
        n_objects: int = 8,
        n_frames: int = 300,
        fps: float = 10.0,
        seed: int = 0,
        speed_range: tuple[float, float] = (3.0, 7.0),
    ) -> None:
        self.width, self.height = width, height
        self.n_frames, self.fps = n_frames, fps
        rng = np.random.default_rng(seed)
        self.n_objects = n_objects
        self.background = self._make_background(rng)
        self.figures = [self._make_figure(i, rng, speed_range) for i in range(n_objects)]

    # -- construction -------------------------------------------------------------------------

    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        # Blurred grey noise plus a faint grid: texture for a background subtractor or a
        # detector to ignore, and low saturation so that figures stand out by colour.
        noise = rng.integers(60, 190, size=(self.height, self.width), dtype=np.uint8)
        grey = cv2.GaussianBlur(noise, (0, 0), 3)
        grey[::40, :] = 90
        grey[:, ::40] = 90
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))

    def _make_figure(self, i: int, rng: np.random.Generator, speed_range) -> Figure:
        w = int(rng.integers(20, 36))
        h = int(round(w * rng.uniform(2.0, 2.6)))
        # Hues spread evenly so that no two figures share a colour.
        hue = int(180 * i / self.n_objects)
        bgr = cv2.cvtColor(np.uint8([[[hue, 230, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
        margin = max(w, h)  # far enough out that the whole figure is off-frame
        a, b = rng.choice(4, size=2, replace=False)
        pts = [self._edge_point(int(a), margin, rng)]
        for _ in range(int(rng.integers(1, 3))):
            pts.append((rng.uniform(0.15, 0.85) * self.width, rng.uniform(0.2, 0.85) * self.height))
        pts.append(self._edge_point(int(b), margin, rng))
        wp = np.array(pts, dtype=np.float64)
        cumlen = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(wp, axis=0).T))])
        speed = float(rng.uniform(*speed_range))
        duration = int(cumlen[-1] / speed)
        start = int(rng.integers(0, max(1, self.n_frames - duration)))
        return Figure(i, w, h, tuple(int(c) for c in bgr), bool(i % 2), start, speed, wp, cumlen)

    def _edge_point(self, edge: int, margin: int, rng: np.random.Generator) -> tuple[float, float]:
        if edge == 0:
            return -margin, rng.uniform(0.3, 0.9) * self.height
        if edge == 1:
            return self.width + margin, rng.uniform(0.3, 0.9) * self.height
        if edge == 2:
            return rng.uniform(0.1, 0.9) * self.width, -margin
        return rng.uniform(0.1, 0.9) * self.width, self.height + margin

    # -- per frame ----------------------------------------------------------------------------

    def ts_ns(self, frame_idx: int) -> int:
        return round(frame_idx * 1e9 / self.fps)

    def _visible(self, frame_idx: int) -> list[tuple[Figure, list[int], list[int]]]:
        """(figure, unclipped box, clipped box) for each figure with at least 2x2 px visible."""
        out = []
        for f in self.figures:
            c = f.centre(frame_idx)
            if c is None:
                continue
            x1, y1 = int(round(c[0] - f.width / 2)), int(round(c[1] - f.height / 2))
            full = [x1, y1, x1 + f.width, y1 + f.height]
            clip = [
                max(0, full[0]),
                max(0, full[1]),
                min(self.width, full[2]),
                min(self.height, full[3]),
            ]
            if clip[2] - clip[0] >= 2 and clip[3] - clip[1] >= 2:
                out.append((f, full, clip))
        return out

    def render_into(self, frame_idx: int, out: np.ndarray) -> list[GroundTruthObject]:
        """Draw frame ``frame_idx`` into ``out`` (HxWx3 uint8, written in place) and return the
        visible figures, drawn in id order (a higher id occludes a lower one)."""
        if out.shape != self.background.shape or out.dtype != np.uint8:
            raise ValueError(
                f"out must be {self.background.shape} uint8, got {out.shape} {out.dtype}"
            )
        np.copyto(out, self.background)
        gts = []
        for f, full, clip in self._visible(frame_idx):
            if f.ellipse:
                centre = ((full[0] + full[2]) // 2, (full[1] + full[3]) // 2)
                axes = (f.width // 2, f.height // 2)
                cv2.ellipse(out, centre, axes, 0, 0, 360, f.color, thickness=-1)
            else:
                out[clip[1] : clip[3], clip[0] : clip[2]] = f.color
            gts.append(GroundTruthObject(f.id, clip, self.CLASS_ID))
        return gts

    def ground_truth(self, frame_idx: int) -> list[dict]:
        """Boxes of the figures visible in frame ``frame_idx``, as a detector would report them."""
        return [
            GroundTruthObject(f.id, clip, self.CLASS_ID).as_dict()
            for f, _, clip in self._visible(frame_idx)
        ]

    # -- expected RoI results -----------------------------------------------------------------

    def count_entries(
        self,
        polygon: Sequence[Sequence[float]],
        frames: Iterable[int],
        anchor: str = "bottom_center",
        min_dwell_s: float = 0.0,
    ) -> int:
        """Exact number of RoI entries over ``frames`` (in increasing order).

        A visit is a run of consecutive processed frames in which a figure is visible and its
        anchor (``bottom_center``: ``((x1+x2)/2, y2)``, or ``center``) lies inside the polygon or
        on its boundary. A visit counts as an entry when it lasts at least ``min_dwell_s``
        (timestamp of its last frame minus that of its first, by ``ts_ns``). Figures never
        come back once gone, so a figure's absence always ends its visit.
        """
        poly = [(float(x), float(y)) for x, y in polygon]
        entries = 0
        first: dict[int, int] = {}  # figure id -> first frame of the current visit
        last: dict[int, int] = {}
        for i in frames:
            seen = set()
            for g in self.ground_truth(i):
                x1, y1, x2, y2 = g["box"]
                px = (x1 + x2) / 2
                py = y2 if anchor == "bottom_center" else (y1 + y2) / 2
                if point_in_polygon(px, py, poly):
                    seen.add(g["id"])
                    first.setdefault(g["id"], i)
                    last[g["id"]] = i
            for fid in [k for k in first if k not in seen]:
                entries += self._long_enough(first.pop(fid), last.pop(fid), min_dwell_s)
        for fid, i0 in first.items():
            entries += self._long_enough(i0, last[fid], min_dwell_s)
        return entries

    def _long_enough(self, i0: int, i1: int, min_dwell_s: float) -> bool:
        return self.ts_ns(i1) - self.ts_ns(i0) >= min_dwell_s * 1e9


def point_in_polygon(x: float, y: float, poly: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray casting, with points on an edge counted as inside. Deliberately independent
    of the RoI module's cv2 test so that comparing the two is a real check."""
    inside = False
    n = len(poly)
    for k in range(n):
        ax, ay = poly[k]
        bx, by = poly[(k + 1) % n]
        # On the segment: collinear and within its bounding box (exact for small halves).
        if (
            (bx - ax) * (y - ay) == (by - ay) * (x - ax)
            and min(ax, bx) <= x <= max(ax, bx)
            and min(ay, by) <= y <= max(ay, by)
        ):
            return True
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside
