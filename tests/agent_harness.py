"""Test harness: a real ``edgeva agent`` process and a plain paho client that records traffic.

The code is the pytest plugin's public helpers (``control.testing``); here agents run from the
repository root, so that relative paths in tests' deployments resolve as before."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from edgeva.control.testing import AgentProcess, Commander, Watcher

__all__ = ["AgentProc", "Commander", "Watcher", "module_pid", "rates_around_a_freeze"]

ROOT = Path(__file__).resolve().parent.parent


class AgentProc(AgentProcess):
    """``control.testing.AgentProcess`` started in the repository root."""

    def __init__(self, url: str, device: str, state_dir: Path, watcher: Watcher, *extra: str, **kw) -> None:
        kw.setdefault("cwd", ROOT)
        super().__init__(url, device, state_dir, watcher, *extra, **kw)


def module_pid(w: Watcher, device: str, type_: str, app_key: str) -> int:
    """The pid of the ``type_`` module serving ``app_key`` ('tenant/app'), from the device's
    retained state, once it has one."""
    def pick(ms: list) -> int | None:
        return next((m["pid"] for m in ms[-1]["modules"].values()
                     if m["type"] == type_ and app_key in m["apps"] and m["pid"]), None)
    return pick(w.wait(f"edgeva/v1/{device}/state", lambda ms: pick(ms) is not None))  # type: ignore[return-value]


def rates_around_a_freeze(w: Watcher, topic: str, pid: int, seconds: float = 4.0) -> tuple[float, float]:
    """Messages per second on ``topic`` over ``seconds`` before, then while, process ``pid`` is
    SIGSTOPped (continued afterwards, whatever happens)."""
    def rate() -> float:
        n0, t0 = len(w.get(topic)), time.monotonic()
        time.sleep(seconds)  # a measurement window, not a wait for a condition
        return (len(w.get(topic)) - n0) / (time.monotonic() - t0)

    before = rate()
    os.kill(pid, signal.SIGSTOP)
    try:
        return before, rate()
    finally:
        os.kill(pid, signal.SIGCONT)
