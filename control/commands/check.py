"""``edgeva check FILE|DIR... [--fleet STATES] [--device ID] [--app NAME] [--json]``: check
deployments offline, without a broker or an agent, listing every error with its path.

Each file (a directory: its ``*.json``) is checked as the agent would check a deploy of it
(``schemas.check``): JSON, the Listing 1 form, the deployment's shape, every module's args
against the module types installed here (files a source or a gallery names are looked up on
this machine), outputs, cycles; with ``--fleet``, the devices modules name against the fleet's
retained states. Exit 0 when every file is fine, 1 when any has an error, 2 on a usage error.

``--fleet`` reads the retained states of ``edgeva/v1/+/state``: a JSON object (one state, or
device -> state), a list of states, or one state per line, with or without the topic in front
(what ``mosquitto_sub -v -t 'edgeva/v1/+/state' -W 2`` prints).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeva.control.commands._common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, UsageError, fail

HELP = "check deployment files offline (types, args, graph, files, devices), listing every error"


def installed_registry() -> dict[str, Any]:
    """Every module type installed here (built-in and ``edgeva.modules`` entry points)."""
    from edgeva.modules.registry import load_registry

    return dict(load_registry())


def load_fleet(path: str) -> dict[str, Any]:
    """Device -> ``DeviceState`` from a file of retained states (see the module doc)."""
    from pydantic import ValidationError

    from edgeva.schemas.state import DeviceState

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read fleet file {path}: {exc}") from None
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
        if isinstance(data, dict) and "device" not in data:
            items = list(data.values())
    except ValueError:  # one state per line, maybe after its topic (mosquitto_sub -v)
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            body = line[line.index("{"):] if "{" in line else line
            try:
                items.append(json.loads(body))
            except ValueError:
                raise UsageError(f"{path}:{n}: not a JSON device state") from None
    states = {}
    for n, item in enumerate(items):
        try:
            st = DeviceState.model_validate(item)
        except ValidationError as exc:
            raise UsageError(f"{path}: state #{n + 1} is not a device state: {exc.errors()[0]['msg']}") from None
        states[st.device] = st
    return states


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise UsageError(f"no .json file in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"no such file: {p}")
    return out


def check_files(paths: list[Path], registry: dict[str, Any], app: str | None = None,
                device: str | None = None, fleet: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One ``{"file", "ok", "app", "modules", "errors"}`` per file."""
    from edgeva.schemas.check import check_deployment

    reports = []
    for path in paths:
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        result = check_deployment(payload, registry, app=app, local_device=device, fleet=fleet)
        reports.append({"file": str(path), **result.to_dict()})
    return reports


def error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """``error <code> at <path>: <message>``, one per error."""
    return [f"error {e['code']}{' at ' + e['path'] if e.get('path') else ''}: {e['message']}" for e in errors]


def _run(args: argparse.Namespace) -> int:
    try:
        paths = _files(args.files)
        fleet = load_fleet(args.fleet) if args.fleet else None
        reports = check_files(paths, installed_registry(), args.app, args.device, fleet)
    except UsageError as exc:
        return fail(EXIT_USAGE, f"edgeva check: error: {exc}")
    ok = all(r["ok"] for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "files": reports}, indent=2))
    else:
        for r in reports:
            if r["ok"]:
                print(f"{r['file']}: ok (app {r['app']}, {r['modules']} modules)")
                for w in r.get("warnings", []):
                    print(f"  warning at {w['path']}: {w['message']}")
                continue
            n = len(r["errors"])
            print(f"{r['file']}: {n} error{'s' if n > 1 else ''}")
            for line in error_lines(r["errors"]):
                print(f"  {line}")
            for w in r.get("warnings", []):
                print(f"  warning at {w['path']}: {w['message']}")
    return EXIT_OK if ok else EXIT_REFUSED


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE|DIR", help="deployment files, or directories of *.json")
    p.add_argument("--app", help="app name for Listing 1 files (which carry none)")
    p.add_argument("--device", help="the device the deploys go to (with --fleet: the coordinator)")
    p.add_argument("--fleet", metavar="STATES", help="file of the fleet's retained device states")
    p.add_argument("--json", action="store_true", help="print {ok, files: [{file, ok, app, modules, errors}]}")
    p.set_defaults(func=_run)
