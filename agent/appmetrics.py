"""Per-application end-to-end figures, fed by the app's last module(s) frame by frame."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from schemas.metrics import P3, AppMetrics

LAG_WINDOW_S = 30.0
LAG_MIN_SPAN_S = 10.0
LAG_THRESHOLD_MS_PER_MIN = 60.0  # latency growing faster than this = the app falls behind
HISTORY = 100_000


def _p3(values: np.ndarray) -> P3:
    if not len(values):
        return P3()
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return P3(p50=round(float(p50), 3), p95=round(float(p95), 3), p99=round(float(p99), 3))


class AppStats:
    """Latency samples of one app: the interval's (for periodic metrics) and the whole run's
    (for summaries), plus the slope of latency over the last ``LAG_WINDOW_S`` seconds."""

    def __init__(self) -> None:
        self.frames = 0
        self.events = 0
        self.dropped = 0
        self.interval: list[float] = []
        self.history: deque[tuple[float, int, float]] = deque(maxlen=HISTORY)  # (t, frame_id, ms)

    def add(self, frame_id: int, latency_ms: float, now: float | None = None) -> None:
        t = time.time() if now is None else now
        self.frames += 1
        self.interval.append(latency_ms)
        self.history.append((t, frame_id, latency_ms))

    def lag_ms_per_min(self, now: float | None = None) -> float | None:
        """Least-squares slope of latency against time over the recent window."""
        t_now = time.time() if now is None else now
        recent = [(t, ms) for t, _, ms in self.history if t_now - t <= LAG_WINDOW_S]
        if len(recent) < 10 or recent[-1][0] - recent[0][0] < LAG_MIN_SPAN_S:
            return None
        t, ms = np.array(recent).T
        slope = np.polyfit(t - t[0], ms, 1)[0]
        return round(float(slope) * 60.0, 3)

    def snapshot(self, now: float | None = None) -> AppMetrics:
        """Metrics for the interval since the last snapshot (then starts a new interval)."""
        lag = self.lag_ms_per_min(now)
        m = AppMetrics(
            frames=self.frames, dropped=self.dropped, events=self.events,
            latency_ms=_p3(np.asarray(self.interval)), lag_ms_per_min=lag,
            lagging=lag is not None and lag > LAG_THRESHOLD_MS_PER_MIN,
        )
        self.interval = []
        return m

    def summary(self) -> dict:
        """Whole-run figures: frames, drops, latency percentiles, events."""
        lat = np.array([ms for _, _, ms in self.history])
        return {
            "frames": self.frames,
            "dropped": self.dropped,
            "latency_ms": _p3(lat).model_dump(),
            "events": self.events,
            "lag_ms_per_min": self.lag_ms_per_min(),
        }
