"""Ending the child processes a benchmark started: tell them, wait, then make sure."""

from __future__ import annotations

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
