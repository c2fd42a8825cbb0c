"""The bundled assets are the files that modules/assets/README.md describes: each row of its
table names a file present with that size and sha256, and every model in the folder has a row
(so a rebuilt or swapped model cannot ship with stale provenance)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parent.parent / "modules" / "assets"
ROW = re.compile(r"^\| `([^`]+)` \| ([\d,]+) \| `([0-9a-f]{64})` \|", re.M)


def _rows() -> dict[str, tuple[int, str]]:
    text = (ASSETS / "README.md").read_text()
    return {name: (int(size.replace(",", "")), digest) for name, size, digest in ROW.findall(text)}


def test_table_lists_every_bundled_model() -> None:
    rows = _rows()
    models = {p.name for p in ASSETS.glob("*.onnx")}
    assert models and models <= set(rows), f"no README row for {sorted(models - set(rows))}"


@pytest.mark.parametrize("name", sorted(_rows()))
def test_file_matches_its_row(name: str) -> None:
    size, digest = _rows()[name]
    path = ASSETS / name
    assert path.is_file(), f"{name} is in the README table but not in modules/assets/"
    assert path.stat().st_size == size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
