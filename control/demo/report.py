"""The demo's summary (the JSON contract) and its latency-over-time plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def summarize(core, apps: list[str], seconds: float) -> dict:
    """``{"source_frames", "seconds", "apps": {name: {frames, dropped, latency_ms{p50,p95,p99},
    events, lag_ms_per_min, fps}}}`` plus per-module timings; ``_history`` (popped by the caller)
    holds each app's (time, latency) samples for the plot."""
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
        out["_history"][name] = [(t, ms) for t, _, ms in app.stats.history]
    for inst, m in mods.items():
        hist = np.array(core.sup.instances[inst].proc_history) if inst in core.sup.instances else np.empty((0, 2))
        out["modules"][inst] = {
            "type": m.type, "frames_in": m.frames_in, "frames_out": m.frames_out,
            # medians over the run's 1-s intervals
            "proc_ms_p50": round(float(np.median(hist[:, 0])), 3) if len(hist) else None,
            "proc_ms_p95": round(float(np.median(hist[:, 1])), 3) if len(hist) else None,
            "dropped": sum(m.dropped.values()),
        }
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
