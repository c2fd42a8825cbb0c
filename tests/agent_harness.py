"""Test harness: a real ``edgeva agent`` process and a plain paho client that records traffic.

The code is the pytest plugin's public helpers (``control.testing``); here agents run from the
repository root, so that relative paths in tests' deployments resolve as before."""

from __future__ import annotations

from pathlib import Path

from control.testing import AgentProcess, Commander, Watcher

__all__ = ["AgentProc", "Commander", "Watcher"]

ROOT = Path(__file__).resolve().parent.parent


class AgentProc(AgentProcess):
    """``control.testing.AgentProcess`` started in the repository root. Source URLs may name
    127.0.0.1 (tests' RTSP servers) unless ``extra`` lists its own ``--url-host``."""

    def __init__(self, url: str, device: str, state_dir: Path, watcher: Watcher, *extra: str, **kw) -> None:
        kw.setdefault("cwd", ROOT)
        if "--url-host" not in extra:
            extra = (*extra, "--url-host", "127.0.0.1")
        super().__init__(url, device, state_dir, watcher, *extra, **kw)
