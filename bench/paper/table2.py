"""The paper's Table 2: the detector and the reid model each alone, both at once on one
device, and split across two devices (inferences/s and latency). Here a device is a CPU: each
model runs in its own process held to it, with one inference thread, on frames of the clip.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from edgeva.bench.paper.apps import scenario
from edgeva.bench.paper.inproc import build_module, outputs, produce
from edgeva.bench.paper.stats import pct

FRAMES = 12


def _specs() -> tuple[dict, dict, dict, dict]:
    """The demo reid app's modules, each model on one thread and run on every input (no
    detection interval, no embedding reuse): the models themselves are measured."""
    reid_app = scenario(1)[0]["modules"]
    dec, det, trk, reid = (copy.deepcopy(reid_app[n]) for n in ("decoder", "detector", "tracker", "reid"))
    dec["args"].pop("fps", None)  # no pacing: take frames as fast as they decode
    det["args"].update(threads=1, interval=1)
    reid["args"].update(threads=1, embed_every=1)
    return dec, det, trk, reid


def model_main(kind: str, seconds: float, cpus: list[int], conn: Any) -> None:
    """Child: prepare inputs, then run ``kind`` (detector | reid) back to back for ``seconds``."""
    os.sched_setaffinity(0, cpus)
    dec_spec, det_spec, trk_spec, reid_spec = _specs()
    dec, det = build_module("decoder", dec_spec), build_module("detector", det_spec)
    frames = [produce(dec) for _ in range(FRAMES)]
    inputs = frames
    model = det
    if kind == "reid":  # reid takes the tracker's output: frames with tracked boxes
        trk = build_module("tracker", trk_spec)
        inputs = [t for f in frames for d in outputs(det.process(f)) for t in outputs(trk.process(d))]
        model = build_module("reid", reid_spec)
    conn.send(("ready", None))
    conn.recv()
    lat: list[float] = []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        model.process(inputs[i % len(inputs)])
        lat.append((time.perf_counter() - t) * 1e3)
        i += 1
    conn.send(("done", {"ips": round(len(lat) / (time.perf_counter() - t0), 2),
                        "latency_ms": {"p50": round(pct(lat, 50), 2), "p95": round(pct(lat, 95), 2)}}))


def run_table2(seconds: float, say: Any = print) -> dict:
    """Four rows, as the paper's Table 2."""
    from edgeva.bench.paper.monolith import run_processes

    two = len(os.sched_getaffinity(0)) >= 2
    rows = {}
    for name, jobs in (
        ("detector_alone", [("detector", seconds, [0])]),
        ("reid_alone", [("reid", seconds, [0])]),
        ("both_one_device", [("detector", seconds, [0]), ("reid", seconds, [0])]),
        ("split_two_devices", [("detector", seconds, [0]), ("reid", seconds, [1 if two else 0])]),
    ):
        res = run_processes(model_main, jobs, timeout=seconds + 120)
        rows[name] = {job[0]: r for job, r in zip(jobs, res, strict=False)}
        say(f"  table 2, {name:<18} " + ", ".join(
            f"{k} {v.get('ips', '?')} inf/s p50 {v.get('latency_ms', {}).get('p50', '?')} ms" for k, v in rows[name].items()))
    return rows
