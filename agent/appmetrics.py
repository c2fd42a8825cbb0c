"""Per-application end-to-end figures, fed by the app's last module(s) frame by frame."""

from __future__ import annotations

import time

import numpy as np

from edgeva.schemas.metrics import P3, AppMetrics

LAG_WINDOW_S = 30.0
LAG_MIN_SPAN_S = 10.0
LAG_THRESHOLD_MS_PER_MIN = 60.0  # latency growing faster than this = the app falls behind
HISTORY = 36_000  # samples kept: an hour at 10 fps, in preallocated columns (flat memory)


def _p3(values: np.ndarray) -> P3:
    if not len(values):
        return P3()
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return P3(p50=round(float(p50), 3), p95=round(float(p95), 3), p99=round(float(p99), 3))


class AppStats:
    """Latency samples of one app: the interval's (for periodic metrics) and the last
    ``HISTORY`` frames' (for summaries and the lag), plus the slope of latency over the last
    ``LAG_WINDOW_S`` seconds. The history lives in columns allocated and touched once: an app's
    memory does not creep up for hours, and a frame allocates nothing."""

    def __init__(self) -> None:
        self.frames = 0
        self.events = 0
        self.dropped = 0
        self.interval: list[float] = []
        self._t = np.ones(HISTORY)  # unix time (s); np.ones writes every page now
        self._fid = np.ones(HISTORY, dtype=np.int64)
        self._ms = np.ones(HISTORY)
        self._n = 0  # samples ever added
        self._last = P3()  # the last interval's percentiles that had samples

    def add(self, frame_id: int, latency_ms: float, now: float | None = None) -> None:
        t = time.time() if now is None else now
        self.frames += 1
        self.interval.append(latency_ms)
        i = self._n % HISTORY
        self._t[i], self._fid[i], self._ms[i] = t, frame_id, latency_ms
        self._n += 1

    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unix time, frame id, latency ms) of the kept samples, oldest first (copies)."""
        n = min(self._n, HISTORY)
        order = np.roll(np.arange(n), -(self._n % HISTORY)) if self._n > HISTORY else np.arange(n)
        return self._t[order], self._fid[order], self._ms[order]

    def recent_ms(self, k: int) -> np.ndarray:
        """The last ``k`` latencies, oldest first."""
        k = min(k, self._n, HISTORY)
        idx = (np.arange(self._n - k, self._n)) % HISTORY
        return self._ms[idx]

    def lag_ms_per_min(self, now: float | None = None) -> float | None:
        """Least-squares slope of latency against time over the recent window."""
        t_now = time.time() if now is None else now
        n = min(self._n, HISTORY)
        keep = self._t[:n] >= t_now - LAG_WINDOW_S
        t, ms = self._t[:n][keep], self._ms[:n][keep]
        if len(t) < 10 or t.max() - t.min() < LAG_MIN_SPAN_S:
            return None
        slope = np.polyfit(t - t.min(), ms, 1)[0]
        return round(float(slope) * 60.0, 3)

    def snapshot(self, now: float | None = None, hold_s: float = 0.0, peek: bool = False) -> AppMetrics:
        """Metrics for the interval since the last snapshot; then starts a new interval unless
        ``peek``. Modules hand in their latency samples in batches on a clock of their own, so
        an interval may catch none while frames still flow: then the last interval that had
        samples is repeated if the newest sample is at most ``hold_s`` old (a scraper's series
        does not flicker), and null once the app has really stopped passing frames."""
        t_now = time.time() if now is None else now
        lag = self.lag_ms_per_min(t_now)
        if self.interval:
            latency = _p3(np.asarray(self.interval))
            if not peek:
                self._last, self.interval = latency, []
        elif self._n and t_now - self._t[(self._n - 1) % HISTORY] <= hold_s:
            latency = self._last
        else:
            latency = P3()
        return AppMetrics(
            frames=self.frames, dropped=self.dropped, events=self.events,
            latency_ms=latency, lag_ms_per_min=lag,
            lagging=lag is not None and lag > LAG_THRESHOLD_MS_PER_MIN,
        )

    def summary(self) -> dict:
        """Whole-run figures: frames, drops, latency percentiles, events."""
        lat = self.history()[2]
        return {
            "frames": self.frames,
            "dropped": self.dropped,
            "latency_ms": _p3(lat).model_dump(),
            "events": self.events,
            "lag_ms_per_min": self.lag_ms_per_min(),
        }
