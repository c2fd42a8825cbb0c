"""Starting and ending child processes, written once for the test kit, the tests and the
benchmarks: an agent's command line, stopping a process (tell it, wait, then make sure)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from typing import Any


def tell_all(conns: Iterable[Any], message: object) -> None:
    """Send ``message`` on every pipe; a child that is already gone is not an error."""
    for c in conns:
        try:
            c.send(message)
        except OSError:
            pass


def join_or_kill(procs: Iterable[Any], timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` s for each process, then SIGKILL the ones still running."""
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(5)


def agent_argv(device: str, broker_url: str, *extra: str) -> list[str]:
    """The command line that starts an agent with this Python (``python -m edgeva.cli agent``):
    the test kit, the tests and the benchmarks all start agents with it."""
    return [sys.executable, "-m", "edgeva.cli", "agent", "--device", device, "--broker", broker_url, *extra]


def stop_process(proc: subprocess.Popen, timeout: float = 5.0, kill: bool = False) -> int | None:
    """Stop a child process and reap it: SIGTERM (SIGKILL at once with ``kill``, as a crash or a
    power cut would), up to ``timeout`` s to exit, then SIGKILL. Returns its exit status (None if
    it could not be reaped: a process stuck in the kernel)."""
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None
