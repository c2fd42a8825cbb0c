"""What every benchmark writes: its JSON result and its plots, under folders made on demand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def out_path(path: str | Path) -> Path:
    """``path`` as a Path whose folder exists (a bench's ``--json`` / ``--plot`` target)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_json(path: str | Path, result: Any) -> None:
    """Write a bench's result as indented JSON to ``path`` (its folder made if missing)."""
    out_path(path).write_text(json.dumps(result, indent=2))
