"""RoI module: counts on the synthetic scene equal the exact counts computed from its paths."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from edgeva.modules.base import ModuleContext
from edgeva.modules.roi import Roi, RoiConfig
from edgeva.modules.scene import SyntheticScene, point_in_polygon
from edgeva.modules.tracker import Tracker, TrackerConfig
from edgeva.schemas.message import Message

POLYGONS = {
    # A slanted quadrilateral in the middle, a U (concave: a figure can enter twice), and a
    # strip along the bottom edge (figures appear already inside it).
    "square": [[200, 120], [420, 100], [450, 260], [180, 280]],
    "u": [
        [60, 60],
        [300, 60],
        [300, 300],
        [220, 300],
        [220, 140],
        [140, 140],
        [140, 300],
        [60, 300],
    ],
    "bottom": [[0, 300], [640, 300], [640, 360], [0, 360]],
}


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(seed=0, n_objects=12, n_frames=300)


def make(events: list | None = None, **kw) -> Roi:
    ctx = ModuleContext("roi", emit=(events.append if events is not None else lambda e: None))
    roi = Roi(RoiConfig(**{"polygons": POLYGONS, **kw}), ctx)
    roi.setup()
    return roi


def gt_tracks(scene, i) -> list[dict]:
    return [{**g, "score": 1.0} for g in scene.ground_truth(i)]


def feed(scene, roi, tracks_of=gt_tracks, tail: int = 20) -> dict:
    """All frames, then ``tail`` empty frames so that every visit times out; last roi field."""
    out = None
    for i in range(scene.n_frames + tail):
        tracks = tracks_of(scene, i) if i < scene.n_frames else []
        out = roi.process(Message(i, "cam", ts_ns=scene.ts_ns(i), fields={"tracks": tracks}))
    return out.fields["roi"]


@pytest.mark.parametrize(
    "anchor,min_dwell_s", [("bottom_center", 0.0), ("center", 0.0), ("bottom_center", 1.5)]
)
def test_entries_equal_exact_counts_from_paths(scene, anchor, min_dwell_s):
    events: list[dict] = []
    roi_field = feed(scene, make(events, anchor=anchor, min_dwell_s=min_dwell_s))
    frames = range(scene.n_frames)
    for name, poly in POLYGONS.items():
        expected = scene.count_entries(poly, frames, anchor=anchor, min_dwell_s=min_dwell_s)
        assert roi_field[name]["entered"] == expected, name
        enters = [e for e in events if e["event"] == "enter" and e["polygon"] == name]
        exits = [e for e in events if e["event"] == "exit" and e["polygon"] == name]
        assert len(enters) == len(exits) == expected
        assert all(e["dwell_s"] >= min_dwell_s for e in exits)
        assert roi_field[name] == {"count": 0, "inside": [], "entered": expected}
    # The scene makes this a real test: there are entries in every polygon.
    if min_dwell_s == 0 and anchor == "bottom_center":
        counts = {n: scene.count_entries(p, frames) for n, p in POLYGONS.items()}
        assert all(c > 0 for c in counts.values()), counts
    json.dumps(events)  # plain python: msgpack/JSON-able


def test_counts_each_frame_match_ground_truth(scene):
    roi = make(exit_timeout_s=0.0)  # a figure gone from the frame leaves at once
    for i in range(0, scene.n_frames):
        out = roi.process(Message(i, ts_ns=scene.ts_ns(i), fields={"tracks": gt_tracks(scene, i)}))
        for name, poly in POLYGONS.items():
            want = {
                g["id"]
                for g in scene.ground_truth(i)
                if point_in_polygon((g["box"][0] + g["box"][2]) / 2, g["box"][3], poly)
            }
            got = out.fields["roi"][name]
            assert set(got["inside"]) == want and got["count"] == len(want), (i, name)


@pytest.mark.parametrize("algorithm", ["centroid_kf", "iou"])
def test_through_tracker_counts_stay_exact(scene, algorithm):
    # These two trackers make no ID switch on clean boxes (see test_tracker), so the pipeline
    # detector -> tracker -> roi must reproduce the exact counts.
    tracker = Tracker(TrackerConfig(algorithm=algorithm), ModuleContext("tracker"))
    tracker.setup()

    def tracked(scene, i):
        dets = [[*map(float, g["box"]), 0.9, 0] for g in scene.ground_truth(i)]
        return tracker.process(Message(i, fields={"detections": dets})).fields["tracks"]

    roi_field = feed(scene, make(), tracked)
    for name, poly in POLYGONS.items():
        assert roi_field[name]["entered"] == scene.count_entries(poly, range(scene.n_frames)), name


def test_detections_only_counts_without_events(scene):
    events: list[dict] = []
    roi = make(events)
    i = max(range(scene.n_frames), key=lambda k: len(scene.ground_truth(k)))
    dets = [[*g["box"], 0.9, 0] for g in scene.ground_truth(i)]
    out = roi.process(Message(i, fields={"detections": dets})).fields["roi"]
    for name, poly in POLYGONS.items():
        n = sum(point_in_polygon((d[0] + d[2]) / 2, d[3], poly) for d in dets)
        assert out[name] == {"count": n, "inside": [], "entered": 0}
    assert sum(v["count"] for v in out.values()) > 0
    assert events == []


def test_short_gap_keeps_visit_long_gap_exits():
    events: list[dict] = []
    roi = make(events, exit_timeout_s=0.25)
    t = {"id": 5, "box": [250.0, 150.0, 270.0, 200.0], "class_id": 0, "score": 0.9}
    step = 100_000_000  # 10 fps
    plan = [[t], [], [], [t], [], [], [], [t]]  # gaps of 0.2 s (kept) then 0.3 s (exit)
    for k, tracks in enumerate(plan):
        roi.process(Message(k, ts_ns=k * step, fields={"tracks": tracks}))
    kinds = [(e["event"], e["polygon"], e["frame_id"]) for e in events if e["polygon"] == "square"]
    assert kinds == [("enter", "square", 0), ("exit", "square", 6), ("enter", "square", 7)]
    assert [e["dwell_s"] for e in events if e["event"] == "exit" and e["polygon"] == "square"] == [
        0.3
    ]


def test_class_filter():
    events: list[dict] = []
    roi = make(events, classes=[0])
    car = {"id": 1, "box": [250.0, 150.0, 290.0, 200.0], "class_id": 2, "score": 0.9}
    out = roi.process(Message(0, fields={"tracks": [car]})).fields["roi"]
    assert out["square"]["count"] == 0 and events == []


def test_update_keeps_state_of_persisting_polygons():
    events: list[dict] = []
    roi = make(events)
    t = {"id": 3, "box": [250.0, 150.0, 270.0, 200.0], "class_id": 0, "score": 0.9}
    roi.process(Message(0, ts_ns=0, fields={"tracks": [t]}))
    new = {"square": POLYGONS["square"], "other": [[0, 0], [640, 0], [640, 360]]}
    assert roi.update(RoiConfig(polygons=new))
    out = roi.process(Message(1, ts_ns=100_000_000, fields={"tracks": [t]})).fields["roi"]
    assert set(out) == {"square", "other"}
    assert out["square"] == {"count": 1, "inside": [3], "entered": 1}  # no second enter
    assert [e["polygon"] for e in events if e["event"] == "enter"].count("square") == 1


@pytest.mark.parametrize(
    "polygons",
    [{}, {"a": [[0, 0], [1, 1]]}, {"a": [[0, 0], [1, 1], [2, 2]]}, {"a": [[0, 0], [1, 0], "x"]}],
)
def test_bad_polygons_refused(polygons):
    with pytest.raises(ValidationError):
        RoiConfig(polygons=polygons)


def test_unknown_key_refused():
    with pytest.raises(ValidationError):
        RoiConfig(polygons=POLYGONS, anchr="center")
