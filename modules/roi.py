"""Region-of-interest monitor: who is inside which polygon, with enter/exit events (paper 4.2.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from edgeva.modules.base import (
    MAX_POLYGONS,
    ClassIds,
    Module,
    ModuleConfig,
    Point,
    Polygon,
    RegionName,
)
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports


class RoiConfig(ModuleConfig):
    """Arguments of the ``roi`` module."""

    type: Literal["roi"] = "roi"
    ports: ClassVar[Ports] = Ports(consumes="tracks | detections", produces="roi")
    polygons: dict[RegionName, Polygon] = Field(
        ...,
        max_length=MAX_POLYGONS,
        description=(
            "Named regions in pixel coordinates of the frame: {name: [[x, y], ...]} with at least "
            "3 points each, in order around the region (closed implicitly)."
        ),
        examples=[{"door": [[0, 0], [320, 0], [320, 240], [0, 240]]}],
    )
    classes: ClassIds | None = Field(
        None, description="Monitor only these class ids (e.g. [0] for COCO persons); null: all."
    )
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center",
        description=(
            "Point of a box tested against the polygons: bottom_center (the feet, right for "
            "floor areas seen at an angle) or center."
        ),
    )
    min_dwell_s: float = Field(
        0.0,
        ge=0.0,
        le=86400.0,
        description=(
            "A track counts as entered (event sent, total incremented) only once it has been "
            "inside this long; shorter visits (boxes grazing the edge) are ignored."
        ),
    )
    exit_timeout_s: float = Field(
        1.0,
        ge=0.0,
        le=3600.0,
        description=(
            "A track inside a region that stops appearing in the input is declared gone (exit) "
            "after this long; shorter gaps (missed detections) do not split a visit."
        ),
    )

    @field_validator("polygons")
    @classmethod
    def _check_polygons(cls, v: dict[str, list[Point]]) -> dict[str, list[Point]]:
        if not v:
            raise ValueError("at least one polygon is needed")
        for name, pts in v.items():
            if len(pts) < 3:
                raise ValueError(f"polygon {name!r} has {len(pts)} points; at least 3 are needed")
            if abs(cv2.contourArea(np.asarray(pts, dtype=np.float32))) == 0:
                raise ValueError(f"polygon {name!r} has zero area (points on a line?)")
        return v


@dataclass
class _Visit:
    first_ns: int  # first frame seen inside
    last_ns: int  # last frame seen inside
    class_id: int
    confirmed: bool = False  # min_dwell_s reached: counted, enter event sent


class _Region:
    """One polygon's geometry and state; kept across ``update`` while its name persists."""

    def __init__(self, points: list[Point]) -> None:
        self.visits: dict[int, _Visit] = {}
        self.entered = 0
        self.set_points(points)

    def set_points(self, points: list[Point]) -> None:
        self.contour = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)

    def contains(self, x: float, y: float) -> bool:
        # >= 0: a point on the boundary is inside (pointPolygonTest returns 0 there).
        return cv2.pointPolygonTest(self.contour, (x, y), False) >= 0


class Roi(Module[RoiConfig]):
    """Counts tracked objects inside named polygons and reports when they enter and leave.

    Consumes ``fields["tracks"]`` (``[{"id", "box": [x1, y1, x2, y2], "class_id", ...}]`` from
    the tracker). Without tracks it falls back to ``fields["detections"]``
    (``[x1, y1, x2, y2, score, class_id]``) and then only counts: no ids, no events, no totals.
    Time comes from ``msg.ts_ns`` (the source's timestamp), so dwell times are in stream time.

    Returns ``msg.derive(roi=...)`` with, per polygon name, ``{"count": objects inside now,
    "inside": [track ids], "entered": total entries since start}``. A track missing from the
    input for less than ``exit_timeout_s`` is still listed as inside.

    Emits through ``ctx.emit``: ``{"event": "enter", "polygon", "track_id", "class_id",
    "source", "frame_id", "ts_ns"}`` once a track has been inside for ``min_dwell_s``, and
    ``{"event": "exit", ..., "dwell_s"}`` when a counted track is seen outside or has been
    missing for ``exit_timeout_s`` (``dwell_s``: first to last frame seen inside).

    ``update`` applies every field live and returns True: polygons whose name persists keep
    their visits and totals (with the new shape from the next frame on), new names start
    empty, removed names are dropped without events.
    """

    config_class: ClassVar[type[ModuleConfig]] = RoiConfig

    def setup(self) -> None:
        self._regions = {name: _Region(pts) for name, pts in self.config.polygons.items()}

    def update(self, config: RoiConfig) -> bool:
        regions = {}
        for name, pts in config.polygons.items():
            region = self._regions.get(name) or _Region(pts)
            region.set_points(pts)
            regions[name] = region
        self._regions = regions
        self.config = config
        return True

    def _anchor(self, box) -> Point:
        x1, y1, x2, y2 = box[:4]
        return (x1 + x2) / 2, (y2 if self.config.anchor == "bottom_center" else (y1 + y2) / 2)

    def _wanted(self, class_id) -> bool:
        return self.config.classes is None or int(class_id) in self.config.classes

    def process(self, msg: Message) -> Message:
        tracks = msg.fields.get("tracks")
        if tracks is None:
            return msg.derive(roi=self._count_detections(msg.fields.get("detections") or []))
        now = msg.ts_ns
        # Anchors once per track, not once per (track, polygon).
        pts = [
            (int(t["id"]), int(t.get("class_id", -1)), self._anchor(t["box"]))
            for t in tracks
            if self._wanted(t.get("class_id", -1))
        ]
        seen = {tid for tid, _, _ in pts}
        out = {}
        for name, region in self._regions.items():
            for tid, cid, (x, y) in pts:
                visit = region.visits.get(tid)
                if region.contains(x, y):
                    if visit is None:
                        visit = region.visits[tid] = _Visit(now, now, cid)
                    visit.last_ns = now
                    if (
                        not visit.confirmed
                        and now - visit.first_ns >= self.config.min_dwell_s * 1e9
                    ):
                        visit.confirmed = True
                        region.entered += 1
                        self._event("enter", name, tid, visit, msg)
                elif visit is not None:
                    self._leave(region, name, tid, msg)
            timeout_ns = self.config.exit_timeout_s * 1e9
            for tid in [
                t
                for t, v in region.visits.items()
                if t not in seen and now - v.last_ns > timeout_ns
            ]:
                self._leave(region, name, tid, msg)
            inside = [tid for tid, v in region.visits.items() if v.confirmed]
            out[name] = {"count": len(inside), "inside": inside, "entered": region.entered}
        return msg.derive(roi=out)

    def _leave(self, region: _Region, name: str, tid: int, msg: Message) -> None:
        visit = region.visits.pop(tid)
        if visit.confirmed:
            self._event(
                "exit", name, tid, visit, msg, dwell_s=(visit.last_ns - visit.first_ns) / 1e9
            )

    def _event(self, kind: str, name: str, tid: int, visit: _Visit, msg: Message, **extra) -> None:
        self.ctx.emit(
            {
                "event": kind,
                "polygon": name,
                "track_id": tid,
                "class_id": visit.class_id,
                "source": msg.source,
                "frame_id": msg.frame_id,
                "ts_ns": msg.ts_ns,
                **extra,
            }
        )

    def _count_detections(self, dets: list) -> dict:
        pts = [self._anchor(d) for d in dets if self._wanted(d[5])]
        out = {}
        for name, region in self._regions.items():
            n = sum(region.contains(x, y) for x, y in pts)
            out[name] = {"count": int(n), "inside": [], "entered": region.entered}
        return out
