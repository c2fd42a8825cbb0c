"""tracker, exactly (issue 25: ``make mutants`` on modules/tracker.py): each algorithm gets its
motrackers tracker with the configured knobs, a box comes back as it went in, the score and class
filters' edges, predicted frames move boxes at exactly the measured velocity, the frame is
forwarded only when asked, live updates reach the running tracker. Hand-placed boxes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pydantic import ValidationError

from edgeva.modules.base import ModuleContext, ModuleError
from edgeva.modules.tracker import Tracker, TrackerConfig
from edgeva.schemas.message import Message

ALGORITHMS = ["centroid", "centroid_kf", "sort", "iou"]


def make(**kw) -> Tracker:
    t = Tracker(TrackerConfig(**kw), ModuleContext("trk"))
    t.setup()
    return t


def step(t: Tracker, k: int, dets: list[list[float]], **fields) -> list[dict]:
    return t.process(Message(k, "cam", fields={"detections": dets, **fields})).fields["tracks"]


def test_each_algorithm_gets_its_tracker_and_its_knobs() -> None:
    impl = make(algorithm="centroid", max_lost=7)._impl
    assert type(impl).__name__ == "Tracker" and impl.max_lost == 7
    impl = make(algorithm="centroid_kf", max_lost=6, centroid_distance_threshold=12.5,
                process_noise_scale=2.0, measurement_noise_scale=3.0)._impl
    assert type(impl).__name__ == "CentroidKF_Tracker"
    assert (impl.max_lost, impl.centroid_distance_threshold, impl.process_noise_scale,
            impl.measurement_noise_scale) == (6, 12.5, 2.0, 3.0)
    impl = make(algorithm="sort", max_lost=5, iou_threshold=0.35, process_noise_scale=4.0,
                measurement_noise_scale=5.0)._impl
    assert type(impl).__name__ == "SORT"
    assert (impl.max_lost, impl.iou_threshold, impl.process_noise_scale, impl.measurement_noise_scale) == \
        (5, 0.35, 4.0, 5.0)
    impl = make(algorithm="iou", max_lost=4, iou_threshold=0.45)._impl
    assert type(impl).__name__ == "IOUTracker" and (impl.max_lost, impl.iou_threshold) == (4, 0.45)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_box_comes_back_as_it_went_in(algorithm: str) -> None:
    t = make(algorithm=algorithm)
    tracks = step(t, 0, [[10.0, 20.0, 40.0, 80.0, 0.9, 3], [200.0, 100.0, 260.0, 140.0, 0.8, 1]])
    assert sorted(tracks, key=lambda x: x["box"]) == [
        {"id": tracks[0]["id"] if tracks[0]["box"][0] == 10.0 else tracks[1]["id"],
         "box": [10.0, 20.0, 40.0, 80.0], "class_id": 3, "score": 0.9},
        {"id": tracks[1]["id"] if tracks[0]["box"][0] == 10.0 else tracks[0]["id"],
         "box": [200.0, 100.0, 260.0, 140.0], "class_id": 1, "score": 0.8},
    ]
    assert sorted(x["id"] for x in tracks) == [0, 1]
    assert all(type(v) is float for x in tracks for v in x["box"])


def test_the_score_and_class_filters_keep_their_edges() -> None:
    t = make(algorithm="iou", min_score=0.5, classes=[0, 2])
    dets = [[0.0, 0.0, 10.0, 10.0, 0.5, 0],  # exactly min_score: kept
            [100.0, 0.0, 110.0, 10.0, 0.49, 0],  # below
            [200.0, 0.0, 210.0, 10.0, 0.9, 1],  # class not wanted
            [300.0, 0.0, 310.0, 10.0, 0.9, 2]]
    assert sorted((x["box"][0], x["class_id"]) for x in step(t, 0, dets)) == [(0.0, 0), (300.0, 2)]
    assert [x["class_id"] for x in step(make(algorithm="iou"), 0, dets)] == [0, 0, 1, 2]


def test_no_detections_field_is_an_error_and_an_empty_list_ages_tracks() -> None:
    t = make(algorithm="iou", max_lost=1)
    with pytest.raises(ValueError, match=r"no fields\['detections'\]"):
        t.process(Message(0, "cam", fields={}))
    box = [[0.0, 0.0, 10.0, 10.0, 0.9, 0]]
    assert [x["id"] for x in step(t, 0, box)] == [0]
    assert step(t, 1, []) == []  # lost once: kept but not listed
    assert len(t._impl.tracks) == 1
    step(t, 2, [])  # lost twice: dropped
    assert [x["id"] for x in step(t, 3, box)] == [1]  # a new id, never reused


def test_include_lost_lists_the_unmatched_track_at_its_last_box() -> None:
    t = make(algorithm="iou", max_lost=2, include_lost=True)
    step(t, 0, [[0.0, 0.0, 10.0, 10.0, 0.9, 0]])
    assert [(x["id"], x["box"]) for x in step(t, 1, [])] == [(0, [0.0, 0.0, 10.0, 10.0])]


def test_predicted_frames_move_boxes_at_the_last_velocity() -> None:
    t = make(algorithm="iou", iou_threshold=0.1)
    first = step(t, 10, [[0.0, 0.0, 20.0, 20.0, 0.9, 0]])
    # one detection so far: no velocity, the box stays
    assert step(t, 11, [], predicted=True) == [{**first[0], "predicted": True}]
    step(t, 12, [[4.0, 2.0, 24.0, 22.0, 0.9, 0]])  # +2 px x, +1 px y per frame
    assert [x["box"] for x in step(t, 13, [], predicted=True)] == [[6.0, 3.0, 26.0, 23.0]]
    assert [x["box"] for x in step(t, 15, [], predicted=True)] == [[10.0, 5.0, 30.0, 25.0]]
    # predicted frames do not age tracks: the next detection keeps the id
    assert [x["id"] for x in step(t, 16, [[12.0, 6.0, 32.0, 26.0, 0.9, 0]])] == [first[0]["id"]]


@pytest.mark.parametrize("predicted", [False, True])
def test_the_frame_is_forwarded_only_when_asked(predicted: bool) -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    for forward in (True, False):
        t = make(algorithm="iou", forward_frame=forward)
        msg = Message(0, "cam", fields={"detections": [], "predicted": predicted}, arrays={"frame": frame})
        out = t.process(msg)
        assert ("frame" in out.arrays) is forward
        if forward:
            assert out.arrays["frame"] is frame
        assert t.process(Message(1, "cam", fields={"detections": [], "predicted": predicted})).arrays == {}


def test_live_updates_reach_the_running_tracker_and_others_need_a_restart() -> None:
    t = make(algorithm="sort", max_lost=3, iou_threshold=0.3)
    impl = t._impl
    step(t, 0, [[0.0, 0.0, 10.0, 10.0, 0.9, 0]])
    new = TrackerConfig(algorithm="sort", max_lost=9, iou_threshold=0.25, min_score=0.1, include_lost=True)
    assert t.update(new) is True and t.config is new and t._impl is impl
    assert (impl.max_lost, impl.iou_threshold) == (9, 0.25)
    assert t.update(TrackerConfig(algorithm="sort", max_lost=9, iou_threshold=0.25, min_score=0.1,
                                  include_lost=True, process_noise_scale=2.0)) is False
    assert t.config is new
    assert t.update(TrackerConfig(algorithm="iou", max_lost=9, iou_threshold=0.25)) is False
    kf = make(algorithm="centroid_kf")
    assert kf.update(TrackerConfig(algorithm="centroid_kf", centroid_distance_threshold=50.0)) is True
    assert kf._impl.centroid_distance_threshold == 50.0


def test_knobs_another_algorithm_reads_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"algorithm 'centroid' does not use \['iou_threshold'\]"):
        TrackerConfig(algorithm="centroid", iou_threshold=0.3)
    with pytest.raises(ValidationError, match=r"'iou' does not use \['centroid_distance_threshold'"):
        TrackerConfig(algorithm="iou", centroid_distance_threshold=10.0, process_noise_scale=2.0)
    TrackerConfig(algorithm="sort", iou_threshold=0.3, process_noise_scale=2.0)


def _gone(n: int) -> Tracker:
    """A tracker that saw ``n`` tracks at frame 50, none of them since (max_lost 0: dropped)."""
    t = make(algorithm="iou", max_lost=0)
    step(t, 50, [[i * 20.0, 0.0, i * 20.0 + 10.0, 10.0, 0.9, 0] for i in range(n)])
    assert len(t._seen) == n
    return t


ONE = [[0.0, 500.0, 10.0, 510.0, 0.9, 0]]


def test_memory_of_gone_tracks_is_bounded() -> None:
    # what is remembered of tracks gone is forgotten once it outnumbers 4 per listed track + 64,
    # then only what was seen within the last 100 frames is kept
    t = _gone(67)
    step(t, 151, ONE)
    assert len(t._seen) == 68  # 68 = 4 * 1 + 64: not more, kept
    t = _gone(68)
    step(t, 150, ONE)
    assert len(t._seen) == 69  # more, but all seen within 100 frames
    step(t, 151, ONE)
    assert len(t._seen) == 1  # now 101 frames ago: forgotten


def test_without_motrackers_the_module_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "motrackers", None)  # import motrackers raises ImportError
    t = Tracker(TrackerConfig(), ModuleContext("trk"))
    with pytest.raises(ModuleError, match="tracker needs the motrackers package"):
        t.setup()
