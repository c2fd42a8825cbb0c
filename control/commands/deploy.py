"""``edgeva deploy FILE --device ID [--app NAME] [--no-check]``: send a deployment (native or
Listing 1 form).

The file is checked here first, as ``edgeva check`` does (JSON, shape, types and args against
the module types installed here, files it names, outputs, cycles), and every error is printed
with its path, so that a typo costs no round trip and nothing is sent; the device then checks
it again (and what only it knows: its devices, its running apps). ``--no-check`` skips the
local check (a type installed only on the device, files that exist only there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeva.control.commands._common import InvalidInput, Payload, UsageError, add_verb, render_app
from edgeva.schemas.errors import EdgevaError

HELP = "deploy an application (a JSON file in native or Listing 1 form; - reads stdin)"


def read_deployment(path: str, app: str | None = None, check: bool = False,
                    device: str | None = None) -> Payload:
    """The native form of the deployment in ``path`` (``-``: stdin), as the dict to send.

    ``app`` names the app of a Listing 1 file (which carries none), or must agree with the
    file's. ``check``: check it whole as ``edgeva check`` does (``device``: where it goes).
    Raises ``UsageError`` (unreadable file) or ``InvalidInput`` (invalid content, with one
    ``error <code> at <path>: <message>`` line per error).
    """
    from edgeva.schemas.deployment import parse_deployment

    try:
        # bytes: a file that is not UTF-8 gets the device's own bad_json error
        text = _stdin_bytes() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    where = "stdin" if path == "-" else path
    if check:
        from edgeva.control.commands.check import error_lines, installed_registry
        from edgeva.schemas.check import check_deployment

        result = check_deployment(text, installed_registry(), app=app, local_device=device)
        if not result.ok:
            lines = error_lines([e.to_dict() for e in result.errors])
            raise InvalidInput("\n".join(lines) + f"\n(in {where}; nothing was sent; --no-check sends it "
                               "unchecked, e.g. for a type or a file that only the device has)")
    try:
        data = parse_deployment(text, app=app).model_dump(mode="json")
    except EdgevaError as exc:
        raise InvalidInput(f"error {exc} (in {where}; nothing was sent)") from None
    if data.get("request_id") is None:
        data.pop("request_id", None)  # the client makes one up
    return data


def _stdin_bytes() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)  # a test's StringIO has no buffer
    return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(
        subparsers, "deploy", HELP, app="optional", render=render_app, timeout=30.0,
        payload=lambda args: read_deployment(args.file, args.app, check=not args.no_check,
                                             device=args.device),
        app_help="app name: required for a Listing 1 file, else must match the file's",
    )
    p.add_argument("file", metavar="FILE", help="deployment JSON file, or - for stdin")
    p.add_argument("--no-check", action="store_true",
                   help="send without checking types, args and files here (the device still checks)")
