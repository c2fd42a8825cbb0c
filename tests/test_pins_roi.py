"""Pins of roi's ``min_dwell_s`` (issue 25): a track is in a region's ``inside`` and ``count``
only once it has been inside that long, like ``entered`` and the enter event; a visit shorter
than that (a box grazing the edge) never appears in any of them."""

from __future__ import annotations

from edgeva.modules.base import ModuleContext
from edgeva.modules.roi import Roi, RoiConfig
from edgeva.schemas.message import Message

SQUARE = {"square": [[0, 0], [100, 0], [100, 100], [0, 100]]}
IN = [40.0, 40.0, 60.0, 60.0]
OUT = [200.0, 200.0, 220.0, 220.0]
STEP = 100_000_000  # 10 fps


def _roi(events: list, **kw) -> Roi:
    roi = Roi(RoiConfig(polygons=SQUARE, exit_timeout_s=10.0, **kw), ModuleContext("roi", emit=events.append))
    roi.setup()
    return roi


def _at(roi: Roi, k: int, *tracks: tuple[int, list[float]]) -> dict:
    msg = Message(k, "cam", ts_ns=k * STEP, fields={"tracks": [
        {"id": tid, "box": box, "class_id": 0, "score": 0.9} for tid, box in tracks]})
    return roi.process(msg).fields["roi"]["square"]


def test_inside_and_count_wait_for_min_dwell() -> None:
    events: list[dict] = []
    roi = _roi(events, min_dwell_s=0.5)
    for k in range(5):  # 0.0 .. 0.4 s inside: not yet
        assert _at(roi, k, (7, IN)) == {"count": 0, "inside": [], "entered": 0}, k
    assert _at(roi, 5, (7, IN)) == {"count": 1, "inside": [7], "entered": 1}  # 0.5 s: counted
    assert [e["event"] for e in events] == ["enter"]


def test_a_visit_shorter_than_min_dwell_is_never_inside() -> None:
    events: list[dict] = []
    roi = _roi(events, min_dwell_s=0.5)
    # track 1 grazes the region for 0.3 s while track 2 stays: only track 2 ever counts
    for k in range(3):
        assert _at(roi, k, (1, IN), (2, IN)) == {"count": 0, "inside": [], "entered": 0}
    for k in range(3, 8):
        r = _at(roi, k, (1, OUT), (2, IN))
        assert r["inside"] == ([2] if k >= 5 else []) and r["count"] == len(r["inside"]), (k, r)
    assert [(e["event"], e["track_id"]) for e in events] == [("enter", 2)]


def test_without_min_dwell_a_track_counts_from_its_first_frame() -> None:
    roi = _roi([], min_dwell_s=0.0)
    assert _at(roi, 0, (3, IN)) == {"count": 1, "inside": [3], "entered": 1}
