"""The synthetic scene is the ground truth of the tracker and RoI tests: check it is one."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgeva.modules.scene import SyntheticScene, point_in_polygon


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(seed=0, n_objects=12)


def _digest(scene: SyntheticScene, frames) -> str:
    out = np.empty((scene.height, scene.width, 3), np.uint8)
    h = hashlib.sha256()
    for i in frames:
        scene.render_into(i, out)
        h.update(out.tobytes())
    return h.hexdigest()


def test_deterministic_per_seed():
    a, b, c = SyntheticScene(seed=3), SyntheticScene(seed=3), SyntheticScene(seed=4)
    frames = range(0, 300, 37)
    assert _digest(a, frames) == _digest(b, frames)
    assert _digest(a, frames) != _digest(c, frames)
    assert [a.ground_truth(i) for i in frames] == [b.ground_truth(i) for i in frames]


def test_render_into_writes_in_place_and_matches_ground_truth(scene):
    out = np.zeros((scene.height, scene.width, 3), np.uint8)
    ptr = out.__array_interface__["data"][0]
    checked = 0
    for i in range(0, scene.n_frames, 10):
        gts = scene.render_into(i, out)
        assert out.__array_interface__["data"][0] == ptr
        assert [g.as_dict() for g in gts] == scene.ground_truth(i)
        # The top-most figure (highest id) is unoccluded: the centre of its box has its colour.
        if gts:
            top = gts[-1]
            fig = scene.figures[top.id]
            x1, y1, x2, y2 = top.box
            assert tuple(out[(y1 + y2) // 2, (x1 + x2) // 2]) == fig.color
            checked += 1
    assert checked > 10
    with pytest.raises(ValueError):
        scene.render_into(0, np.zeros((10, 10, 3), np.uint8))


def test_figures_enter_leave_and_cross(scene):
    appear: dict[int, list[int]] = {}
    crossings = 0
    for i in range(scene.n_frames):
        gts = scene.ground_truth(i)
        for g in gts:
            x1, y1, x2, y2 = g["box"]
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            appear.setdefault(g["id"], []).append(i)
        boxes = np.array([g["box"] for g in gts]).reshape(-1, 4)
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                if min(boxes[a, 2], boxes[b, 2]) > max(boxes[a, 0], boxes[b, 0]) and min(
                    boxes[a, 3], boxes[b, 3]
                ) > max(boxes[a, 1], boxes[b, 1]):
                    crossings += 1
    # Each figure is visible over one contiguous run of frames: it never comes back.
    for frames in appear.values():
        assert frames == list(range(frames[0], frames[-1] + 1))
    assert len(appear) >= 10
    # Figures overlap each other in some frames: the trackers' hard case is present.
    assert crossings >= 10
    # Person-like boxes, distinct colours.
    assert all(f.height > 1.8 * f.width for f in scene.figures)
    assert len({f.color for f in scene.figures}) == len(scene.figures)


def test_point_in_polygon_edges_inside():
    sq = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert point_in_polygon(5, 5, sq)
    assert point_in_polygon(10, 5, sq) and point_in_polygon(0, 0, sq)
    assert not point_in_polygon(10.5, 5, sq)
    tri = [(0, 0), (10, 0), (0, 10)]
    assert point_in_polygon(5, 5, tri) and not point_in_polygon(5.5, 5, tri)


def test_count_entries_whole_frame_is_one_entry_per_figure(scene):
    whole = [(0, 0), (scene.width, 0), (scene.width, scene.height), (0, scene.height)]
    visible = {g["id"] for i in range(scene.n_frames) for g in scene.ground_truth(i)}
    assert scene.count_entries(whole, range(scene.n_frames)) == len(visible)
    # Dwell: a visit shorter than min_dwell_s does not count; nothing lasts 1000 s.
    assert scene.count_entries(whole, range(scene.n_frames), min_dwell_s=1000) == 0
    empty_corner = [(0, 0), (1, 0), (0, 1)]
    assert scene.count_entries(empty_corner, range(scene.n_frames)) == 0
