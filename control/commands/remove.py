"""``edgeva remove --device ID --app A``."""

from __future__ import annotations

import argparse

from edgeva.control.commands._common import add_verb, render_app

HELP = "stop an app and forget it (shared modules keep serving the other apps)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_verb(subparsers, "remove", HELP, render=render_app)
