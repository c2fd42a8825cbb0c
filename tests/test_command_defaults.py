"""Each command's defaults written once (issue 22): what a flag defaults to is what the function
or class it feeds defaults to, or the function has no default of its own to drift from.

(``edgeva agent``'s: tests/test_agent_settings.py.) Nothing here starts a process.
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

import pytest

from edgeva.cli import build_parser


@pytest.fixture(autouse=True)
def _no_edgeva_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("EDGEVA_"):
            monkeypatch.delenv(var)


def _sub(*path: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = build_parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


def _defaults(p: argparse.ArgumentParser) -> dict:
    return {a.dest: a.default for a in p._actions if a.option_strings}


def _params(fn) -> dict:
    return {k: v.default for k, v in inspect.signature(fn).parameters.items()}


def test_device_commands_default_to_what_the_client_does() -> None:
    from edgeva.agent.mqtt import PROTOCOLS, MqttOptions
    from edgeva.agent.settings import DEFAULT_BROKER
    from edgeva.control.client import EdgevaClient
    from edgeva.control.commands._common import REPLY_TIMEOUT_S

    status = _sub("status")
    d = _defaults(status)
    assert d["tenant"] == _params(EdgevaClient.__init__)["tenant"] == "default"
    assert d["protocol"] == MqttOptions().protocol
    assert tuple(next(a for a in status._actions if a.dest == "protocol").choices) == PROTOCOLS
    assert d["timeout"] == REPLY_TIMEOUT_S == _params(EdgevaClient.request)["timeout"]
    assert d["broker"] == DEFAULT_BROKER
    assert _defaults(_sub("deploy"))["timeout"] == 30.0  # its own, given by the command
    assert _defaults(_sub("plan"))["tenant"] == "default"


def test_the_broker_command_listens_where_commands_dial_by_default() -> None:
    from edgeva.agent.settings import DEFAULT_BROKER
    from edgeva.control.broker import EmbeddedBroker

    d, ctor = _defaults(_sub("broker")), _params(EmbeddedBroker.__init__)
    assert (d["port"], d["host"]) == (ctor["port"], ctor["host"]) == (1883, "127.0.0.1")
    assert f"mqtt://{d['host']}:{d['port']}" == DEFAULT_BROKER


def test_demo_and_plan_defaults_are_their_functions() -> None:
    from edgeva.control.demo.apps import CLIP
    from edgeva.control.demo.run import run_demo
    from edgeva.control.plan import place

    d, fn = _defaults(_sub("demo")), _params(run_demo)
    assert (d["seconds"], d["fps"], d["source"]) == (fn["seconds"], fn["fps"], fn["source"]) == (60.0, 10.0, CLIP)
    assert Path(d["out"]) == fn["out_dir"] == Path("out")
    assert _defaults(_sub("plan"))["link_ms"] == _params(place)["link_ms"] == 3.0


def test_the_benchmarks_take_their_flags_defaults_from_their_parsers_only() -> None:
    """A measurement function either has no default for a value its flag defaults (the parser
    is the one place) or the same one, read from one constant (hop)."""
    from edgeva.agent.settings import default
    from edgeva.bench.chaos.run import run_chaos
    from edgeva.bench.deploy.run import run_deploy_bench
    from edgeva.bench.fleet.run import run_fleet_bench
    from edgeva.bench.hop import PAYLOADS, ROUNDS
    from edgeva.bench.hop.run import run_hop
    from edgeva.bench.paper.run import run_paper
    from edgeva.bench.soak.run import run_soak

    empty = inspect.Parameter.empty
    for fn, names in [
        (run_chaos, ["seed", "busy", "nice"]),
        (run_deploy_bench, ["runs"]),
        (run_fleet_bench, ["idle_s", "metrics_period"]),
        (run_paper, ["quick", "out_dir", "scalability"]),
        (run_soak, ["kill_every", "broker_every", "broker_down", "sample_every"]),
    ]:
        p = _params(fn)
        assert all(p[n] is empty for n in names), (fn.__name__, {n: p[n] for n in names})
    hop = _defaults(_sub("bench", "hop"))
    assert tuple(hop["payloads"]) == _params(run_hop)["payloads"] == PAYLOADS
    assert hop["rounds"] == ROUNDS
    # "each agent's metrics period, as deployed": the agent's default
    assert _defaults(_sub("bench", "fleet"))["metrics_interval"] == default("metrics_interval")
