"""Multi-object tracking by detection, wrapping the motrackers library (paper section 4.2.3)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from edgeva.modules.base import ClassIds, Module, ModuleConfig, ModuleContext, ModuleError
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports

# Which knobs each algorithm reads; setting another one explicitly is refused (a no-op knob in
# a config is almost always a mistake, e.g. tuning iou_threshold for the centroid tracker).
_KNOBS: dict[str, set[str]] = {
    "centroid": set(),
    "centroid_kf": {
        "centroid_distance_threshold",
        "process_noise_scale",
        "measurement_noise_scale",
    },
    "sort": {"iou_threshold", "process_noise_scale", "measurement_noise_scale"},
    "iou": {"iou_threshold"},
}
_ALL_KNOBS = set().union(*_KNOBS.values())

# Fields that live outside the motrackers state (filters) or that motrackers re-reads on every
# update (plain attributes of its tracker object): changing them needs no restart.
_LIVE_FILTERS = {"classes", "min_score", "include_lost"}
_LIVE_ATTRS = {"max_lost", "iou_threshold", "centroid_distance_threshold"}


class TrackerConfig(ModuleConfig):
    """Arguments of the ``tracker`` module."""

    type: Literal["tracker"] = "tracker"
    ports: ClassVar[Ports] = Ports(consumes="detections", produces="tracks", passes="frame",
                                   when={"frame": "forward_frame"})
    algorithm: Literal["centroid", "centroid_kf", "sort", "iou"] = Field(
        "sort",
        description=(
            "centroid: greedy nearest-centroid matching, no gating (cheap; a new object near a "
            "lost one takes its id). centroid_kf: Kalman-filtered centroids, optimal assignment "
            "gated by centroid_distance_threshold. sort: Kalman-filtered boxes, optimal "
            "assignment on IoU (SORT). iou: greedy IoU matching of the last box (IOU tracker)."
        ),
    )
    max_lost: int = Field(
        3,
        ge=0,
        le=10000,
        description=(
            "Frames a track survives without a matching detection before its id is dropped. "
            "Raise it to bridge missed detections; lower it if ids leak onto other objects."
        ),
    )
    iou_threshold: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description=(
            "sort, iou: minimum IoU between a track's box (sort: Kalman-predicted; iou: last "
            "seen) and a detection to match. Lower it for small or fast objects at low frame "
            "rates (their boxes barely overlap from frame to frame); 0.3 is the SORT paper's."
        ),
    )
    centroid_distance_threshold: float = Field(
        30.0,
        gt=0.0,
        le=1e5,
        description=(
            "centroid_kf: maximum distance in pixels between a track's predicted centroid and a "
            "detection's centroid to match. Scale it with resolution and object speed."
        ),
    )
    process_noise_scale: float = Field(
        1.0,
        gt=0.0,
        le=1e6,
        description="centroid_kf, sort: Kalman process noise (higher follows turns faster).",
    )
    measurement_noise_scale: float = Field(
        1.0,
        gt=0.0,
        le=1e6,
        description="centroid_kf, sort: Kalman measurement noise (higher smooths jitter more).",
    )
    classes: ClassIds | None = Field(
        None, description="Track only detections of these class ids; null tracks every class."
    )
    min_score: float = Field(
        0.0, ge=0.0, le=1.0, description="Ignore detections scoring below this."
    )
    forward_frame: bool = Field(
        default=False,
        description="also pass the input's arrays['frame'] on (for an annotate module downstream)",
    )
    include_lost: bool = Field(
        False,
        description=(
            "Also output tracks not matched in this frame (still within max_lost), at their last "
            "or predicted box. Off: only tracks confirmed by a detection in this frame."
        ),
    )

    @model_validator(mode="after")
    def _knobs_match_algorithm(self) -> TrackerConfig:
        unused = (self.model_fields_set & _ALL_KNOBS) - _KNOBS[self.algorithm]
        if unused:
            raise ValueError(f"algorithm {self.algorithm!r} does not use {sorted(unused)}")
        return self


class Tracker(Module[TrackerConfig]):
    """Gives detections stable ids across frames (CentroidTracker, CentroidKF, SORT, IOU tracker
    from motrackers).

    Consumes ``fields["detections"]``: ``[[x1, y1, x2, y2, score, class_id], ...]`` in pixels.
    A message without that field is an error in the pipeline; an empty list ages every track.

    Emits one message per input (``msg.derive``: the input's fields, no arrays) with
    ``fields["tracks"]``: ``[{"id": int, "box": [x1, y1, x2, y2], "class_id": int,
    "score": float}, ...]``, python types only. Ids start at 0 and are never reused while the
    module runs; a restart starts them again at 0. By default only tracks matched in this frame
    are listed, so a downstream RoI module should tolerate a track missing for a few frames.
    The frame is not forwarded: route it around the tracker if a later module draws.

    Frames the detector skipped (its ``interval`` arg; ``fields["predicted"]`` true) do not age
    tracks: each track of the last detected frame is moved along its velocity (box change per
    frame between its last two detections) and listed with ``"predicted": true``.

    ``update`` applies ``classes``, ``min_score``, ``include_lost``, ``max_lost``,
    ``iou_threshold`` and ``centroid_distance_threshold`` in place (tracks and ids are kept);
    changing ``algorithm`` or the Kalman noise scales (fixed in each track's filter at creation)
    restarts the module, which drops every track.
    """

    config_class: ClassVar[type[ModuleConfig]] = TrackerConfig

    def __init__(self, config: TrackerConfig, ctx: ModuleContext) -> None:
        super().__init__(config, ctx)
        self._impl: Any = None
        # Per track id: (frame id, box) of its last two detections, for predicted frames.
        self._seen: dict[int, tuple[int, np.ndarray, int, np.ndarray]] = {}
        self._last: list[dict] = []  # tracks of the last detected frame

    def setup(self) -> None:
        self._impl = self._make(self.config)

    @staticmethod
    def _make(c: TrackerConfig) -> Any:
        try:
            # Imported here: motrackers pulls in pandas, matplotlib and ipywidgets (~1 s).
            import motrackers
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModuleError(f"tracker needs the motrackers package: {e}") from e
        if c.algorithm == "centroid":
            return motrackers.CentroidTracker(max_lost=c.max_lost)
        if c.algorithm == "centroid_kf":
            return motrackers.CentroidKF_Tracker(
                max_lost=c.max_lost,
                centroid_distance_threshold=c.centroid_distance_threshold,
                process_noise_scale=c.process_noise_scale,
                measurement_noise_scale=c.measurement_noise_scale,
            )
        if c.algorithm == "sort":
            return motrackers.SORT(
                max_lost=c.max_lost,
                iou_threshold=c.iou_threshold,
                process_noise_scale=c.process_noise_scale,
                measurement_noise_scale=c.measurement_noise_scale,
            )
        return motrackers.IOUTracker(max_lost=c.max_lost, iou_threshold=c.iou_threshold)

    def process(self, msg: Message) -> Message:
        dets = msg.fields.get("detections")
        if dets is None:
            raise ValueError("tracker input has no fields['detections'] (is a detector upstream?)")
        c = self.config
        if msg.fields.get("predicted"):
            out = msg.derive(tracks=self._predicted(msg.frame_id))
            if c.forward_frame and "frame" in msg.arrays:
                out.arrays["frame"] = msg.arrays["frame"]
            return out
        rows = [
            d for d in dets if d[4] >= c.min_score and (c.classes is None or int(d[5]) in c.classes)
        ]
        # motrackers wants (x, y, w, h) arrays and indexes them as 2-D even when empty.
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        xywh = arr[:, :4].copy()
        xywh[:, 2:] -= xywh[:, :2]
        self._impl.update(xywh, arr[:, 4].copy(), arr[:, 5].astype(np.int64))
        tracks = self._tracks()
        self._remember(msg.frame_id, tracks)
        out = msg.derive(tracks=tracks)
        if c.forward_frame and "frame" in msg.arrays:
            out.arrays["frame"] = msg.arrays["frame"]
        return out

    def _tracks(self) -> list[dict]:
        out = []
        for tid, t in self._impl.tracks.items():
            if t.lost and not self.config.include_lost:
                continue
            x, y, w, h = (float(v) for v in t.bbox)
            # motrackers hands back numpy scalars: msgpack refuses them, so convert here.
            out.append(
                {
                    "id": int(tid),
                    "box": [x, y, x + w, y + h],
                    "class_id": int(t.class_id),
                    "score": float(t.detection_confidence),
                }
            )
        return out

    def _remember(self, fid: int, tracks: list[dict]) -> None:
        """Keep each listed track's last two detected boxes (velocity for predicted frames)."""
        seen = self._seen
        for t in tracks:
            box = np.asarray(t["box"], np.float64)
            prev = seen.get(t["id"])
            seen[t["id"]] = (fid, box, prev[0], prev[1]) if prev else (fid, box, fid, box)
        if len(seen) > 4 * len(tracks) + 64:  # forget tracks long gone (bounded, rarely run)
            live = {t["id"] for t in tracks}
            self._seen = {k: v for k, v in seen.items() if k in live or fid - v[0] <= 100}
        self._last = tracks

    def _predicted(self, fid: int) -> list[dict]:
        """The last detected frame's tracks, moved to frame ``fid`` at constant velocity."""
        out = []
        for t in self._last:
            f1, b1, f0, b0 = self._seen[t["id"]]
            v = (b1 - b0) / (f1 - f0) if f1 > f0 else 0.0
            box = b1 + v * (fid - f1)
            out.append({**t, "box": [float(x) for x in box], "predicted": True})
        return out

    def update(self, config: TrackerConfig) -> bool:
        changed = {
            k for k in type(config).model_fields if getattr(config, k) != getattr(self.config, k)
        }
        if not changed <= _LIVE_FILTERS | _LIVE_ATTRS:
            return False
        for k in changed & _LIVE_ATTRS:
            if hasattr(self._impl, k):
                setattr(self._impl, k, getattr(config, k))
        self.config = config
        return True

    def close(self) -> None:
        self._impl = None
