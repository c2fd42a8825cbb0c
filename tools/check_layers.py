"""The layer contract (issue 22): cli > bench > control > agent > modules > schemas.

    .venv/bin/python tools/check_layers.py        # make lint, CI

A layer imports only the layers below it; nothing that runs on a device (agent, modules,
schemas) imports a benchmark, the CLI or the operator's tools. Checked by import-linter
(`[tool.importlinter]` in pyproject.toml) on the tree as it is installed: the repository keeps
agent/, modules/, ... at its top level and packaging maps them to edgeva.agent, ... (setup.py),
which import-linter cannot follow, so the parts are staged into a temporary edgeva/ first
(hard links where the file system allows: nothing is copied byte by byte).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("agent", "modules", "control", "schemas", "bench")


def stage(root: Path, dest: Path) -> Path:
    """Lay the sources out as the wheel does: dest/edgeva/{__init__.py, cli.py, agent/, ...}."""
    pkg = dest / "edgeva"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx", "*.mp4", "*.json")

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(root / "edgeva", pkg, ignore=ignore, copy_function=link)
    for part in PARTS:
        shutil.copytree(root / part, pkg / part, ignore=ignore, copy_function=link)
    return dest


def lint(staged: Path, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess:
    """Run lint-imports on a staged tree; its output says which import breaks which contract."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run([str(exe), "--no-cache", str(config)], cwd=staged, env=env,
                          capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgeva-layers-") as tmp:
        run = lint(stage(ROOT, Path(tmp)))
    print(run.stdout[-4000:] + run.stderr[-2000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
