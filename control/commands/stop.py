"""``edgeva stop --device ID --app A``."""

from __future__ import annotations

import argparse

from edgeva.control.commands._common import add_verb, render_app

HELP = "stop an app; it stays deployed and can be started again"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_verb(subparsers, "stop", HELP, render=render_app)
