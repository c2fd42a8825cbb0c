"""``edgeva start --device ID --app A``."""

from __future__ import annotations

import argparse

from edgeva.control.commands._common import add_verb, render_app

HELP = "start a deployed, stopped app (running modules are shared again where possible)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_verb(subparsers, "start", HELP, render=render_app)
