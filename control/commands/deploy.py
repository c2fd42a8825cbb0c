"""``edgeva deploy FILE --device ID [--app NAME]``: send a deployment (native or Listing 1 form).

The file is read and its shape checked here first (JSON, duplicate keys, fields), so that a
typo costs no round trip; the device then checks the graph (types, args, cycles, devices).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from control.commands._common import InvalidInput, Payload, UsageError, add_verb, render_app
from schemas.errors import EdgevaError

HELP = "deploy an application (a JSON file in native or Listing 1 form; - reads stdin)"


def read_deployment(path: str, app: str | None = None) -> Payload:
    """The native form of the deployment in ``path`` (``-``: stdin), as the dict to send.

    ``app`` names the app of a Listing 1 file (which carries none), or must agree with the
    file's. Raises ``UsageError`` (unreadable file) or ``InvalidInput`` (invalid content,
    with ``error <code> at <path>: <message>``).
    """
    from schemas.deployment import parse_deployment

    try:
        # bytes: a file that is not UTF-8 gets the device's own bad_json error
        text = _stdin_bytes() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = parse_deployment(text, app=app).model_dump(mode="json")
    except EdgevaError as exc:
        where = "stdin" if path == "-" else path
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
        payload=lambda args: read_deployment(args.file, args.app),
        app_help="app name: required for a Listing 1 file, else must match the file's",
    )
    p.add_argument("file", metavar="FILE", help="deployment JSON file, or - for stdin")
