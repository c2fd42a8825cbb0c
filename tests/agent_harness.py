"""Test harness: a real ``edgeva agent`` process and a plain paho client that records traffic.

The code is the pytest plugin's public helpers (``control.testing``); here agents run from the
repository root, so that relative paths in tests' deployments resolve as before."""

from __future__ import annotations

from pathlib import Path

from control.testing import AgentProcess, Commander, Watcher

__all__ = ["AgentProc", "Commander", "Watcher"]

ROOT = Path(__file__).resolve().parent.parent


class AgentProc(AgentProcess):
    """``control.testing.AgentProcess`` started in the repository root."""

    def __init__(self, url: str, device: str, state_dir: Path, watcher: Watcher, *extra: str, **kw) -> None:
        kw.setdefault("cwd", ROOT)
        super().__init__(url, device, state_dir, watcher, *extra, **kw)
