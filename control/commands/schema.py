"""``edgeva schema export|check [DIR]``: write or verify the JSON Schema files."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from schemas.export import check_json_schemas, export_json_schemas

    if args.action == "export":
        for path in export_json_schemas(args.dir):
            print(path)
        return 0
    bad = check_json_schemas(args.dir)
    for name in bad:
        print(f"out of date: {name}")
    if bad:
        print(f"run: edgeva schema export {args.dir}")
        return 1
    print("JSON Schemas up to date")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from schemas.export import DEFAULT_DIR

    p = subparsers.add_parser(
        "schema", help="export or check the JSON Schemas of every control-plane message"
    )
    p.add_argument("action", choices=["export", "check"],
                   help="export: (re)write the files; check: exit 1 if any differs")
    p.add_argument("dir", nargs="?", default=str(DEFAULT_DIR),
                   help="directory of the .json files (default: %(default)s)")
    p.set_defaults(func=_run)
