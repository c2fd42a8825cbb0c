"""Hostile tenants against the agent's core (issue 20, holes 8, 9, 10, 15): what one tenant's
deployments cost the device (CPU per command, declared modules, desired-state files, link-fed
rings) and whether another tenant waits on them (restore after a restart)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from modules.registry import load_registry
from schemas.deployment import parse_deployment
from schemas.errors import EdgevaError
from schemas.graph import validate_graph

REGISTRY = load_registry()
PUB = {"type": "publish", "args": {}}


# -- hole 15: graph checks are linear -------------------------------------------------------------
def fan_out(n: int) -> dict:
    """One module feeding ``n`` others: its outputs were each searched in the list before them."""
    mods = {f"m{i}": PUB for i in range(n)}
    mods["src"] = {**PUB, "outputs": list(mods)}
    return mods


def fan_out_duplicate(n: int) -> dict:
    """The same, refused at its last output (named twice): every check runs before the refusal."""
    mods = fan_out(n)
    mods["src"]["outputs"].append("m0")
    return mods


def chain(n: int) -> dict:
    """``n`` modules in a line: too deep for a recursive search or a recursive identity."""
    return {f"m{i}": {**PUB, "outputs": [f"m{i + 1}"] if i < n - 1 else []} for i in range(n)}


def chain_cycle(n: int) -> dict:
    """A chain whose last module feeds the first: refused as a cycle."""
    mods = chain(n)
    mods[f"m{n - 1}"] = {**PUB, "outputs": ["m0"]}
    return mods


def sources(n: int) -> dict:
    """``n`` independent modules: all ready at once in the topological sort."""
    return {f"m{i}": PUB for i in range(n)}


def fan_in(n: int) -> dict:
    """``n`` modules feeding one: a module with ``n`` upstreams."""
    mods = {f"m{i}": {**PUB, "outputs": ["sink"]} for i in range(n)}
    mods["sink"] = PUB
    return mods


def command_cpu(modules: dict) -> float:
    """CPU seconds the agent's pure checks spend on one deploy command: reading it, checking its
    graph, and (accepted) computing every module's identity; the least of two runs."""
    payload = json.dumps({"app": "a", "modules": modules}, separators=(",", ":")).encode()
    best = float("inf")
    for _ in range(2):
        t0 = time.process_time()
        try:
            graph = validate_graph(parse_deployment(payload), REGISTRY, None, "cam")
            graph.scope = "acme"
            graph.identities()
        except EdgevaError:
            pass
        best = min(best, time.process_time() - t0)
    return best


@pytest.mark.slow
@pytest.mark.parametrize("shape", [fan_out, fan_out_duplicate, chain, chain_cycle, sources, fan_in])
def test_a_sub_mib_deploy_costs_cpu_linear_in_its_size(shape: Callable[[int], dict]) -> None:
    """Hole 15: a list searched per output made one sub-1 MiB deploy cost 4.8 s of CPU before
    it was refused, and a chain of 2,000 modules raised RecursionError. The largest command of
    each worst-case shape (15,000 modules, under 1 MiB) must cost about 10x what a tenth of it
    costs (linear), not 100x (quadratic). A ratio, not a time: it holds on any machine."""
    small, big = 1500, 15000
    assert len(json.dumps({"app": "a", "modules": shape(big)}, separators=(",", ":"))) < 1 << 20
    ratio = command_cpu(shape(big)) / max(command_cpu(shape(small)), 1e-3)
    assert ratio < 25, f"{shape.__name__}: {big} modules cost {ratio:.0f}x {small} (linear: ~10x)"
