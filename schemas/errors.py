"""The one error type of the control plane, and its stable codes.

Every refusal the agent sends back is ``{"code", "message", "path"}``. ``code`` is stable
(scripts and the Node-RED flows branch on it); ``message`` is for people and may change;
``path`` points into the request in its native form, dotted, with list indices in brackets:
``modules.detector.args.threshold``, ``modules.decoder.outputs[1]``. A key that is not a plain
identifier is quoted: ``modules["cam.1"].args``.

Codes:

- ``bad_json``: the payload is not UTF-8 JSON (or holds NaN / Infinity).
- ``bad_request``: JSON, but not the shape the command needs (schema error, bad topic).
- ``unknown_type``: a module type no installed package provides.
- ``bad_args``: a module's args do not fit its type's config.
- ``cycle``: the module graph loops back on itself.
- ``unknown_output``: an ``outputs`` entry names no module of the deployment.
- ``bad_wiring``: an ``outputs`` entry feeds a module nothing it can use (``decoder -> roi``:
  roi needs tracks or detections); the path is that entry (``schemas.ports``).
- ``duplicate_name``: a JSON object repeats a key (two modules with one name, an arg twice),
  or an ``outputs`` list names a module twice.
- ``unknown_device``: a module is placed on a device the agent does not know.
- ``forbidden``: a tenant touched another tenant's app.
- ``not_found``: no such app or module.
- ``conflict``: the app exists already (deploy) or the request clashes with the current state.
- ``setup_failed``: a module refused to start (``ModuleError`` from ``setup``); rolled back.
- ``timeout``: the device did not finish in time.
- ``limit``: a per-tenant limit of the device (apps, modules, output size, shared memory) or
  the device's free shared memory would be exceeded; the message names it and its flag.
- ``internal``: a bug; the message says where to look.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

from pydantic import ValidationError

ErrorCode = Literal[
    "bad_json",
    "bad_request",
    "unknown_type",
    "bad_args",
    "cycle",
    "unknown_output",
    "duplicate_name",
    "bad_wiring",
    "unknown_device",
    "forbidden",
    "not_found",
    "conflict",
    "setup_failed",
    "timeout",
    "internal",
    "limit",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)

BAD_JSON: ErrorCode = "bad_json"
BAD_REQUEST: ErrorCode = "bad_request"
UNKNOWN_TYPE: ErrorCode = "unknown_type"
BAD_ARGS: ErrorCode = "bad_args"
CYCLE: ErrorCode = "cycle"
UNKNOWN_OUTPUT: ErrorCode = "unknown_output"
DUPLICATE_NAME: ErrorCode = "duplicate_name"
BAD_WIRING: ErrorCode = "bad_wiring"
UNKNOWN_DEVICE: ErrorCode = "unknown_device"
FORBIDDEN: ErrorCode = "forbidden"
NOT_FOUND: ErrorCode = "not_found"
CONFLICT: ErrorCode = "conflict"
SETUP_FAILED: ErrorCode = "setup_failed"
TIMEOUT: ErrorCode = "timeout"
INTERNAL: ErrorCode = "internal"
LIMIT: ErrorCode = "limit"


#: Longest message and path of an error: replies echo parts of hostile input.
MAX_MESSAGE, MAX_PATH, MAX_SHOWN = 600, 200, 64


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` as a message may echo it: quoted (``repr``, so it can never read as our own
    words or hide control characters) and cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EdgevaError(Exception):
    """A refusal with a stable ``code``, a readable ``message`` and where it applies (``path``).
    Both are cut to ``MAX_MESSAGE`` / ``MAX_PATH`` characters."""

    def __init__(self, code: ErrorCode, message: str, path: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        message = _cut(message, MAX_MESSAGE)
        path = _cut(path, MAX_PATH) if path is not None else None
        super().__init__(f"{code} at {path}: {message}" if path else f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a reply."""
        return {"code": self.code, "message": self.message, "path": self.path}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EdgevaError) and self.to_dict() == other.to_dict()

    __hash__ = Exception.__hash__


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(loc: Iterable[str | int]) -> str:
    """``("modules", "det", "outputs", 0)`` -> ``modules.det.outputs[0]``.

    Keys that are not plain (dots, spaces...) are quoted so the path stays unambiguous.
    Pydantic's ``[key]`` marker (a bad dict key) is dropped: the path then names the key itself.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


def describe(err: dict[str, Any]) -> str:
    """A short readable message for one of pydantic's errors (``exc.errors()`` item)."""
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    msg = str(err.get("msg", "invalid"))
    if "input" in err and kind not in ("model_type", "dict_type"):
        shown = repr(err["input"])
        msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return msg


def from_validation_error(
    exc: ValidationError,
    prefix: Sequence[str | int] = (),
    code: ErrorCode = BAD_REQUEST,
    hint: str = "",
) -> EdgevaError:
    """Turn pydantic's error list into one ``EdgevaError``: the first error, its dotted path
    (under ``prefix``) and a short message; further errors are counted in the message."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = format_path([*prefix, *first["loc"]]) or None
    message = describe(first)
    if hint:
        message += f" ({hint})"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''}"
    return EdgevaError(code, message, path)
