"""The ``edgeva`` console script: one sub-command per file in ``control/commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command name -> module in control.commands. Imported lazily so that `edgeva deploy`
# does not pay for numpy/cv2/onnxruntime imports.
COMMANDS = {
    "agent": "agent",
    "bench": "bench",
    "schema": "schema",
    "check": "check",
    "broker": "broker",
    "deploy": "deploy",
    "update": "update",
    "start": "start",
    "stop": "stop",
    "remove": "remove",
    "status": "status",
    "metrics": "metrics",
    "demo": "demo",
    "plan": "plan",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeva", description="edge video analytics runtime")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS.values():
        importlib.import_module(f"edgeva.control.commands.{mod}").add_parser(sub)
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
