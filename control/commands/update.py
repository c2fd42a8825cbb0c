"""``edgeva update --device ID --app A --module M --set key=value ... | --args JSON``.

Only the given args change (the device merges them over the module's current args), in
place when the module supports it.
"""

from __future__ import annotations

import argparse
import json

from edgeva.control.commands._common import Payload, UsageError, add_verb

HELP = "change a running module's args in place (a new RoI polygon, a new gallery...)"


def parse_set(items: list[str]) -> Payload:
    """``["fps=5", "source=cam.mp4", 'polygon=[[0,0],[9,9]]']`` -> args: a value that parses
    as JSON is taken as such (numbers, lists, true/false/null), anything else as a string."""
    args: Payload = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value")
        try:
            args[key.strip()] = json.loads(raw)
        except ValueError:
            args[key.strip()] = raw
    return args


def _payload(args: argparse.Namespace) -> Payload:
    merged: Payload = {}
    if args.args is not None:
        try:
            merged = json.loads(args.args)
        except ValueError as exc:
            raise UsageError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(merged, dict):
            raise UsageError("--args must be a JSON object, e.g. '{\"fps\": 5}'")
    merged.update(parse_set(args.set or []))
    if not merged:
        raise UsageError("nothing to change: give --set key=value or --args JSON")
    return {"app": args.app, "module": args.module, "args": merged}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "update", HELP, payload=_payload)
    p.add_argument("--module", required=True, help="module name as declared in the deployment")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an arg to change; VALUE is JSON if it parses, else a string (repeatable)")
    p.add_argument("--args", metavar="JSON", help="args to change, as one JSON object")
