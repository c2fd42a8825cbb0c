#!/usr/bin/env python3
"""Build ``tests/data/reid/``: a small labelled person re-identification set cut from the
bundled clip ``modules/assets/vtest.mp4``.

What it does (deterministic; about a minute on the 2-core dev machine):
  1. runs the bundled detector ``centernet_mnv3_coco.onnx`` through onnxruntime directly on
     every frame (RGB 512x512 stretch, as the assets README says), keeps persons at
     score >= 0.45 after NMS (IoU 0.5);
  2. links boxes into tracks by greedy IoU (>= 0.3) between consecutive frames; a track ends
     at its first missed frame, so a track switch needs two people to swap boxes in one frame;
  3. picks the target: the track ``--track`` (default: the one with the most frames whose box
     is tall and unoccluded), its tallest unoccluded box becomes ``template.png``;
  4. ``same``: ``--n-same`` boxes of that track, spread over its life, at least ``--gap``
     frames from the template, plus ``--per-track`` boxes of each of ``--same-tracks`` (other
     visits of the same person, found by eye: this is what makes it re-identification rather
     than tracking); ``other``: ``--n-other`` boxes of other tracks, at most
     ``--per-track`` per track, spread over the clip. Boxes overlapping another person
     (IoU > 0.05) or smaller than ``--min-h`` pixels are never used: their crop shows two people;
  5. writes raw box crops (no resize, no margin: what a module cuts from a frame) as PNG,
     ``labels.json`` (frame numbers, boxes, scores, track ids, label) and ``sheet.jpg``,
     a contact sheet for checking the labels by eye.

The tracker can still be wrong (a person leaving and re-entering gets a new track, so could
show up as ``other``): look at ``sheet.jpg`` and list wrong crops with ``--exclude FRAME:TRACK``.
The shipped set was checked that way (see ``tests/data/reid/README.md``).

Usage:
    .venv/bin/python tools/build_reid_set.py              # -> tests/data/reid/
    .venv/bin/python tools/build_reid_set.py --list-tracks
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "modules" / "assets" / "vtest.mp4"
DETECTOR = REPO / "modules" / "assets" / "centernet_mnv3_coco.onnx"
OUT = REPO / "tests" / "data" / "reid"
SCORE, NMS_IOU, LINK_IOU, OCCLUDED_IOU = 0.45, 0.5, 0.3, 0.05


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) against boxes ``b`` (N, 4)."""
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def detect_all(max_frames: int | None) -> list[np.ndarray]:
    """Person boxes per frame: (N, 5) x1, y1, x2, y2, score in frame pixels, integer-rounded."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(DETECTOR), opts, providers=["CPUExecutionProvider"])
    cap = cv2.VideoCapture(str(CLIP))
    out: list[np.ndarray] = []
    while max_frames is None or len(out) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        x = cv2.cvtColor(cv2.resize(frame, (512, 512)), cv2.COLOR_BGR2RGB).astype(np.float32)
        det = sess.run(None, {"tower_0/images:0": x[None]})[0][0]
        det = det[(det[:, 5] == 0) & (det[:, 4] >= SCORE)]
        det[:, :4] = np.clip(det[:, :4], 0, 512) * [w / 512, h / 512, w / 512, h / 512]
        keep: list[np.ndarray] = []
        for d in det:  # rows come sorted by score: greedy NMS
            if not keep or iou(d[:4], np.array(keep)[:, :4]).max() < NMS_IOU:
                keep.append(d[:5])
        boxes = np.array(keep, dtype=np.float64).reshape(-1, 5)
        boxes[:, :4] = np.round(boxes[:, :4])
        out.append(boxes)
    cap.release()
    return out


def link(dets: list[np.ndarray]) -> list[np.ndarray]:
    """Track id per box per frame, by greedy IoU with the previous frame's boxes."""
    ids: list[np.ndarray] = []
    next_id = 0
    for f, boxes in enumerate(dets):
        cur = np.full(len(boxes), -1)
        if f and len(boxes) and len(dets[f - 1]):
            prev = dets[f - 1]
            pairs = sorted(
                ((iou(b[:4], prev[:, :4])[j], i, j) for i, b in enumerate(boxes) for j in range(len(prev))),
                reverse=True,
            )
            used_i, used_j = set(), set()
            for v, i, j in pairs:
                if v < LINK_IOU:
                    break
                if i not in used_i and j not in used_j:
                    cur[i] = ids[f - 1][j]
                    used_i.add(i)
                    used_j.add(j)
        for i in np.flatnonzero(cur < 0):
            cur[i] = next_id
            next_id += 1
        ids.append(cur)
    return ids


def usable(dets: list[np.ndarray], min_h: int) -> list[tuple[int, int, int]]:
    """(frame, index, track) of boxes tall enough and not overlapping another person."""
    out = []
    for f, boxes in enumerate(dets):
        for i, b in enumerate(boxes):
            others = np.delete(boxes, i, axis=0)
            if b[3] - b[1] < min_h or (len(others) and iou(b[:4], others[:, :4]).max() > OCCLUDED_IOU):
                continue
            out.append((f, i))
    return out


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (all of them if fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[int(round(k))] for k in np.linspace(0, len(items) - 1, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--track", type=int, default=None, help="target track id (default: longest)")
    ap.add_argument("--template-frame", type=int, default=None)
    ap.add_argument("--n-same", type=int, default=16)
    ap.add_argument("--n-other", type=int, default=32)
    ap.add_argument("--per-track", type=int, default=2)
    ap.add_argument("--gap", type=int, default=8, help="min frames between template and a same crop")
    ap.add_argument("--min-h", type=int, default=70)
    ap.add_argument(
        "--same-tracks", type=int, nargs="*", default=[],
        help="other tracks that are the target person (seen by eye): up to --per-track crops each go to same",
    )
    ap.add_argument("--drop-tracks", type=int, nargs="*", default=[], help="tracks never used (ambiguous)")
    ap.add_argument("--exclude", nargs="*", default=[], help="FRAME:TRACK pairs to leave out")
    ap.add_argument("--list-tracks", action="store_true")
    ap.add_argument("--cache", type=Path, default=None, help="reuse detections saved here (.npz)")
    a = ap.parse_args()

    if a.cache and a.cache.exists():
        with np.load(a.cache) as z:
            dets = [z[k] for k in sorted(z.files, key=int)]
    else:
        dets = detect_all(a.max_frames)
        if a.cache:
            np.savez(a.cache, **{str(f): d for f, d in enumerate(dets)})
    ids = link(dets)
    excluded = {tuple(int(v) for v in s.split(":")) for s in a.exclude}
    good = [(f, i, int(ids[f][i])) for f, i in usable(dets, a.min_h) if (f, int(ids[f][i])) not in excluded]
    by_track: dict[int, list[tuple[int, int, int]]] = {}
    for g in good:
        by_track.setdefault(g[2], []).append(g)
    if a.list_tracks:
        for t, gs in sorted(by_track.items(), key=lambda kv: -len(kv[1]))[:25]:
            print(f"track {t}: {len(gs)} usable boxes, frames {gs[0][0]}-{gs[-1][0]}")
        return
    target = a.track if a.track is not None else max(by_track, key=lambda t: len(by_track[t]))
    mine = by_track[target]
    height = lambda g: dets[g[0]][g[1]][3] - dets[g[0]][g[1]][1]  # noqa: E731
    tmpl = next(g for g in mine if g[0] == a.template_frame) if a.template_frame is not None else max(mine, key=height)
    same = spread([g for g in mine if abs(g[0] - tmpl[0]) >= a.gap], a.n_same)
    same += [g for t in a.same_tracks for g in spread(by_track.get(t, []), a.per_track)]
    skip = {target, *a.same_tracks, *a.drop_tracks}
    other_pool = [spread(gs, a.per_track) for t, gs in sorted(by_track.items()) if t not in skip]
    other = spread(sorted((g for gs in other_pool for g in gs), key=lambda g: g[0]), a.n_other)

    if a.out.exists():
        shutil.rmtree(a.out)
    (a.out / "same").mkdir(parents=True)
    (a.out / "other").mkdir()
    wanted = {g[0] for g in [tmpl, *same, *other]}
    frames: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(CLIP))
    for f in range(max(wanted) + 1):
        ok, frame = cap.read()
        if f in wanted:
            frames[f] = frame
    cap.release()

    def entry(g: tuple[int, int, int], label: str, path: str) -> dict:
        f, i, t = g
        x1, y1, x2, y2, s = dets[f][i]
        cv2.imwrite(str(a.out / path), frames[f][int(y1) : int(y2), int(x1) : int(x2)])
        box = [int(x1), int(y1), int(x2), int(y2)]
        return {"file": path, "label": label, "frame": f, "box": box, "score": round(float(s), 3), "track": t}

    labels = {
        "clip": "modules/assets/vtest.mp4",
        "detector": "modules/assets/centernet_mnv3_coco.onnx",
        "params": {k: v for k, v in vars(a).items() if k not in ("out", "list_tracks", "cache")},
        "template": entry(tmpl, "template", "template.png"),
        "crops": [entry(g, "same", f"same/f{g[0]:03d}.png") for g in same]
        + [entry(g, "other", f"other/f{g[0]:03d}_t{g[2]}.png") for g in other],
    }
    (a.out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    sheet(a.out, labels)
    print(f"target track {target}, template frame {tmpl[0]}; {len(same)} same, {len(other)} other -> {a.out}")


def sheet(out: Path, labels: dict) -> None:
    """Contact sheet: template, then same (green) and other (red) crops at 64x128."""
    items = [labels["template"], *labels["crops"]]
    cols = 12
    rows = (len(items) + cols - 1) // cols
    canvas = np.full((rows * 146, cols * 68, 3), 255, np.uint8)
    for k, it in enumerate(items):
        img = cv2.resize(cv2.imread(str(out / it["file"])), (64, 128))
        r, c = divmod(k, cols)
        colour = {"template": (255, 0, 0), "same": (0, 160, 0), "other": (0, 0, 255)}[it["label"]]
        y, x = r * 146, c * 68
        canvas[y : y + 132, x : x + 68] = colour
        canvas[y + 2 : y + 130, x + 2 : x + 66] = img
        cv2.putText(canvas, str(it["frame"]), (x + 2, y + 143), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.imwrite(str(out / "sheet.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])


if __name__ == "__main__":
    main()
