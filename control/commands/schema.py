"""``edgeva schema export|check|docs``: the JSON Schema files and the module reference.

- ``export [DIR]``: (re)write the JSON Schemas, the deployment's module args typed by the
  module types installed here (``--builtin``: the built-in types only, as committed);
- ``check [DIR]``: exit 1 if any file differs from what ``export`` would write;
- ``docs [FILE]``: (re)write the module reference (``docs/modules.md``) from the configs;
  ``--check``: exit 1 if it differs instead.

The committed ``schemas/json`` and ``docs/modules.md`` hold the built-in types: after changing
a module config, run ``edgeva schema export --builtin && edgeva schema docs --builtin``
(``make schemas``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The committed reference (in a source checkout).
DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "modules.md"


def module_registry(builtin: bool = False) -> dict[str, Any]:
    """Type name -> Module class: every installed type, or the built-in ones."""
    from edgeva.modules.registry import BUILTIN, load_registry

    reg = load_registry()
    return {n: c for n, c in reg.items() if not builtin or n in BUILTIN}


def module_configs(builtin: bool = False) -> dict[str, Any]:
    """Type name -> config class (see ``module_registry``)."""
    return {n: c.config_class for n, c in module_registry(builtin).items()}


def _run(args: argparse.Namespace) -> int:
    from edgeva.schemas.export import check_json_schemas, export_json_schemas

    if args.action == "docs":
        return _docs(args)
    configs = module_configs(args.builtin)
    where = args.path or str(_default_dir())
    flag = " --builtin" if args.builtin else ""
    if args.action == "export":
        for path in export_json_schemas(configs, where):
            print(path)
        return 0
    bad = check_json_schemas(configs, where)
    for name in bad:
        print(f"out of date: {name}")
    if bad:
        print(f"run: edgeva schema export{flag} {where}")
        return 1
    print(f"JSON Schemas up to date ({len(configs)} module types)")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from edgeva.schemas.reference import render_reference

    text = render_reference(module_registry(args.builtin))
    path = Path(args.path) if args.path else DOCS_FILE
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            print(f"out of date: {path}\nrun: edgeva schema docs{' --builtin' if args.builtin else ''} {path}")
            return 1
        print(f"{path} up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    print(path)
    return 0


def _default_dir() -> Path:
    from edgeva.schemas.export import DEFAULT_DIR

    return DEFAULT_DIR


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "schema", help="export or check the JSON Schemas and the module reference",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["export", "check", "docs"],
                   help="export: (re)write the schemas; check: exit 1 if any differs; "
                   "docs: (re)write the module reference")
    p.add_argument("path", nargs="?", metavar="DIR|FILE",
                   help="schemas: directory of the .json files (default: the package's "
                   "schemas/json); docs: the Markdown file (default: docs/modules.md)")
    p.add_argument("--builtin", action="store_true",
                   help="built-in module types only (what the repository commits)")
    p.add_argument("--check", action="store_true", help="docs: exit 1 if the file differs")
    p.set_defaults(func=_run)
