"""The layer contract (tools/check_layers.py, import-linter): kept by the tree as it is, and
broken, naming the import, by an upward import planted in a staged copy."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def test_the_tree_keeps_the_layers(tmp_path):
    run = check_layers.lint(check_layers.stage(ROOT, tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


@pytest.mark.parametrize(("where", "line", "says"), [
    # a device-side module importing a benchmark
    ("agent/core.py", "from edgeva.bench.out import write_json  # noqa", "edgeva.agent.core -> edgeva.bench.out"),
    # a module type reaching into the agent
    ("modules/roi.py", "import edgeva.agent.supervisor  # noqa", "edgeva.modules.roi -> edgeva.agent.supervisor"),
    # the operator's tools importing the CLI
    ("control/client.py", "from edgeva.cli import main  # noqa", "edgeva.control.client -> edgeva.cli"),
])
def test_a_planted_upward_import_breaks_the_contract(tmp_path, where, line, says):
    staged = check_layers.stage(ROOT, tmp_path)
    target = staged / "edgeva" / where
    text = target.read_text()
    target.unlink()  # a hard link to the repository's file: write a new file, never through it
    target.write_text(text + "\n" + line + "\n")
    run = check_layers.lint(staged)
    assert run.returncode == 1, run.stdout
    assert "BROKEN" in run.stdout and says in run.stdout, run.stdout[-3000:]
    assert (ROOT / where).read_text() == text  # the repository's file is untouched
