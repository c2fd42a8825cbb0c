"""roi, exactly (issue 25: ``make mutants`` on modules/roi.py): which point of a box is tested
and that a point on the edge is inside, the exact moments a visit is counted and declared gone,
what each event says, the class filter, detections-only counting and live updates. A 100 x 100
square, 10 fps, hand-placed boxes: every expected value is worked out by hand."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgeva.modules.base import ModuleContext
from edgeva.modules.roi import Roi, RoiConfig
from edgeva.schemas.message import Message

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]
STEP = 100_000_000  # 10 fps


def make(events: list, polygons: dict | None = None, **kw) -> Roi:
    roi = Roi(RoiConfig(polygons=polygons or {"sq": SQUARE}, **kw), ModuleContext("roi", emit=events.append))
    roi.setup()
    return roi


def track(tid: int, box: list[float], cid: int | None = 0) -> dict:
    t = {"id": tid, "box": box, "score": 0.9}
    if cid is not None:
        t["class_id"] = cid
    return t


def at(roi: Roi, k: int, *tracks: dict, source: str = "cam") -> dict:
    return roi.process(Message(k, source, ts_ns=k * STEP, fields={"tracks": list(tracks)})).fields["roi"]


def test_the_anchor_is_the_bottom_centre_or_the_centre() -> None:
    # box x 80..110 (centre x 95), y 60..100: the bottom centre (95, 100) lies ON the bottom
    # edge (inside), the centre (95, 80) inside too; box y 90..130: bottom (95, 130) outside,
    # centre (95, 110) outside; box y 40..140 centre (95, 90) inside, bottom outside
    on_edge, below, tall = [80.0, 60.0, 110.0, 100.0], [80.0, 90.0, 110.0, 130.0], [80.0, 40.0, 110.0, 140.0]
    feet = make([])
    assert at(feet, 0, track(1, on_edge), track(2, below), track(3, tall))["sq"]["inside"] == [1]
    mid = make([], anchor="center")
    assert at(mid, 0, track(1, on_edge), track(2, below), track(3, tall))["sq"]["inside"] == [1, 3]
    # x: the anchor is the middle of x1..x2, not an edge: 90..130 has its middle at 110 (out)
    assert at(make([]), 0, track(4, [90.0, 10.0, 130.0, 50.0]), track(5, [-20.0, 10.0, 10.0, 50.0]))["sq"] == \
        {"count": 0, "inside": [], "entered": 0}
    assert at(make([]), 0, track(6, [-10.0, 10.0, 10.0, 50.0]))["sq"]["inside"] == [6]  # x = 0: the edge


def test_enter_and_exit_events_say_exactly_what_happened() -> None:
    events: list[dict] = []
    roi = make(events, min_dwell_s=0.2, exit_timeout_s=10.0)
    box, out = [40.0, 40.0, 60.0, 60.0], [200.0, 200.0, 220.0, 220.0]
    assert at(roi, 3, track(9, box, 2), source="door")["sq"] == {"count": 0, "inside": [], "entered": 0}
    assert at(roi, 4, track(9, box, 2), source="door")["sq"] == {"count": 0, "inside": [], "entered": 0}
    assert at(roi, 5, track(9, box, 2), source="door")["sq"] == {"count": 1, "inside": [9], "entered": 1}
    assert at(roi, 6, track(9, box, 2), source="door")["sq"]["entered"] == 1  # counted once
    assert at(roi, 8, track(9, out, 2), source="door")["sq"] == {"count": 0, "inside": [], "entered": 1}
    assert events == [
        {"event": "enter", "polygon": "sq", "track_id": 9, "class_id": 2, "source": "door", "frame_id": 5,
         "ts_ns": 5 * STEP},
        {"event": "exit", "polygon": "sq", "track_id": 9, "class_id": 2, "source": "door", "frame_id": 8,
         "ts_ns": 8 * STEP, "dwell_s": 0.3},  # first (3) to last (6) frame seen inside
    ]


def test_a_missing_track_is_gone_only_after_the_exit_timeout() -> None:
    events: list[dict] = []
    roi = make(events, exit_timeout_s=0.3)
    other = track(2, [40.0, 40.0, 60.0, 60.0])
    at(roi, 0, track(1, [10.0, 10.0, 20.0, 20.0]), other)
    for k in (1, 2, 3):  # missing for 0.1 .. 0.3 s: still inside (gone only when MORE than 0.3 s)
        assert at(roi, k, other)["sq"]["inside"] == [1, 2], k
    assert at(roi, 4, other)["sq"] == {"count": 1, "inside": [2], "entered": 2}
    assert [(e["event"], e["track_id"], e["frame_id"], e.get("dwell_s")) for e in events] == \
        [("enter", 1, 0, None), ("enter", 2, 0, None), ("exit", 1, 4, 0.0)]


def test_a_visit_too_short_to_count_leaves_without_an_event() -> None:
    events: list[dict] = []
    roi = make(events, min_dwell_s=1.0, exit_timeout_s=0.0)
    at(roi, 0, track(1, [40.0, 40.0, 60.0, 60.0]))
    assert at(roi, 1, track(1, [240.0, 40.0, 260.0, 60.0]))["sq"] == {"count": 0, "inside": [], "entered": 0}
    at(roi, 2, track(1, [40.0, 40.0, 60.0, 60.0]))  # back: a new visit, from frame 2
    at(roi, 3)  # gone at once (timeout 0), still unconfirmed: nothing said
    assert events == [] and roi._regions["sq"].visits == {}


def test_the_class_filter_and_tracks_without_a_class() -> None:
    events: list[dict] = []
    box = [40.0, 40.0, 60.0, 60.0]
    roi = make(events, classes=[0, 3])
    assert at(roi, 0, track(1, box, 0), track(2, box, 1), track(3, box, 3), track(4, box, None))["sq"]["inside"] == [1, 3]
    every = make(events)
    assert at(every, 0, track(4, box, None))["sq"]["inside"] == [4]
    assert events[-1]["class_id"] == -1  # no class given: -1


def test_detections_only_count_and_keep_the_totals() -> None:
    events: list[dict] = []
    roi = make(events, {"sq": SQUARE, "far": [[500, 500], [600, 500], [600, 600]]}, classes=[0])
    at(roi, 0, track(1, [40.0, 40.0, 60.0, 60.0]))
    dets = [[40.0, 40.0, 60.0, 60.0, 0.9, 0], [10.0, 10.0, 30.0, 100.0, 0.8, 0],  # 2nd: bottom on the edge
            [40.0, 40.0, 60.0, 60.0, 0.9, 1], [200.0, 200.0, 220.0, 220.0, 0.9, 0]]
    out = roi.process(Message(1, "cam", ts_ns=STEP, fields={"detections": dets})).fields["roi"]
    assert out == {"sq": {"count": 2, "inside": [], "entered": 1}, "far": {"count": 0, "inside": [], "entered": 0}}
    assert isinstance(out["sq"]["count"], int)
    assert roi.process(Message(2, "cam", ts_ns=2 * STEP, fields={})).fields["roi"]["sq"]["count"] == 0
    assert [e["event"] for e in events] == ["enter"]


def test_update_moves_regions_keeps_their_state_and_drops_removed_ones_silently() -> None:
    events: list[dict] = []
    roi = make(events, {"sq": SQUARE, "gone": SQUARE}, exit_timeout_s=10.0)
    box = [40.0, 40.0, 60.0, 60.0]
    at(roi, 0, track(1, box))
    moved = [[100, 0], [200, 0], [200, 100], [100, 100]]
    assert roi.update(RoiConfig(polygons={"sq": moved, "new": SQUARE}, exit_timeout_s=10.0, min_dwell_s=0.5)) is True
    out = at(roi, 1, track(1, box))
    # sq moved away: track 1 is outside it now (exit); "new" starts empty and waits min_dwell_s
    assert out == {"sq": {"count": 0, "inside": [], "entered": 1}, "new": {"count": 0, "inside": [], "entered": 0}}
    assert [(e["event"], e["polygon"]) for e in events] == [("enter", "sq"), ("enter", "gone"), ("exit", "sq")]
    assert at(roi, 6, track(1, box))["new"] == {"count": 1, "inside": [1], "entered": 1}


@pytest.mark.parametrize("polygons,words", [
    ({}, "at least one polygon"),
    ({"a": [[0, 0], [1, 1]]}, "has 2 points; at least 3"),
    ({"a": [[0, 0], [1, 1], [2, 2]]}, "zero area"),
])
def test_bad_polygons_say_why(polygons: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RoiConfig(polygons=polygons)
    RoiConfig(polygons={"tri": [[0, 0], [1, 0], [0, 1]]})  # 3 points, area 0.5: fine


def test_dwell_and_exit_times_hold_to_the_nanosecond() -> None:
    # stream time is in ns: a visit 1 ns short of min_dwell_s is not counted yet; a track is gone
    # only once it has been missing MORE than exit_timeout_s
    events: list[dict] = []
    roi = make(events, min_dwell_s=1.0, exit_timeout_s=1.0)
    box = [40.0, 40.0, 60.0, 60.0]

    def at_ns(ts: int, *tracks: dict) -> dict:
        return roi.process(Message(ts, "cam", ts_ns=ts, fields={"tracks": list(tracks)})).fields["roi"]["sq"]

    assert at_ns(0, track(1, box))["count"] == 0
    assert at_ns(999_999_999, track(1, box))["count"] == 0
    assert at_ns(1_000_000_000, track(1, box))["inside"] == [1]
    assert at_ns(2_000_000_000)["inside"] == [1]  # missing exactly 1 s: kept
    assert at_ns(2_000_000_001)["inside"] == []
    assert [e["event"] for e in events] == ["enter", "exit"]


def test_a_class_filter_never_takes_a_track_without_a_class() -> None:
    roi = make([], classes=[1])
    assert at(roi, 0, track(1, [40.0, 40.0, 60.0, 60.0], None), track(2, [40.0, 40.0, 60.0, 60.0], 1))["sq"]["inside"] == [2]


@pytest.mark.parametrize("field,top", [("min_dwell_s", 86400.0), ("exit_timeout_s", 3600.0)])
def test_the_time_limits_are_0_to_their_maximum(field: str, top: float) -> None:
    for ok in (0.0, top):
        assert getattr(RoiConfig(polygons={"sq": SQUARE}, **{field: ok}), field) == ok
    for bad in (-0.5, top + 0.5):
        with pytest.raises(ValidationError, match=field):
            RoiConfig(polygons={"sq": SQUARE}, **{field: bad})


def test_by_default_a_track_counts_at_once_and_is_gone_after_1_s_missing() -> None:
    events: list[dict] = []
    roi = Roi(RoiConfig(polygons={"sq": SQUARE}), ModuleContext("roi", emit=events.append))
    roi.setup()
    assert at(roi, 0, track(1, [40.0, 40.0, 60.0, 60.0]))["sq"]["inside"] == [1]
    assert at(roi, 10)["sq"]["inside"] == [1]  # missing 1.0 s
    assert at(roi, 11)["sq"]["inside"] == []
    assert [e["event"] for e in events] == ["enter", "exit"]
