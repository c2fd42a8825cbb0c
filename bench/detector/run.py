"""``edgeva bench detector``: how fast each detector backend turns frames into detections.

Each case builds the ``detector`` module exactly as a pipeline does (validated config,
``setup``) and times ``process`` on frames of the bundled clip (``asset:vtest.mp4``, 768x576),
decoded beforehand so that decoding is not measured. A time covers what the pipeline pays
per frame: resize + colour conversion, inference (plus the request round trip for a server),
and post-processing (scaling, threshold, NMS).

Cases: ``onnx`` (bundled CenterNet, onnxruntime), ``onnx:<file>`` for each ``--onnx-model``
given (e.g. an int8 build of ``tools/quantize_centernet.py``) and ``opencv-hog`` with 1 and 2
threads, and,
in a source checkout where ``.venv-mlserver`` exists (``tools/make-mlserver-venv.sh``),
``triton`` against a local MLServer serving the same CenterNet over HTTP (JSON tensors: MLServer
has no binary extension) and gRPC, with 1 and 2 server threads. Cases run one after another in
this process; one that fails is reported and does not stop the others.

``quick`` times 12 frames per case after 2 warm-up frames (~30 s on a busy 2-core machine);
otherwise 60 after 5. Figures from a shared machine: compare ratios, not absolute times.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = ROOT / ".venv-mlserver"
MLSERVER_MODEL = ROOT / "tests" / "servers" / "mlserver_centernet"


@dataclass
class DetectorCase:
    """One row: a backend with a thread count. Times in ms; None where the case failed."""

    backend: str
    threads: int
    frames: int = 0
    ms_p50: float | None = None
    ms_p90: float | None = None
    ms_mean: float | None = None
    fps: float | None = None
    persons_per_frame: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _frames(n: int) -> list[np.ndarray]:
    """n frames spread over the clip (people come and go), decoded up front."""
    import cv2

    from edgeva.modules.decoder import resolve_path

    cap = cv2.VideoCapture(str(resolve_path("asset:vtest.mp4")))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 795
    want = set(np.linspace(0, total - 1, n).astype(int).tolist())
    out = []
    for i in range(total):
        ok, f = cap.read()
        if not ok:
            break
        if i in want:
            out.append(f)
    cap.release()
    return out


def _time_case(case: DetectorCase, args: dict, frames: list[np.ndarray], warm: list[np.ndarray]) -> None:
    from edgeva.modules.base import ModuleContext
    from edgeva.modules.detector import Detector, DetectorConfig
    from edgeva.schemas.message import Message

    det = Detector(DetectorConfig.model_validate({"type": "detector", **args}), ModuleContext("bench"))
    det.setup()
    try:
        for f in warm:  # first calls pay for lazy allocations and thread start-up
            det.process(Message(0, "bench", arrays={"frame": f}))
        times, persons = [], 0
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            out = det.process(Message(i, "bench", arrays={"frame": f}))
            times.append((time.perf_counter() - t0) * 1000)
            persons += sum(1 for d in out.fields["detections"] if d[5] == 0)
    finally:
        det.close()
    case.frames = len(times)
    case.ms_p50 = round(statistics.median(times), 2)
    case.ms_p90 = round(float(np.percentile(times, 90)), 2)
    case.ms_mean = round(statistics.fmean(times), 2)
    case.fps = round(1000 * len(times) / sum(times), 2)
    case.persons_per_frame = round(persons / len(times), 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _mlserver(threads: int) -> Iterator[tuple[str, str]]:
    """A local MLServer with the CenterNet test model; yields (http, grpc) host:port."""
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(http),
            "MLSERVER_GRPC_PORT": str(grpc), "MLSERVER_METRICS_PORT": str(metrics),
            "EDGEVA_TEST_THREADS": str(threads)}
    proc = subprocess.Popen([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(MLSERVER_MODEL)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlserver exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/centernet/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mlserver not ready after 60 s") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def format_table(cases: list[DetectorCase]) -> str:
    head = ("backend", "threads", "frames", "ms p50", "ms p90", "ms mean", "frames/s", "persons/frame")
    rows = [(c.backend, str(c.threads), str(c.frames), *(f"{v:.1f}" for v in
             (c.ms_p50, c.ms_p90, c.ms_mean, c.fps, c.persons_per_frame)))
            if c.ok else (c.backend, str(c.threads), "FAILED", "", "", "", "", "") for c in cases]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()
    out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    out += [f"FAILED {c.backend} threads={c.threads}: {c.error}" for c in cases if not c.ok]
    return "\n".join(out)


def write_plot(path: str | os.PathLike, cases: list[DetectorCase]) -> None:
    """PNG: frames/s and p50 ms per case."""
    import matplotlib

    matplotlib.use("Agg")  # no display; imported lazily so the CLI does not pay for it
    import matplotlib.pyplot as plt

    names = [c.backend.replace("triton-", "triton\n") + f"\n{c.threads} thr" for c in cases]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7.0, 1.1 * len(cases)), 7.5))
    for ax, vals, title, color in (
        (ax1, [c.fps or 0 for c in cases], "frames/s (higher is better)", "#519e3e"),
        (ax2, [c.ms_p50 or 0 for c in cases], "ms per frame, p50 (lower is better)", "#3b75af"),
    ):
        bars = ax.bar(range(len(cases)), vals, color=color)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "failed" for v in vals], fontsize=8)
        ax.set_xticks(range(len(cases)), names, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("edgeva bench detector: 768x576 frames of vtest, one frame at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_detector_bench(
    quick: bool = False,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    echo: Callable[[str], Any] = print,
    onnx_models: Sequence[str] = (),
) -> list[DetectorCase]:
    """Time every available backend with 1 and 2 threads; print progress and the table via
    ``echo``; write JSON and a PNG where paths are given. ``onnx_models``: more ONNX models to
    time beside the bundled one (e.g. a quantised variant), rows ``onnx:<file name>``.
    Returns the rows."""
    n, warmup = (12, 2) if quick else (60, 5)
    frames = _frames(n + warmup)
    timed, warm = frames[warmup:], frames[:warmup]
    plan: list[tuple[str, int, dict]] = []
    for threads in (1, 2):
        plan.append(("onnx", threads, {"threads": threads}))
        for m in onnx_models:
            plan.append((f"onnx:{Path(m).name}", threads, {"model": str(m), "threads": threads}))
        plan.append(("opencv-hog", threads, {"backend": "opencv-hog", "threads": threads}))
    if (MLSERVER_VENV / "bin" / "mlserver").exists() and MLSERVER_MODEL.is_dir():
        for threads in (1, 2):
            for proto in ("http", "grpc"):
                plan.append((f"triton-mlserver-{proto}", threads,
                             {"backend": "triton", "protocol": proto, "model_name": "centernet"}))
    else:
        echo(f"(no {MLSERVER_VENV.name}: triton cases left out; tools/make-mlserver-venv.sh adds them)")
    cases: list[DetectorCase] = []
    server: contextlib.ExitStack | None = None
    urls: dict[int, tuple[str, str]] = {}
    try:
        for k, (backend, threads, args) in enumerate(plan, 1):
            case = DetectorCase(backend, threads)
            echo(f"[{k}/{len(plan)}] {backend}, {threads} thread(s) ...")
            try:
                if backend.startswith("triton"):
                    if threads not in urls:  # one server per thread count, shared by protocols
                        if server is not None:
                            server.close()
                        server = contextlib.ExitStack()
                        urls[threads] = server.enter_context(_mlserver(threads))
                    args = {**args, "url": urls[threads][0 if args["protocol"] == "http" else 1],
                            "timeout_s": 30.0}
                _time_case(case, args, timed, warm)
            except Exception as e:  # one broken backend must not hide the others
                case.error = f"{type(e).__name__}: {e}"
            if case.ok:
                echo(f"      {case.ms_p50:.1f} ms/frame p50, {case.fps:.1f} frames/s")
            else:
                echo(f"      FAILED: {case.error}")
            cases.append(case)
    finally:
        if server is not None:
            server.close()
    echo(format_table(cases))
    if json_path:
        from edgeva.bench.hop.report import host_info

        doc = {"bench": "detector", "quick": quick, "frame_size": [768, 576],
               "results": [asdict(c) for c in cases], "host": host_info()}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if plot_path:
        write_plot(plot_path, cases)
    return cases
