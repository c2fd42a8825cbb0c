"""``edgeva status --device ID [--app A]``: the tenant's apps on a device and their modules."""

from __future__ import annotations

import argparse

from edgeva.control.commands._common import Payload, add_verb, app_lines, render_generic

HELP = "show the state of one app, or of all the tenant's apps, on a device"


def render_status(args: argparse.Namespace, result: Payload) -> None:
    """``{"device", "apps": {name: app result}}`` as one block per app."""
    apps = result.get("apps")
    if not isinstance(apps, dict):
        render_generic(args, result)
        return
    print(f"device {result.get('device', args.device)}, tenant {args.tenant}: "
          f"{len(apps)} app{'s' if len(apps) != 1 else ''}")
    for name, app in apps.items():
        lines = app_lines(app) if isinstance(app, dict) else None
        print("\n".join(lines) if lines else f"app {name}: {app}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_verb(subparsers, "status", HELP, app="optional", render=render_status)
