"""The demo's summary (the JSON contract) and its latency-over-time plot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeva.modules.base import MAX_THREADS


def remedy(kind: str, args: dict) -> str:
    """The args that would make a module of type ``kind`` (running with ``args``) cheaper."""
    if kind == "detector":
        tips = []
        k = args.get("interval", 1)
        tips.append(f"interval: {k + 1} (inference on one frame in {k + 1}, the tracker predicts "
                    f"between; --interval {k + 1})")
        most = min(os.cpu_count() or 1, MAX_THREADS)  # a module's threads are capped (docs/security.md)
        if args.get("threads", 2) < most:
            tips.append(f"threads: {most}")
        return "detector " + ", ".join(tips)
    if kind == "reid":
        n = args.get("embed_every", 10)
        return f"reid embed_every: {2 * n} (--embed-every {2 * n}), or backend: hsv"
    return {
        "annotate": "no annotated video (edgeva demo --no-video)",
        "decoder": "decoder width/height (decode smaller), or a lower fps",
        "tracker": "tracker algorithm: iou or centroid (no Kalman filter)",
    }.get(kind, "give the module fewer frames or more CPU")


def diagnose(source_frames: int, seconds: float, fps: float, live: bool, modules: dict, apps: dict,
             args: dict[str, dict] | None = None) -> str:
    """The run in words: real-time factor, the bottleneck module and its ms/frame, what fixes it."""
    expected = fps * seconds if fps else 0
    rtf = source_frames / expected if expected else 1.0
    costs = {n: m["proc_ms_p50"] for n, m in modules.items() if m["proc_ms_p50"] is not None}
    total = sum(costs.values())
    worst = max(costs, key=costs.get) if costs else None
    dropped = {a: s["dropped"] for a, s in apps.items() if s["dropped"]}
    words = [f"real-time factor {rtf:.2f} ({source_frames} of {expected:.0f} source frames in {seconds:.0f} s)"]
    if worst is not None:
        kind = modules[worst]["type"]
        words.append(f"bottleneck: {worst} ({kind}) at {costs[worst]:.1f} ms/frame; all modules together "
                     f"{total:.1f} ms of CPU per frame against a {1e3 / fps:.0f} ms frame period" if fps else "")
    if rtf >= 0.95 and not dropped:
        words.insert(0, "kept up with the source")
    elif live:
        words.insert(0, f"overloaded live source: the slowest stage took the newest frames, dropped {dropped}")
    else:
        words.insert(0, "could not keep up: back-pressure slowed the file source below its fps (no frame lost)")
    if (rtf < 0.95 or dropped) and worst is not None:
        words.append(f"to fix: {remedy(modules[worst]['type'], (args or {}).get(worst, {}))}")
    return "; ".join(w for w in words if w) + "."


def summarize(core, apps: list[str], seconds: float, fps: float = 0.0) -> dict:
    """``{"source_frames", "seconds", "apps": {name: {frames, dropped, latency_ms{p50,p95,p99},
    events, lag_ms_per_min, fps}}}`` plus per-module timings and counters, the real-time factor
    and ``verdict`` (the run in words); ``_history`` (popped by the caller) holds each app's
    (time, latency) samples for the plot."""
    mods = core.module_metrics()
    source = max((m.frames_out for m in mods.values() if m.type == "decoder"), default=0)
    out: dict = {"source_frames": source, "seconds": seconds, "apps": {}, "modules": {}, "_history": {}}
    for name in apps:
        app = core.apps.get(name)
        if app is None:
            continue
        s = app.stats.summary()
        s["fps"] = round(s["frames"] / seconds, 2) if seconds else None
        out["apps"][name] = s
        ts, _, ms = app.stats.history()
        out["_history"][name] = list(zip(ts.tolist(), ms.tolist(), strict=True))
    for inst, m in mods.items():
        hist = np.array(core.sup.instances[inst].proc_history) if inst in core.sup.instances else np.empty((0, 2))
        out["modules"][inst] = {
            "type": m.type, "frames_in": m.frames_in, "frames_out": m.frames_out,
            # medians over the run's 1-s intervals
            "proc_ms_p50": round(float(np.median(hist[:, 0])), 3) if len(hist) else None,
            "proc_ms_p95": round(float(np.median(hist[:, 1])), 3) if len(hist) else None,
            "dropped": sum(m.dropped.values()),
            **({"counters": m.counters} if m.counters else {}),
        }
    live = any(i.live for i in core.sup.instances.values() if i.spec.type == "decoder")
    out["realtime_factor"] = round(source / (fps * seconds), 3) if fps and seconds else None
    args = {n: i.spec.config for n, i in core.sup.instances.items()}
    out["verdict"] = diagnose(source, seconds, fps, live, out["modules"], out["apps"], args)
    return out


def plot_latency(history: dict[str, list[tuple[float, float]]], path: Path, window: int = 15) -> Path:
    """End-to-end latency over time per app (moving average over ``window`` frames, as the
    paper plots it), with the raw samples faint behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    t0 = min((h[0][0] for h in history.values() if h), default=0.0)
    for name, h in history.items():
        if not h:
            continue
        t = np.array([x for x, _ in h]) - t0
        ms = np.array([y for _, y in h])
        line, = ax.plot(t, ms, alpha=0.2, linewidth=0.8)
        if len(ms) >= window:
            smooth = np.convolve(ms, np.ones(window) / window, mode="valid")
            ax.plot(t[window - 1:], smooth, color=line.get_color(), linewidth=1.8,
                    label=f"{name} (p50 {np.median(ms):.0f} ms)")
        else:
            line.set_label(name)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("edgeva demo: latency per application, decode to last module")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
