"""The ``edgeva`` console script (and ``python -m edgeva``): one sub-command per module.

The operator's commands live in ``control/commands`` (``edgeva.control.commands``), the
benchmarks in ``bench/`` (``edgeva.bench``). This is the one module above both: nothing below it
imports a benchmark."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command name -> the module whose add_parser() adds it. Commands import their heavy parts
# (numpy, cv2, onnxruntime) when they run, so that `edgeva deploy` does not pay for them.
_CONTROL = "edgeva.control.commands"
COMMANDS = {
    "agent": f"{_CONTROL}.agent",
    "bench": "edgeva.bench.cli",
    "schema": f"{_CONTROL}.schema",
    "check": f"{_CONTROL}.check",
    "broker": f"{_CONTROL}.broker",
    "deploy": f"{_CONTROL}.deploy",
    "update": f"{_CONTROL}.update",
    "start": f"{_CONTROL}.start",
    "stop": f"{_CONTROL}.stop",
    "remove": f"{_CONTROL}.remove",
    "status": f"{_CONTROL}.status",
    "metrics": f"{_CONTROL}.metrics",
    "demo": f"{_CONTROL}.demo",
    "plan": f"{_CONTROL}.plan",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeva", description="edge video analytics runtime")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS.values():
        importlib.import_module(mod).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
