"""Flags that several benchmarks take, written once."""

from __future__ import annotations

import argparse


def csv_list(s: str) -> list[str]:
    """``a,b,,c`` -> ``["a", "b", "c"]`` (an argparse ``type``)."""
    return [x.strip() for x in s.split(",") if x.strip()]


def outputs(p: argparse.ArgumentParser, json_help: str = "write the results as JSON") -> None:
    """The --json / --plot pair every benchmark takes."""
    p.add_argument("--json", metavar="FILE", help=json_help)
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG chart")
