"""What the asset-rebuild scripts in tools/ share: a prefixed logger, a file's sha256, and the
throwaway venv each script re-executes itself in, so that a converter's heavy dependencies
(tensorflow, torch) never enter edgeva's own environment.

The scripts run as ``python tools/NAME.py``, which puts this folder first on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def make_log(name: str) -> Callable[..., None]:
    """``log(*parts)``: one flushed line, prefixed with ``[name]``."""

    def log(*a) -> None:
        print(f"[{name}]", *a, flush=True)

    return log


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def in_venv(venv: Path) -> bool:
    """Whether this interpreter is the one of ``venv``."""
    return Path(sys.prefix).resolve() == venv.resolve()


def bootstrap_and_reexec(
    venv: Path,
    script: str,
    argv: Sequence[str],
    installs: Sequence[tuple[str, Sequence[str]]],
    log: Callable[..., None],
    what: str,
    env: dict[str, str] | None = None,
) -> None:
    """Create ``venv`` if missing, pip-install each ``(probe import, specs)`` step whose probe
    fails (in order: e.g. torch alone first), then replace this process with ``script argv``
    run by the venv's python, with ``env`` added. Does not return."""
    if not (venv / "bin" / "python").exists():
        if not (3, 10) <= sys.version_info[:2] <= (3, 13):
            sys.exit(f"need Python 3.10-3.13 to create the {what} venv")
        log("creating throwaway venv", venv)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    for probe, specs in installs:
        if subprocess.run([py, "-c", probe], capture_output=True).returncode != 0:
            log("pip install", *specs)
            subprocess.check_call([py, "-m", "pip", "install", "-q", *specs])
    os.execve(py, [py, str(Path(script).resolve()), *argv], dict(os.environ, **(env or {})))
