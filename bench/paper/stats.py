"""Per-frame latency series -> the paper's figures (section 5.1.3).

A series is ``[(t_s, latency_ms), ...]``: when a frame reached the app's end (seconds since the
run started) and its end-to-end latency. The paper plots latency over time after keeping the
values under the 95th percentile and smoothing with a moving average (window 150); a run
*lags* when latency keeps growing (the queue in front of the slowest stage fills).
"""

from __future__ import annotations

import statistics

LAG_MS_PER_S = 20.0  # latency growing faster than this over the run = lagging


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def growth_ms_per_s(series: list[tuple[float, float]]) -> float | None:
    """How fast latency grows: the median of the last third against the median of the first
    third, over the time between them. A queue filling up grows it steadily; a burst of other
    load on a shared machine lifts a few frames and hardly moves a median."""
    if len(series) < 9:
        return None
    n = len(series) // 3
    first, last = series[:n], series[-n:]
    dt = statistics.median(t for t, _ in last) - statistics.median(t for t, _ in first)
    if dt <= 0:
        return None
    return (statistics.median(v for _, v in last) - statistics.median(v for _, v in first)) / dt


def slope_ms_per_s(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of latency over time, ms per second."""
    if len(series) < 5:
        return None
    xs, ys = [p[0] for p in series], [p[1] for p in series]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def smooth(series: list[tuple[float, float]], window: int = 150) -> list[tuple[float, float]]:
    """The paper's preprocessing: drop values above the 95th percentile, moving average."""
    cap = pct([v for _, v in series], 95)
    kept = [p for p in series if cap is None or p[1] <= cap]
    w = max(1, min(window, len(kept) // 5 or 1))
    out, acc = [], 0.0
    for i, (t, v) in enumerate(kept):
        acc += v
        if i >= w:
            acc -= kept[i - w][1]
        out.append((t, acc / min(i + 1, w)))
    return out


def summarize(series: list[tuple[float, float]], offered: int, seconds: float) -> dict:
    """fps reaching the app's end, latency p50/p95, dropped ratio against the frames the source
    offered, latency growth (``lag_ms_per_s``) and the verdict ``lagging`` (growth above
    ``LAG_MS_PER_S``)."""
    lat = [v for _, v in series]
    slope = growth_ms_per_s(series)
    lagging = slope is not None and slope > LAG_MS_PER_S
    done = len(series)
    return {
        "frames": done,
        "offered": offered,
        "fps": round(done / seconds, 2) if seconds > 0 else 0.0,
        "latency_ms": {"p50": _r(pct(lat, 50)), "p95": _r(pct(lat, 95)), "p99": _r(pct(lat, 99))},
        "dropped_ratio": round(max(0, offered - done) / offered, 4) if offered else 0.0,
        "lag_ms_per_s": _r(slope),
        "lagging": lagging,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
