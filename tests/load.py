"""How busy the machine is right now, for time budgets that grow with load (issue 21).

A test's assertion never weakens; only how long it waits may grow. ``slowdown()`` runs a fixed
piece of CPU work and compares the wall time it took with the CPU time it got: about 1 on a
quiet machine, N when N runnable processes share this core (``taskset -c 0`` beside the suite's
other workers, busy loops, a mutation run). ``budget(s)`` scales a nominal budget by it.
"""
from __future__ import annotations

import time

#: never shrink a budget, and never let one grow without bound (a hung test still fails)
MAX_SLOWDOWN = 8.0


def slowdown(work_s: float = 0.03) -> float:
    """Wall time / CPU time of ``work_s`` seconds of CPU work done now (>= 1)."""
    w0, c0 = time.monotonic(), time.process_time()
    x = 0
    while time.process_time() - c0 < work_s:
        for i in range(1000):
            x += i
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    return min(MAX_SLOWDOWN, max(1.0, wall / max(cpu, 1e-6)))


def budget(nominal_s: float, factor: float | None = None) -> float:
    """``nominal_s`` seconds, times the machine's slowdown measured now (or ``factor``)."""
    return nominal_s * (slowdown() if factor is None else factor)
