"""Module identity, exactly (issue 25: survivors of ``make mutants`` on schemas/graph.py): the
scope (the tenant) keeps tenants from sharing, identities do not depend on the order of keys in
an arg that is a mapping, any string a command can carry hashes, and importing the schemas pulls
in no module code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from edgeva.modules.base import ModuleConfig
from edgeva.schemas.commands import parse_command
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.graph import ValidatedGraph, validate_graph

ROOT = Path(__file__).resolve().parent.parent


class SourceConfig(ModuleConfig):
    type: Literal["source"] = "source"
    url: str = ""


class MapperConfig(ModuleConfig):
    type: Literal["mapper"] = "mapper"
    table: dict[str, int] = {}


REGISTRY = {"source": SourceConfig, "mapper": MapperConfig}


def graph(table: dict[str, int], url: str = "cam1", scope: str = "") -> ValidatedGraph:
    dep = Deployment.model_validate({"app": "a", "modules": {
        "src": {"type": "source", "args": {"url": url}, "outputs": ["map"]},
        "map": {"type": "mapper", "args": {"table": table}},
    }})
    g = validate_graph(dep, REGISTRY, None, "cam-01")
    g.scope = scope
    return g


def test_the_scope_keeps_tenants_apart_and_equal_scopes_share() -> None:
    ids = {scope: graph({"a": 1}, scope=scope).identities() for scope in ("", "acme", "globex")}
    assert ids["acme"] == graph({"a": 1}, scope="acme").identities()
    for name in ("src", "map"):
        assert len({ids[s][name] for s in ids}) == 3, (name, ids)


def test_identity_is_type_and_16_hex_and_ignores_key_order_in_a_mapping_arg() -> None:
    one, two = graph({"a": 1, "b": 2}), graph({"b": 2, "a": 1})
    assert one.identities() == two.identities()
    assert one.identity("map") != graph({"a": 1, "b": 3}).identity("map")
    for name, ident in one.identities().items():
        assert re.fullmatch(r"(source|mapper)-[0-9a-f]{16}", ident), (name, ident)


def test_any_string_a_command_can_carry_hashes() -> None:
    # JSON's \\ud800 escape reads as a lone surrogate, which UTF-8 cannot encode
    dep = parse_command("deploy", b'{"app": "a", "modules": {"src": {"type": "source", "args": {"url": "cam\\ud800"}}}}')
    g = validate_graph(dep, REGISTRY, None, "cam-01")  # type: ignore[arg-type]
    assert re.fullmatch(r"source-[0-9a-f]{16}", g.identity("src"))
    assert g.identity("src") != graph({}, url="cam").identity("src")


def test_importing_the_graph_schema_loads_no_module_code() -> None:
    # schemas are imported by the operator's CLI and by modules themselves: a run-time import of
    # modules/ from here would be a cycle, and a heavy one
    # (by its installed name: `import schemas.graph` from the root loaded modules as edgeva.modules,
    # which a test of the first name part no longer saw)
    code = "import sys, edgeva.schemas.graph; print(sorted(m for m in sys.modules if m.startswith('edgeva.modules')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_bad_arg_is_told_with_the_hint_that_fits_it() -> None:
    # two errors: the first one is told (a bad value: no list of known args), then the count
    def told(args: dict) -> tuple[str, str | None, str]:
        dep = Deployment.model_validate({"app": "a", "modules": {"map": {"type": "mapper", "args": args}}})
        with pytest.raises(EdgevaError) as info:
            validate_graph(dep, REGISTRY, None, "cam-01")
        return info.value.code, info.value.path, info.value.message

    assert told({"bogus": 1, "table": {"a": "x"}}) == (
        "bad_args", "modules.map.args.table.a",
        "Input should be a valid integer, unable to parse string as an integer, got 'x'; and 1 more error")
    assert told({"bogus": 1}) == ("bad_args", "modules.map.args.bogus", "unknown field (known args: table)")
