"""``edgeva agent``'s settings: each default written once (issue 22).

``AgentSettings`` (agent/settings.py) holds every setting's default, bounds and help; the command
line is generated from it and the classes the settings end up in read their defaults from it.
These tests hold the two sides together: the flags (names, environment variables, defaults as
parsed and as shown in ``--help``), the model, and the constructors an embedder calls without
the flags (the demo, the benchmarks): what each gets when given nothing is what ``edgeva agent``
with no flags gets. Nothing here starts a process.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeva.agent.settings import DEFAULT_BROKER, AgentSettings, default, mb_to_bytes
from edgeva.control.commands import agent as agent_cmd
from edgeva.control.commands._flags import flag_errors, flag_name, model_from_args

# The flags and environment variables that deployments pass (ansible/, docker/, the
# architecture brief's contracts): renaming one breaks them, so they are pinned here.
FLAGS = [
    "--device", "--broker", "--state-dir", "--prefix", "--username", "--password", "--password-file",
    "--tls-ca", "--tls-cert", "--tls-key", "--tls-insecure", "--protocol", "--metrics-interval",
    "--event-rate", "--metrics-port", "--metrics-host", "--slots", "--media-dir", "--tenant-media-root",
    "--output-root", "--url-scheme", "--url-host", "--max-apps", "--max-modules", "--max-slot-mb",
    "--max-shm-mb", "--restart-backoff-first", "--restart-backoff-cap", "--data-bind", "--data-advertise",
    "--link-tls-ca", "--link-tls-cert", "--link-tls-key", "--link-tls-check-name", "--link-max-mb",
    "--link-slot-mb", "--fleet-token", "--fleet-token-file", "--part-timeout", "--link-timeout",
]
ENV = {
    "broker": "EDGEVA_BROKER", "username": "EDGEVA_USERNAME", "password": "EDGEVA_PASSWORD",
    "password_file": "EDGEVA_PASSWORD_FILE", "media_dir": "EDGEVA_MEDIA_DIRS",
    "tenant_media_root": "EDGEVA_TENANT_MEDIA_ROOT", "output_root": "EDGEVA_OUTPUT_ROOT",
    "data_bind": "EDGEVA_DATA_BIND", "fleet_token": "EDGEVA_FLEET_TOKEN",
}


@pytest.fixture(autouse=True)
def _no_edgeva_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads EDGEVA_* when it is built: none of the caller's may leak in."""
    for var in list(os.environ):
        if var.startswith("EDGEVA_"):
            monkeypatch.delenv(var)


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    top = argparse.ArgumentParser(prog="edgeva")
    sub = top.add_subparsers(dest="command")
    agent_cmd.add_parser(sub)
    return top, sub.choices["agent"]


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in p._actions if a.option_strings and a.dest != "help"}


def test_the_flags_are_the_models_fields_one_for_one() -> None:
    """No flag without a setting, no setting without its flag, and every flag deployments pass
    still there under its name."""
    _, p = _parser()
    opts = _options(p)
    assert list(opts) == FLAGS
    assert {a.dest for a in opts.values()} == set(AgentSettings.model_fields)
    assert all(opts[flag_name(n)].dest == n for n in AgentSettings.model_fields)


def test_every_flags_default_is_the_models() -> None:
    """An empty command line parses to the model's defaults, field by field."""
    top, _ = _parser()
    args = top.parse_args(["agent", "--device", "d"])
    s = model_from_args(AgentSettings, args)
    assert s == AgentSettings(device="d")
    for name, info in AgentSettings.model_fields.items():
        if name == "device":
            continue
        # a repeatable flag is None until given (argparse would append to a list default);
        # the model fills in its default then
        parsed = getattr(args, name)
        assert parsed == info.default or (parsed is None and info.default == default(name)), name
        assert getattr(s, name) == default(name), name


def test_help_shows_every_default() -> None:
    _, p = _parser()
    p.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100_000, max_help_position=100_000)
    lines = {line.split()[0]: line for line in p.format_help().splitlines() if line.startswith("  --")}
    shown = {float: lambda v: f"{v:g}", list: lambda v: ",".join(v)}
    for name, info in AgentSettings.model_fields.items():
        line = lines[flag_name(name)]
        if info.default not in (None, False) and not info.is_required() and info.default != []:
            text = shown.get(type(info.default), str)(info.default)
            assert f"default: {text})" in line or f"default: {text};" in line, line
        if name in ENV:
            assert f"env {ENV[name]}" in line, line
    # a default computed when the agent starts is said in words
    assert "default: the device id" in lines["--prefix"]
    assert "default: ~/.local/state/edgeva/DEVICE" in lines["--state-dir"]


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--slots", "1", "must be >= 2"), ("--slots", "eight", "valid integer"), ("--metrics-interval", "0", "> 0"),
    ("--event-rate", "-1", ">= 0"), ("--metrics-port", "65536", "0..65535"), ("--metrics-port", "-1", "0..65535"),
    ("--max-apps", "-1", ">= 0"), ("--max-modules", "-1", ">= 0"), ("--max-slot-mb", "0", "> 0"),
    ("--max-shm-mb", "-5", "> 0"), ("--restart-backoff-first", "0", "> 0"), ("--restart-backoff-cap", "-1", "> 0"),
    ("--link-max-mb", "0", "> 0"), ("--link-slot-mb", "0", "> 0"), ("--part-timeout", "0", "> 0"),
    ("--link-timeout", "0", "> 0"), ("--protocol", "4", "invalid choice"),
])
def test_a_bad_value_is_a_usage_error_naming_its_flag(flag: str, value: str, says: str, capsys) -> None:
    """Refused as the flag is parsed (exit code 2, before the agent touches anything), with the
    flag, the value and the bounds."""
    top, _ = _parser()
    with pytest.raises(SystemExit) as e:
        top.parse_args(["agent", "--device", "d", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: " in err and repr(value) in err and says in err, err


def test_values_from_the_environment_are_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, var in ENV.items():
        monkeypatch.setenv(var, f"/x/{name}")
    monkeypatch.setenv("EDGEVA_MEDIA_DIRS", os.pathsep.join(["/m1", "/m2"]))
    top, _ = _parser()
    s = model_from_args(AgentSettings, top.parse_args(["agent", "--device", "d"]))
    assert s.media_dir == ["/m1", "/m2"]
    assert all(getattr(s, n) == f"/x/{n}" for n in ENV if n != "media_dir")
    # a flag wins over its variable
    s = model_from_args(AgentSettings, top.parse_args(["agent", "--device", "d", "--broker", "mqtt://b:1"]))
    assert s.broker == "mqtt://b:1"


def test_url_lists_are_repeatable_and_comma_separated() -> None:
    top, _ = _parser()
    s = model_from_args(AgentSettings, top.parse_args(
        ["agent", "--device", "d", "--url-host", "a, b", "--url-host", "10.0.0.0/8", "--url-scheme", ""]))
    assert s.url_host == ["a", "b", "10.0.0.0/8"] and s.url_scheme == []


def test_the_model_refuses_unknown_settings_and_names_the_flag_of_a_bad_one() -> None:
    with pytest.raises(ValidationError):
        AgentSettings(device="d", slot=4)  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as e:
        model_from_args(AgentSettings, argparse.Namespace(device="d", slots=1, link_max_mb=0))
    msg = flag_errors(e.value)
    assert msg.startswith("--slots 1: ") and "; --link-max-mb 0: " in msg, msg


def test_what_embedders_get_without_the_flags_is_the_agents_default() -> None:
    """The constructors' defaults (AgentCore, AgentBridge, the policies, links) are the model's:
    the demo and the benchmarks run what a deployed agent runs unless they say otherwise."""
    from edgeva.agent.bridge import AgentBridge
    from edgeva.agent.core import AgentCore
    from edgeva.agent.dataplane.link import Link
    from edgeva.agent.dataplane.relay import LinkToRing
    from edgeva.agent.exporter import MetricsServer
    from edgeva.agent.limits import TenantLimits
    from edgeva.agent.mqtt import PROTOCOLS, MqttOptions
    from edgeva.agent.paths import PathPolicy
    from edgeva.agent.peers import Peers
    from edgeva.agent.supervisor import RestartPolicy
    from edgeva.control.commands import _common

    def defaults(fn) -> dict:
        return {k: v.default for k, v in inspect.signature(fn).parameters.items()}

    core = defaults(AgentCore.__init__)
    assert core["nslots"] == default("slots") == 8
    assert core["metrics_interval"] == default("metrics_interval") == 2.0
    assert core["link_slot_bytes"] == mb_to_bytes(default("link_slot_mb")) == 8 << 20
    bridge = defaults(AgentBridge.__init__)
    assert bridge["metrics_period"] == default("metrics_interval")
    assert bridge["event_rate"] == default("event_rate") == 100.0
    assert bridge["part_timeout"] == default("part_timeout") == 45.0
    assert bridge["link_timeout"] == default("link_timeout") == 15.0
    lim = TenantLimits()
    assert (lim.max_apps, lim.max_modules) == (default("max_apps"), default("max_modules")) == (32, 64)
    assert lim.max_slot_bytes == mb_to_bytes(default("max_slot_mb")) == 64 << 20
    assert lim.max_shm_bytes == mb_to_bytes(default("max_shm_mb")) == 2 << 30
    r = RestartPolicy()
    assert (r.first_s, r.cap_s) == (default("restart_backoff_first"), default("restart_backoff_cap")) == (1.0, 300.0)
    link_max = mb_to_bytes(default("link_max_mb"))
    assert defaults(Peers.__init__)["max_message_size"] == defaults(Link.__init__)["max_message_size"] == link_max
    assert link_max == 16 << 20
    assert defaults(LinkToRing.__init__)["nslots"] == default("slots")
    assert defaults(MetricsServer.__init__)["host"] == default("metrics_host") == "127.0.0.1"
    paths = PathPolicy.make()
    assert sorted(paths.url_schemes) == default("url_scheme") == ["rtsp", "rtsps"]
    assert paths.output_root is not None and paths.output_root.name == default("output_root") == "out"
    assert not paths.url_hosts and not paths.url_networks and default("url_host") == []
    # the MQTT side: paho is not imported to build the parser, so the choices are written in the
    # model too; they must stay the client's
    assert tuple(AgentSettings.model_fields["protocol"].annotation.__args__) == PROTOCOLS
    assert MqttOptions().protocol == default("protocol") == "auto"
    assert _common.DEFAULT_BROKER == DEFAULT_BROKER == default("broker")


def test_a_default_is_a_copy_and_a_required_setting_has_none() -> None:
    default("url_scheme").append("http")
    assert default("url_scheme") == ["rtsp", "rtsps"]
    with pytest.raises(KeyError):
        default("device")
    with pytest.raises(KeyError):
        default("no_such_setting")


def test_the_security_docs_limits_table_says_the_defaults() -> None:
    """docs/security.md's table of limits repeats the defaults for operators: it must say the
    model's (a row per flag: `| what | default | `--flag` | when |`)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    rows = re.findall(r"^\|[^|]+\| ([0-9.,]+)(?: MiB|/s)? \| `(--[a-z-]+)` \|", doc, re.M)
    assert len(rows) >= 8, rows
    for value, flag in rows:
        name = flag[2:].replace("-", "_")
        assert float(value.replace(",", "")) == default(name), (flag, value, default(name))


@pytest.mark.parametrize(("doc", "pattern", "flag"), [
    ("protocol.md", r"`--link-timeout`, default\s+([0-9.]+) s", "--link-timeout"),
    ("protocol.md", r"`--part-timeout`, default\s+([0-9.]+) s", "--part-timeout"),
    ("prometheus.md", r"`--metrics-interval`, ([0-9.]+) s by default", "--metrics-interval"),
])
def test_the_docs_say_the_defaults(doc: str, pattern: str, flag: str) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    found = re.findall(pattern, text)
    assert found and all(float(v) == default(flag[2:].replace("-", "_")) for v in found), (doc, flag, found)
