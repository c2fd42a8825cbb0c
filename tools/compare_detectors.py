#!/usr/bin/env python3
"""Compare the bundled detectors on modules/assets/vtest.mp4: speed and person-box agreement.

Runs the CenterNet (`centernet_mnv3_coco.onnx`, rows [x1, y1, x2, y2, score, class], stretch
to 512x512 RGB), YOLOX-Nano (`yolox_nano_coco.onnx`, YOLOX grid rows, letterbox 416 BGR) and,
when `tools/convert_coco_ssd.py` has built it, the SSDLite MobileNetV2
(`out/models/ssdlite_mobilenet_v2_coco.onnx`, TF-OD outputs, stretch to 300x300 RGB) with
onnxruntime's CPU provider, each with its own reference pre-processing and decoding (written
here, standalone, so this check does not depend on the product's format code), then the same
post-processing for all: person class, score threshold, class-wise NMS and the
"contained box" filter with the detector module's defaults (0.4, IoU 0.5, 0.8).

Prints, for each thread count: ms per frame (median, p90) for pre-processing + inference +
decoding, and inference alone; then, per model, persons per frame; then agreement: person boxes
matched one to one with the CenterNet's at IoU >= 0.5 (greedy, best IoU first); then recall and
precision against the persons of bench/detector/data/vtest_persons.json (8 frames checked by
eye), scored by the bench's own matcher (`edgeva.bench.detector.truth`, as `edgeva bench
detector` does with the product's detector module).

    .venv/bin/python tools/compare_detectors.py                   # all 795 frames, 1 and 2 threads
    taskset -c 1 .venv/bin/python tools/compare_detectors.py --threads 1 --every 5

Under `taskset -c 1` (one core) a 2-thread session only time-slices that core: its figure is
not a 2-core figure. Thread counts are onnxruntime's intra-op threads (inter-op 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_yolox_nano import decode as yolox_decode  # noqa: E402
from convert_yolox_nano import letterbox  # noqa: E402

from edgeva.bench.detector.truth import TRUTH_FILE, load_truth, match, score_frame  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "modules" / "assets"


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class CenterNet:
    name = "centernet"

    def __init__(self, threads: int):
        self.sess = session(ASSETS / "centernet_mnv3_coco.onnx", threads)

    def pre(self, bgr):
        x = cv2.cvtColor(cv2.resize(bgr, (512, 512), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        h, w = bgr.shape[:2]
        return x.astype(np.float32)[None], (w / 512, h / 512)

    def infer(self, x):
        return self.sess.run(["tower_0/detections"], {"tower_0/images:0": x})[0]

    def post(self, out, ctx, thr):
        r = out[0].copy()
        r = r[r[:, 4] >= thr]
        r[:, 0:4] *= np.array([ctx[0], ctx[1], ctx[0], ctx[1]], np.float32)
        return r


class YoloxNano:
    name = "yolox-nano"

    def __init__(self, threads: int):
        self.sess = session(ASSETS / "yolox_nano_coco.onnx", threads)

    def pre(self, bgr):
        return letterbox(bgr, 416)

    def infer(self, x):
        return self.sess.run(["output"], {"images": x})[0]

    def post(self, out, ctx, thr):
        return yolox_decode(out, ctx, 416, score_thr=thr, nms_iou=0.45)  # as YOLOX's ONNX demo


class SsdliteMobilenetV2:
    """TF-OD SSD outputs (boxes ymin, xmin, ymax, xmax 0..1; classes COCO-80 from 0; scores; num)."""

    name = "ssdlite"
    path = REPO / "out" / "models" / "ssdlite_mobilenet_v2_coco.onnx"  # tools/convert_coco_ssd.py
    outs = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]

    def __init__(self, threads: int):
        self.sess = session(self.path, threads)

    def pre(self, bgr):
        x = cv2.cvtColor(cv2.resize(bgr, (300, 300), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        return x.astype(np.float32)[None], bgr.shape[:2]

    def infer(self, x):
        return self.sess.run(self.outs, {"image": x})

    def post(self, out, ctx, thr):
        boxes, classes, scores, num = out
        n = int(num[0])
        h, w = ctx
        b = boxes[0, :n] * np.array([h, w, h, w], np.float32)
        r = np.column_stack([b[:, 1], b[:, 0], b[:, 3], b[:, 2], scores[0, :n], classes[0, :n]])
        return r[r[:, 4] >= thr].astype(np.float32)



def persons(rows: np.ndarray, w: int, h: int, thr: float, nms_iou=0.5, contain=0.8) -> np.ndarray:
    """The detector module's post-processing (its defaults), persons only."""
    r = rows[(rows[:, 4] >= thr) & (rows[:, 5] == 0)].copy()
    np.clip(r[:, 0:4:2], 0, w - 1, out=r[:, 0:4:2])
    np.clip(r[:, 1:4:2], 0, h - 1, out=r[:, 1:4:2])
    r = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
    if len(r) > 1:
        keep = cv2.dnn.NMSBoxes(np.column_stack([r[:, :2], r[:, 2:4] - r[:, :2]]).tolist(),
                                r[:, 4].tolist(), thr, nms_iou)
        r = r[np.asarray(keep, np.int64).ravel()]
    r = r[np.argsort(-r[:, 4], kind="stable")]
    if len(r) > 1:  # drop a box lying mostly inside a better one
        x1 = np.maximum(r[:, None, 0], r[None, :, 0])
        y1 = np.maximum(r[:, None, 1], r[None, :, 1])
        x2 = np.minimum(r[:, None, 2], r[None, :, 2])
        y2 = np.minimum(r[:, None, 3], r[None, :, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        frac = inter / ((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1]))[:, None]
        keep = [i for i in range(len(r)) if not any(frac[i, j] > contain for j in range(i))]
        r = r[keep]
    return r



def score_against(truth_path: Path, dets: list, thresholds: list[float]) -> None:
    """Recall and precision of persons on the hand-checked frames (the bench's
    bench/detector/data/vtest_persons.json): one to one at IoU >= 0.5; an unmatched detection
    overlapping an 'ignore' box (IoU >= 0.3) counts neither way (edgeva.bench.detector.truth)."""
    truth = load_truth(truth_path)
    cap = cv2.VideoCapture(str(ASSETS / "vtest.mp4"))
    frames = {}
    for key in truth.indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, key)
        ok, f = cap.read()
        assert ok, key
        frames[key] = f
    print(f"against hand-checked persons ({len(frames)} frames, {truth.n_persons} persons, IoU >= 0.5):")
    for d in dets:
        raw = {k: d.post(d.infer(d.pre(f)[0]), d.pre(f)[1], min(thresholds)) for k, f in frames.items()}
        line = []
        for thr in thresholds:
            tp = fp = 0
            for k, f in frames.items():
                s = score_frame(persons(raw[k], f.shape[1], f.shape[0], thr), truth.frames[str(k)])
                tp, fp = tp + s.hits, fp + s.false
            line.append(f"score {thr}: recall {tp / truth.n_persons:.3f} precision {tp / max(tp + fp, 1):.3f} "
                        f"({tp} hits, {fp} false)")
        print(f"  {d.name:11s} " + " | ".join(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    ap.add_argument("--every", type=int, default=1, help="use every n-th frame of the clip")
    ap.add_argument("--score", type=float, default=0.4, help="score threshold for both models")
    ap.add_argument("--yolox-score", type=float, default=None, help="YOLOX's own threshold (default --score)")
    ap.add_argument("--show", default="0,200,400,600", help="frames whose person boxes are printed")
    ap.add_argument("--truth", type=Path, default=TRUTH_FILE,
                    help="hand-checked persons of some frames (recall and precision); '' to skip")
    ap.add_argument("--truth-only", action="store_true", help="only the recall/precision check")
    args = ap.parse_args()
    ythr = args.yolox_score if args.yolox_score is not None else args.score
    models = [CenterNet(1), YoloxNano(1)] + ([SsdliteMobilenetV2(1)] if SsdliteMobilenetV2.path.exists() else [])
    if args.truth_only:
        score_against(args.truth, models, [0.3, 0.4, 0.5, 0.6])
        return
    cap = cv2.VideoCapture(str(ASSETS / "vtest.mp4"))
    frames, idx = [], 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if idx % args.every == 0:
            frames.append((idx, f))
        idx += 1
    print(f"vtest.mp4: {idx} frames, using {len(frames)}; onnxruntime {ort.__version__}, "
          f"CPU affinity {sorted(__import__('os').sched_getaffinity(0))}")
    results: dict[str, list[np.ndarray]] = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        # Both models in one loop, alternating which goes first on each frame, so that a load
        # from other processes on the same core hits both alike; CPU time (all threads of this
        # process) is printed beside wall time because it barely moves with such a load.
        dets = [(CenterNet(threads), args.score), (YoloxNano(threads), ythr)]
        if SsdliteMobilenetV2.path.exists():
            dets.append((SsdliteMobilenetV2(threads), args.score))
        stats = {d.name: {"total": [], "model": [], "cpu": [], "found": []} for d, _ in dets}
        for d, _ in dets:
            x, _ctx = d.pre(frames[0][1])
            for _ in range(3):
                d.infer(x)  # warm-up
        ratios: dict[str, list[float]] = {d.name: [] for d, _ in dets[1:]}
        for k, (_, bgr) in enumerate(frames):
            walls = {}
            for d, thr in (dets if k % 2 == 0 else dets[::-1]):  # alternate the order
                c0, t0 = time.process_time(), time.perf_counter()
                x, ctx = d.pre(bgr)
                t1 = time.perf_counter()
                out = d.infer(x)
                t2 = time.perf_counter()
                p = persons(d.post(out, ctx, thr), bgr.shape[1], bgr.shape[0], thr)
                t3, c3 = time.perf_counter(), time.process_time()
                s = stats[d.name]
                s["total"].append((t3 - t0) * 1e3)
                s["model"].append((t2 - t1) * 1e3)
                s["cpu"].append((c3 - c0) * 1e3)
                s["found"].append(p)
                walls[d.name] = t3 - t0
            for name in ratios:
                ratios[name].append(walls["centernet"] / walls[name])
        for d, _ in dets:
            s = stats[d.name]
            results[d.name] = s["found"]
            print(f"{d.name:11s} threads={threads}: wall per frame (pre + inference + decode) median "
                  f"{np.median(s['total']):6.1f} ms p90 {np.percentile(s['total'], 90):6.1f} | inference "
                  f"median {np.median(s['model']):6.1f} ms | CPU time median {np.median(s['cpu']):6.1f} ms")
        for name, r in ratios.items():
            print(f"threads={threads}: CenterNet / {name} wall time per frame, median of per-frame "
                  f"ratios {np.median(r):.2f} (p10 {np.percentile(r, 10):.2f}, p90 {np.percentile(r, 90):.2f})")
    cn = results["centernet"]
    for name, found in results.items():
        n = np.array([len(p) for p in found])
        thr = ythr if name == "yolox-nano" else args.score
        print(f"{name:11s} persons >= {thr}: per frame min {n.min()} median {np.median(n):.0f} "
              f"mean {n.mean():.2f} max {n.max()}, total {n.sum()}")
    for name, found in results.items():
        if name == "centernet":
            continue
        matched, ious = 0, []
        for a, b in zip(cn, found, strict=True):
            pairs = match(a, b)
            matched += len(pairs)
            ious += [p[2] for p in pairs]
        ncn, nb = sum(map(len, cn)), sum(map(len, found))
        print(f"agreement centernet vs {name} (IoU >= 0.5, one to one): {matched} pairs; "
              f"{matched / max(ncn, 1):.1%} of CenterNet's {ncn} boxes, {matched / max(nb, 1):.1%} of "
              f"{name}'s {nb}; mean IoU of pairs {np.mean(ious) if ious else 0:.3f}")
    show = {int(s) for s in args.show.split(",") if s}
    fmt = lambda p: [[*map(round, r[:4].tolist()), round(float(r[4]), 2)] for r in p]  # noqa: E731
    for k, (i, _) in enumerate(frames):
        if i in show:
            for name, found in results.items():
                extra = "" if name == "centernet" else \
                    f"; IoUs of pairs with centernet {[round(p[2], 2) for p in match(cn[k], found[k])]}"
                print(f"frame {i}: {name:11s} {len(found[k])} {fmt(found[k])}{extra}")
    if str(args.truth) and args.truth.is_file():
        score_against(args.truth, models, [0.3, 0.4, 0.5, 0.6])

if __name__ == "__main__":
    main()
