#!/usr/bin/env python3
"""Build an int8 CenterNet MobileNetV3 (onnxruntime static quantisation of the bundled detector)
and measure whether it finds what the fp32 model finds, and how fast it is.

NOT BUNDLED: no variant tried passed the bar (boxes of fp32 matched at IoU >= 0.5, recall and
precision both >= 0.95 at the same score threshold) while also being faster; figures in
tools/README.md. The script stays so the experiment can be repeated (another onnxruntime, an
ARM board) and any result timed with ``edgeva bench detector --onnx-model PATH``.

Input: ``modules/assets/centernet_mnv3_coco.onnx`` (made by ``tools/convert_centernet.py``, MIT,
see modules/assets/README.md). Calibration data: frames of ``modules/assets/vtest.mp4`` (the
clip the project ships), preprocessed exactly as the detector module does (512x512 linear
resize, BGR -> RGB, float32 0..255).

What this script does (all under /tmp: nothing is written into the repo):
  1. creates a throwaway venv (default /tmp/edgeva_quant_venv) with onnxruntime, onnx and
     opencv-python (<5), and re-runs itself in it;
  2. ``quant_pre_process`` (shape inference + graph optimisation) of the fp32 model;
  3. ``quantize_static``: QDQ format, int8 weights (per channel by default), uint8
     activations, calibrated (MinMax by default) on every ``--every``-th frame of the clip;
     only the convolutions are quantised (``--ops``): the model's own decoding at the end
     (heat-map peak picking, TopK, box gathering) stays float, so scores and coordinates are
     not rounded to 8 bits;
  4. adds provenance to ``metadata_props`` and prints size and sha256.

Usage:
    python3 tools/quantize_centernet.py                      # build (per channel, QDQ, Conv only)
    python3 tools/quantize_centernet.py --exclude CenternetHead --out /tmp/edgeva_quant/b.onnx
    .venv/bin/python tools/quantize_centernet.py --verify-only [--model PATH] [--every 3]
        agreement with fp32 on the clip, through edgeva's own detector module (threshold,
        class filter, NMS as deployed): boxes matched one-to-one at IoU >= 0.5, recall and
        precision of int8 against fp32, and ms per frame of each (1 and 2 threads).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _toolvenv import bootstrap_and_reexec, in_venv, make_log, sha256

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "modules" / "assets"
FP32 = ASSETS / "centernet_mnv3_coco.onnx"
WORK = Path(os.environ.get("EDGEVA_QUANT_WORK", "/tmp/edgeva_quant"))
OUT_DEFAULT = WORK / "centernet_mnv3_coco_int8.onnx"
CLIP = ASSETS / "vtest.mp4"
VENV = Path(os.environ.get("EDGEVA_QUANT_VENV", "/tmp/edgeva_quant_venv"))
PIP_PINS = ["onnxruntime==1.32.0", "onnx==1.23.2", "opencv-python>=4.8,<5", "numpy"]
SIZE = 512
log = make_log("quantize_centernet")


def clip_frames(every: int, start: int = 0):
    """(index, BGR frame) of every ``every``-th frame of the clip from ``start``."""
    import cv2

    cap = cv2.VideoCapture(str(CLIP))
    if not cap.isOpened():
        sys.exit(f"cannot open {CLIP} (run tools/make_clip.sh first)")
    i = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if i >= start and (i - start) % every == 0:
            yield i, f
        i += 1
    cap.release()


def preprocess(frame):
    """As modules/detector.py: linear resize to 512x512, BGR -> RGB, float32 0..255, NHWC."""
    import cv2
    import numpy as np

    x = cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(x, cv2.COLOR_BGR2RGB).astype(np.float32)[None]


def build(args: argparse.Namespace) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    WORK.mkdir(parents=True, exist_ok=True)
    pre = WORK / "centernet_pre.onnx"
    log("pre-processing", FP32.name, "->", pre)
    quant_pre_process(str(FP32), str(pre), skip_symbolic_shape=True)
    name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    calib = [preprocess(f) for _, f in clip_frames(args.every, start=args.start)]
    log(f"calibrating on {len(calib)} frames (every {args.every}th of {CLIP.name} from {args.start})")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x}

    model = onnx.load(str(pre))
    ops = args.ops.split(",")
    exclude = [n.name for n in model.graph.node if n.name and any(s in n.name for s in args.exclude)] \
        if args.exclude else []
    if exclude:
        log(f"excluding {len(exclude)} node(s) matching {args.exclude}")
    only = [n.name for n in model.graph.node if n.name and any(s in n.name for s in args.only)] \
        if args.only else None
    if only:
        log(f"quantising only {len(only)} node(s) matching {args.only}")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[args.method]
    t0 = time.monotonic()
    quantize_static(
        str(pre), str(args.out), Reader(),
        quant_format=QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=ops, per_channel=not args.per_tensor, nodes_to_exclude=exclude,
        nodes_to_quantize=only,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
        extra_options={"CalibMovingAverage": args.method == "minmax"},
    )
    log(f"quantised in {time.monotonic() - t0:.1f} s")
    q = onnx.load(str(args.out))
    meta = {
        "edgeva.source": f"{FP32.name} (sha256 {sha256(FP32)})",
        "edgeva.quantization": (
            f"onnxruntime {ort.__version__} quantize_static, {args.format.upper()}, ops {ops}, "
            f"{'per-tensor' if args.per_tensor else 'per-channel'} int8 weights, uint8 activations, "
            f"only {args.only or 'all'}, excluding {args.exclude or 'none'}, "
            f"{args.method} calibration on every {args.every}th frame of vtest.mp4 from {args.start}"
        ),
        "edgeva.licence": "MIT (weights of @vladmandic/human 3.3.6, see modules/assets/README.md)",
    }
    for k, v in meta.items():
        p = q.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(q, str(args.out))
    log(f"wrote {args.out}: {args.out.stat().st_size:,} bytes, sha256 {sha256(args.out)}")
    log("check it: .venv/bin/python tools/quantize_centernet.py --verify-only")


def _iou(a, b):
    import numpy as np

    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def match_count(ref, got, iou: float = 0.5) -> int:
    """Boxes of ``got`` matched one-to-one to ``ref`` (greedy, best IoU first, same class)."""
    import numpy as np

    if not len(ref) or not len(got):
        return 0
    m = _iou(np.asarray(ref)[:, :4], np.asarray(got)[:, :4])
    m[np.asarray(ref)[:, 5][:, None] != np.asarray(got)[:, 5][None]] = 0
    n = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(m.argmax(), m.shape)
        m[i, :], m[:, j] = -1, -1
        n += 1
    return n


def verify(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np

    from edgeva.modules.base import ModuleContext
    from edgeva.modules.detector import Detector, DetectorConfig
    from edgeva.schemas.message import Message

    def det(model: Path, threads: int, size) -> Detector:
        cfg = {"model": str(model), "threads": threads}
        if size:
            cfg["input_size"] = size
        d = Detector(DetectorConfig(**cfg), ModuleContext(name="check"))
        d.setup()
        return d

    frames = list(clip_frames(args.every))
    log(f"{len(frames)} frames of {CLIP.name} (every {args.every}th)")
    ref, cand = det(FP32, 2, None), det(args.model, 2, None)
    n_ref = n_got = n_match = 0
    worst = []
    for i, f in frames:
        msg = Message(i, "clip", 0, arrays={"frame": f})
        a = ref.process(msg).fields["detections"]
        b = cand.process(msg).fields["detections"]
        k = match_count(a, b)
        n_ref, n_got, n_match = n_ref + len(a), n_got + len(b), n_match + k
        if k < max(len(a), len(b)):
            worst.append((i, len(a), len(b), k))
    recall, precision = n_match / max(n_ref, 1), n_match / max(n_got, 1)
    log(f"fp32 boxes {n_ref}, {args.model.name} boxes {n_got}, matched at IoU>=0.5: {n_match}")
    log(f"recall {recall:.4f}, precision {precision:.4f} (of {args.model.name} against fp32); "
        f"frames that differ: {len(worst)} of {len(frames)}")
    for path in (FP32, args.model):
        for threads in (1, 2):
            d = det(path, threads, None)
            sub = frames[: min(60, len(frames))]
            for _, f in sub[:5]:
                d.process(Message(0, "clip", 0, arrays={"frame": f}))
            ts = []
            for i, f in sub:
                t0 = time.perf_counter()
                d.process(Message(i, "clip", 0, arrays={"frame": f}))
                ts.append((time.perf_counter() - t0) * 1e3)
            log(f"{path.name}: {threads} thread(s): {np.median(ts):.1f} ms/frame (median of {len(ts)})")
            d.close()
    ok = recall >= 0.95 and precision >= 0.95
    log("KEEP: both >= 0.95" if ok else "REJECT: below 0.95")
    if not ok:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verify-only", action="store_true", help="only measure agreement with fp32")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT, help="where the int8 model goes")
    p.add_argument("--model", type=Path, default=OUT_DEFAULT, help="--verify-only: the model to check")
    p.add_argument("--every", type=int, default=None,
                   help="take every Nth frame (default: 25 to calibrate, 3 to verify)")
    p.add_argument("--start", type=int, default=0, help="first calibration frame")
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default per channel)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--ops", default="Conv", help="op types to quantise, comma-separated (default: Conv)")
    p.add_argument("--exclude", nargs="*", default=[], help="leave nodes whose name contains any of these in float")
    p.add_argument("--only", nargs="*", default=[], help="quantise only nodes whose name contains any of these")
    args = p.parse_args()
    if args.verify_only:
        args.every = args.every or 3
        verify(args)
        return
    args.every = args.every or 25
    if not in_venv(VENV):
        bootstrap_and_reexec(
            VENV, __file__, sys.argv[1:],
            [("import onnxruntime, onnx, cv2", PIP_PINS)], log, "quantisation",
        )
    build(args)


if __name__ == "__main__":
    main()
