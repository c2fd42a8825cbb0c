"""Pins of the per-tenant limits' defaults and their messages (issue 25): ``TenantLimits()``
(what ``AgentCore`` uses when given no limits, as embedders and tests do) is exactly what
``edgeva agent`` enforces with no flags, and the sizes in a refusal read in MiB."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from edgeva.agent.limits import TenantLimits, mib
from edgeva.control.commands import agent as agent_cmd


def _agent_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cmd.add_parser(parser.add_subparsers(dest="cmd"))
    return parser.parse_args(["agent", "--device", "d", "--broker", "mqtt://127.0.0.1:1"])


def test_the_default_limits_are_the_agent_flags_defaults() -> None:
    a, lim = _agent_defaults(), TenantLimits()
    assert lim.max_apps == a.max_apps == 32
    assert lim.max_modules == a.max_modules == 64
    assert lim.max_slot_bytes == int(a.max_slot_mb * (1 << 20)) == 64 << 20
    assert lim.max_shm_bytes == int(a.max_shm_mb * (1 << 20)) == 2 << 30


def test_sizes_read_in_mib() -> None:
    assert mib(0) == "0.0 MiB"
    assert mib(3 << 20) == "3.0 MiB"
    assert mib(1536 << 10) == "1.5 MiB"
    assert mib((2 << 30) + 1) == "2048.0 MiB"


def test_limits_cannot_be_changed_after_they_are_made() -> None:
    """One TenantLimits is shared by every tenant's checks: a check that assigned to it (a
    typo, a "temporary" raise for one deploy) would change every tenant's limit."""
    lim = TenantLimits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        lim.max_apps = 10_000  # type: ignore[misc]
    assert lim.max_apps == 32
