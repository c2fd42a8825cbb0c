"""``edgeva bench detector``: how fast each detector model and backend turns frames into
detections, and how well it finds people.

Each case builds the ``detector`` module exactly as a pipeline does (validated config,
``setup``) and times ``process`` on frames of the bundled clip (``asset:vtest.mp4``, 768x576),
decoded beforehand so that decoding is not measured. A time covers what the pipeline pays
per frame: resize + colour conversion, inference (plus the request round trip for a server),
and post-processing (scaling, threshold, NMS).

Rows, each with 1 and 2 threads:

- ``onnx``: the bundled CenterNet (``asset:centernet_mnv3_coco.onnx``, score >= 0.4, the
  module's default), and ``onnx:yolox_nano_coco.onnx``: the bundled YOLOX-Nano (score >= 0.6:
  on the labelled frames it keeps its recall there and drops its one false alarm, a signpost
  scored 0.46-0.62; see ``modules/assets/README.md``), once per onnxruntime execution provider
  installed here that the detector can ask for (``modules/providers.py``; the row's
  ``provider`` is the one the session reports running);
- ``onnx:ssdlite_mobilenet_v2_coco.onnx``: SSDLite MobileNetV2, when ``make ssd-model`` has
  built ``out/models/ssdlite_mobilenet_v2_coco.onnx`` in the source checkout (score >= 0.4,
  the module's default; it has no documented threshold of its own); otherwise reported as
  skipped;
- ``onnx:<file>`` for each ``--onnx-model`` given (e.g. an int8 build of
  ``tools/quantize_centernet.py``; score >= 0.4);
- ``opencv-hog`` (score >= 0.4);
- in a source checkout where ``.venv-mlserver`` exists (``tools/make-mlserver-venv.sh``),
  ``triton`` against a local MLServer serving the same CenterNet over HTTP (JSON tensors:
  MLServer has no binary extension) and gRPC, with 1 and 2 server threads.

Cases run one after another in this process; one that fails is reported and does not stop the
others.

Accuracy, per row: ``recall`` and ``precision`` of people at IoU >= 0.5 against the persons of
``data/vtest_persons.json`` (8 frames checked by eye: ``truth.py``), at the row's
``score_threshold``, after the module's default post-processing; and ``agree_centernet`` /
``agree_model``: of the bundled CenterNet's person boxes on the timed frames (its 1-thread
CPU row), the share this row also found, and of this row's, the share the CenterNet found.
``opencv-hog``'s boxes carry its detection window's margin around a person (IoU 0.3-0.5 with
the tight labelled boxes on vtest), so at IoU >= 0.5 it scores near 0 there: a measure of its
box fit, not only of whether it sees people.

``quick`` times 12 frames per case after 2 warm-up frames (~1 min on a busy 2-core machine);
otherwise 60 after 5; the 8 labelled frames are run on top of these. Figures from a shared
machine: compare ratios, not absolute times.
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

from edgeva.bench.detector.truth import PersonTruth, agreement, load_truth, score

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = ROOT / ".venv-mlserver"
MLSERVER_MODEL = ROOT / "tests" / "servers" / "mlserver_centernet"
#: Built on demand by ``make ssd-model`` (too large to bundle); in a source checkout only.
SSD_MODEL = ROOT / "out" / "models" / "ssdlite_mobilenet_v2_coco.onnx"
#: The module's default score threshold: the CenterNet's documented one.
DEFAULT_SCORE = 0.4


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model the bench times: its row name, ``model`` arg and score threshold."""

    backend: str
    model: str
    score_threshold: float = DEFAULT_SCORE

    @property
    def file(self) -> str:
        return Path(self.model.removeprefix("asset:")).name


CENTERNET = OnnxModel("onnx", "asset:centernet_mnv3_coco.onnx", DEFAULT_SCORE)
#: 0.6: on the labelled frames YOLOX-Nano keeps 43 of 46 persons there and drops its false
#: alarm (a signpost it scores 0.46-0.62); modules/assets/README.md has the table.
YOLOX_NANO = OnnxModel("onnx:yolox_nano_coco.onnx", "asset:yolox_nano_coco.onnx", 0.6)


@dataclass(frozen=True)
class PlannedCase:
    """One row to run: the detector args, and what the row reports about them."""

    backend: str
    threads: int
    args: dict[str, Any]
    model: str | None
    provider: str | None
    score_threshold: float


def detector_providers(installed: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(short names the detector can ask for, in onnxruntime's order of preference; the other
    names onnxruntime lists, e.g. ``azure``, which runs no local model). ``installed``:
    ``onnxruntime.get_available_providers()`` (read when None)."""
    from edgeva.modules.providers import PROVIDERS, short

    if installed is None:
        import onnxruntime as ort

        installed = ort.get_available_providers()
    names = [short(p) for p in installed]
    usable = [n for n in names if n in PROVIDERS]
    return usable or ["cpu"], [n for n in names if n not in PROVIDERS]


def plan_cases(
    onnx_models: Sequence[str] = (),
    providers: Sequence[str] = ("cpu",),
    ssd_model: Path = SSD_MODEL,
    mlserver: bool = False,
) -> tuple[list[PlannedCase], list[dict[str, str]]]:
    """The rows to run, and the ones skipped (``{"backend", "model", "reason"}``): every
    bundled ONNX model, SSDLite when built, each ``onnx_models`` path, per provider, then
    OpenCV HOG, each with 1 and 2 threads; then the MLServer rows when ``mlserver``."""
    models = [CENTERNET, YOLOX_NANO]
    skipped: list[dict[str, str]] = []
    ssd = OnnxModel(f"onnx:{ssd_model.name}", str(ssd_model))
    if ssd_model.is_file():
        models.append(ssd)
    else:
        skipped.append({"backend": ssd.backend, "model": ssd.file,
                        "reason": f"skipped: run make ssd-model (no {ssd_model})"})
    models += [OnnxModel(f"onnx:{Path(m).name}", str(m)) for m in onnx_models]
    plan: list[PlannedCase] = []
    for threads in (1, 2):
        for provider in providers:
            for m in models:
                plan.append(PlannedCase(m.backend, threads, {"model": m.model, "threads": threads,
                                        "providers": [provider], "score_threshold": m.score_threshold},
                                        m.file, provider, m.score_threshold))
        plan.append(PlannedCase("opencv-hog", threads, {"backend": "opencv-hog", "threads": threads},
                                None, None, DEFAULT_SCORE))
    if mlserver:
        for threads in (1, 2):
            for proto in ("http", "grpc"):
                plan.append(PlannedCase(f"triton-mlserver-{proto}", threads,
                                        {"backend": "triton", "protocol": proto, "model_name": "centernet"},
                                        CENTERNET.file, None, DEFAULT_SCORE))
    return plan, skipped


@dataclass
class DetectorCase:
    """One row: a backend (and model, provider) with a thread count. Times in ms; None where
    the case failed. ``recall``/``precision``: people against the labelled frames
    (``truth.py``) at ``score_threshold``; ``agree_centernet``/``agree_model``: person boxes
    on the timed frames matched with the bundled CenterNet's (share of its, share of this
    row's)."""

    backend: str
    threads: int
    frames: int = 0
    ms_p50: float | None = None
    ms_p90: float | None = None
    ms_mean: float | None = None
    fps: float | None = None
    persons_per_frame: float | None = None
    error: str | None = None
    model: str | None = None
    provider: str | None = None
    score_threshold: float | None = None
    recall: float | None = None
    precision: float | None = None
    truth_hits: int | None = None
    truth_false: int | None = None
    truth_persons: int | None = None
    agree_centernet: float | None = None
    agree_model: float | None = None
    agree_mean_iou: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _frames(n: int, extra: Sequence[int] = ()) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """n frames spread over the clip (people come and go), and the frames of index ``extra``
    (the labelled ones), decoded up front, in one pass (decoding in order: no seeking)."""
    import cv2

    from edgeva.modules.decoder import resolve_path

    cap = cv2.VideoCapture(str(resolve_path("asset:vtest.mp4")))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 795
    want = set(np.linspace(0, total - 1, n).astype(int).tolist())
    out, more = [], {}
    for i in range(total):
        ok, f = cap.read()
        if not ok:
            break
        if i in want:
            out.append(f)
        if i in extra:
            more[i] = f
    cap.release()
    return out, more


def _persons(out: Any) -> np.ndarray:
    """The person rows of a detector output message."""
    return np.array([d for d in out.fields["detections"] if d[5] == 0], np.float64).reshape(-1, 6)


def _time_case(case: DetectorCase, args: dict, frames: list[np.ndarray], warm: list[np.ndarray],
               truth: PersonTruth | None = None, truth_frames: dict[int, np.ndarray] | None = None,
               ) -> list[np.ndarray]:
    """Time the case on ``frames`` and score it on ``truth_frames``; returns its person boxes
    per timed frame (for agreement)."""
    from edgeva.modules.base import ModuleContext
    from edgeva.modules.detector import Detector, DetectorConfig
    from edgeva.schemas.message import Message

    det = Detector(DetectorConfig.model_validate({"type": "detector", **args}), ModuleContext("bench"))
    det.setup()
    try:
        for f in warm:  # first calls pay for lazy allocations and thread start-up
            det.process(Message(0, "bench", arrays={"frame": f}))
        times, found = [], []
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            out = det.process(Message(i, "bench", arrays={"frame": f}))
            times.append((time.perf_counter() - t0) * 1000)
            found.append(_persons(out))
        provider = [k.removeprefix("provider_") for k in det.metrics() if k.startswith("provider_")]
        if provider:
            case.provider = provider[0]  # what onnxruntime reports running, not what was asked
        if truth is not None and truth_frames:
            # After the timing (its own stream: the frame ids restart, interval stays 1).
            got = {k: _persons(det.process(Message(k, "truth", arrays={"frame": f})))
                   for k, f in truth_frames.items()}
            sc = score(got, truth)
            case.recall, case.precision = sc.recall, sc.precision
            case.truth_hits, case.truth_false, case.truth_persons = sc.hits, sc.false, sc.persons
    finally:
        det.close()
    persons = sum(len(p) for p in found)
    case.frames = len(times)
    case.ms_p50 = round(statistics.median(times), 2)
    case.ms_p90 = round(float(np.percentile(times, 90)), 2)
    case.ms_mean = round(statistics.fmean(times), 2)
    case.fps = round(1000 * len(times) / sum(times), 2)
    case.persons_per_frame = round(persons / len(times), 2)
    return found


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


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(cases: list[DetectorCase], skipped: Sequence[dict[str, str]] = ()) -> str:
    """The rows as a text table; failed rows and skipped models listed under it."""
    head = ("backend", "model", "provider", "threads", "frames", "ms p50", "ms p90", "ms mean",
            "frames/s", "persons/frame", "score>=", "recall", "precision", "agree CN (its/ours)")
    rows = []
    for c in cases:
        who = (c.backend, c.model or "-", c.provider or "-", str(c.threads))
        if not c.ok:
            rows.append((*who, "FAILED", *[""] * (len(head) - 5)))
            continue
        agree = "-" if c.agree_centernet is None else f"{c.agree_centernet:.0%}/{_num(c.agree_model, '{:.0%}')}"
        rows.append((*who, str(c.frames), *(_num(v) for v in (c.ms_p50, c.ms_p90, c.ms_mean, c.fps,
                     c.persons_per_frame)), _num(c.score_threshold, "{:.2f}"),
                     _num(c.recall, "{:.3f}"), _num(c.precision, "{:.3f}"), agree))
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()
    out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    truth = next((c for c in cases if c.truth_persons), None)
    if truth is not None:
        out.append(f"recall/precision: people at IoU >= 0.5 against {truth.truth_persons} persons on "
                   "8 labelled vtest frames (bench/detector/data/vtest_persons.json); agree CN: share "
                   "of the CenterNet's person boxes on the timed frames this row found / of this "
                   "row's that the CenterNet found")
    out += [f"FAILED {c.backend} ({c.model or '-'}, {c.provider or '-'}) threads={c.threads}: {c.error}"
            for c in cases if not c.ok]
    out += [f"{s['backend']} ({s['model']}): {s['reason']}" for s in skipped]
    return "\n".join(out)


def write_plot(path: str | os.PathLike, cases: list[DetectorCase]) -> None:
    """PNG: p50 ms per frame of each row (model, provider, threads), and recall / precision of
    people against the labelled frames."""
    import matplotlib

    matplotlib.use("Agg")  # no display; imported lazily so the CLI does not pay for it
    import matplotlib.pyplot as plt

    def name(c: DetectorCase) -> str:
        what = (c.model or c.backend).removesuffix(".onnx") if c.backend.startswith("onnx") else c.backend
        what = what.replace("triton-", "triton\n").replace("_coco", "").replace("_", "\n", 1)
        prov = f" {c.provider}" if c.provider and c.backend.startswith("onnx") else ""
        return f"{what}\n{c.threads} thr{prov}"

    names = [name(c) for c in cases]
    x = np.arange(len(cases))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7.0, 1.1 * len(cases)), 7.5))
    ms = [c.ms_p50 or 0 for c in cases]
    bars = ax1.bar(x, ms, color="#3b75af")
    ax1.bar_label(bars, labels=[f"{v:.1f}" if v else "failed" for v in ms], fontsize=8)
    ax1.set_title("ms per frame, p50 (lower is better)")
    for off, vals, label, color in ((-0.2, [c.recall for c in cases], "recall", "#519e3e"),
                                    (0.2, [c.precision for c in cases], "precision", "#ef8536")):
        bars = ax2.bar(x + off, [v or 0 for v in vals], width=0.4, label=label, color=color)
        ax2.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in vals], fontsize=7)
    ax2.set_ylim(0, 1.15)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_title("people at IoU >= 0.5 on 8 labelled frames, at each row's score threshold")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("edgeva bench detector: 768x576 frames of vtest, one frame at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _agree(cases: list[DetectorCase], found: dict[int, list[np.ndarray]]) -> None:
    """Fill each row's agreement with the reference: the bundled CenterNet's first (1-thread,
    first provider) row, when it ran."""
    ref = next((k for k, c in enumerate(cases) if c.backend == CENTERNET.backend), None)
    if ref is None or not cases[ref].ok or ref not in found:
        return
    for k, c in enumerate(cases):
        if c.ok and k in found:
            a = agreement(found[ref], found[k])
            c.agree_centernet, c.agree_model, c.agree_mean_iou = a.of_ref, a.of_self, a.mean_iou


def run_detector_bench(
    quick: bool = False,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    echo: Callable[[str], Any] = print,
    onnx_models: Sequence[str] = (),
) -> list[DetectorCase]:
    """Time every model and backend available here with 1 and 2 threads, and score each
    against the labelled frames; print progress and the table via ``echo``; write JSON and a
    PNG where paths are given. ``onnx_models``: more ONNX models to time beside the bundled
    ones (e.g. a quantised variant), rows ``onnx:<file name>``. Returns the rows."""
    n, warmup = (12, 2) if quick else (60, 5)
    truth = load_truth()
    frames, truth_frames = _frames(n + warmup, truth.indices)
    timed, warm = frames[warmup:], frames[:warmup]
    providers, other = detector_providers()
    if other:
        echo(f"(onnxruntime also lists {', '.join(other)}: no local execution provider for the detector)")
    mlserver = (MLSERVER_VENV / "bin" / "mlserver").exists() and MLSERVER_MODEL.is_dir()
    plan, skipped = plan_cases(onnx_models, providers, SSD_MODEL, mlserver)
    for s in skipped:
        echo(f"({s['backend']}: {s['reason']})")
    if not mlserver:
        echo(f"(no {MLSERVER_VENV.name}: triton cases left out; tools/make-mlserver-venv.sh adds them)")
    cases: list[DetectorCase] = []
    found: dict[int, list[np.ndarray]] = {}
    server: contextlib.ExitStack | None = None
    urls: dict[int, tuple[str, str]] = {}
    try:
        for k, p in enumerate(plan, 1):
            case = DetectorCase(p.backend, p.threads, model=p.model, provider=p.provider,
                                score_threshold=p.score_threshold)
            echo(f"[{k}/{len(plan)}] {p.backend}{f' ({p.provider})' if p.provider else ''}, "
                 f"{p.threads} thread(s) ...")
            args = p.args
            try:
                if p.backend.startswith("triton"):
                    if p.threads not in urls:  # one server per thread count, shared by protocols
                        if server is not None:
                            server.close()
                        server = contextlib.ExitStack()
                        urls[p.threads] = server.enter_context(_mlserver(p.threads))
                    args = {**args, "url": urls[p.threads][0 if args["protocol"] == "http" else 1],
                            "timeout_s": 30.0}
                found[len(cases)] = _time_case(case, args, timed, warm, truth, truth_frames)
            except Exception as e:  # one broken backend must not hide the others
                case.error = f"{type(e).__name__}: {e}"
            if case.ok:
                echo(f"      {case.ms_p50:.1f} ms/frame p50, {case.fps:.1f} frames/s; recall "
                     f"{_num(case.recall, '{:.3f}')}, precision {_num(case.precision, '{:.3f}')} "
                     f"at score >= {case.score_threshold}")
            else:
                echo(f"      FAILED: {case.error}")
            cases.append(case)
    finally:
        if server is not None:
            server.close()
    _agree(cases, found)
    echo(format_table(cases, skipped))
    if json_path:
        from edgeva.bench.hop.report import host_info

        doc = {"bench": "detector", "quick": quick, "frame_size": [768, 576],
               "results": [asdict(c) for c in cases], "skipped": list(skipped),
               "truth": {"file": "bench/detector/data/vtest_persons.json", "frames": truth.indices,
                         "persons": truth.n_persons, "iou": 0.5},
               "host": host_info()}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if plot_path:
        write_plot(plot_path, cases)
    return cases
