"""Payloads of ``edgeva/v1/{device}/{tenant}/cmd/{verb}`` and of the replies.

- ``deploy``: a ``Deployment`` (native or Listing 1 form, see ``schemas.deployment``).
- ``update``: ``{"request_id", "app", "module", "args"}``; ``args`` are merged over the module's
  current args (a partial update: ``{"polygon": [...]}`` keeps every other arg).
- ``start`` / ``stop`` / ``remove``: ``{"request_id", "app"}``.
- ``status`` / ``metrics``: ``{"request_id", "app"?}``; no app = every app of the tenant.

A reply goes to ``reply/{request_id}`` (or the MQTT 5 response topic)::

    {"request_id": "8d3f", "ok": true, "result": {...}}
    {"request_id": "8d3f", "ok": false, "error": {"code": "cycle", "message": "...", "path": "..."}}
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edgeva.schemas.deployment import (
    ARGS_CHECKED,
    MAX_ARGS,
    Args,
    Deployment,
    Name,
    RequestId,
    parse_deployment,
)
from edgeva.schemas.errors import BAD_REQUEST, EdgevaError, ErrorCode, from_validation_error, shown
from edgeva.schemas.jsonio import loads_strict
from edgeva.schemas.topics import VERBS, Verb

__all__ = [
    "AppCommand", "DeployCommand", "ErrorBody", "ErrorReply", "MetricsCommand", "OkReply",
    "RemoveCommand", "Reply", "StartCommand", "StatusCommand", "StopCommand", "UpdateCommand",
    "Verb", "COMMAND_MODELS", "error_reply", "extract_request_id", "ok_reply", "parse_command",
    "parse_reply",
]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId | None = Field(default=None, description="echoed in the reply")


class AppCommand(_Command):
    """A command on one app."""

    app: Name


class StartCommand(AppCommand):
    """Start a deployed, stopped app (its modules are shared again where possible)."""


class StopCommand(AppCommand):
    """Stop an app; it stays deployed (and is restarted on reboot only if started again)."""


class RemoveCommand(AppCommand):
    """Stop and forget an app."""


class UpdateCommand(AppCommand):
    """Change a running module's args in place; ``args`` is merged over its current args."""

    module: Name = Field(description="module name as declared in the app's deployment")
    args: Args = Field(max_length=MAX_ARGS, json_schema_extra=ARGS_CHECKED,
                       description="args to change; the others keep their value")


class StatusCommand(_Command):
    """Ask for the state of one app, or of all the tenant's apps."""

    app: Name | None = None


class MetricsCommand(_Command):
    """Ask for the latest metrics of one app, or of all the tenant's apps."""

    app: Name | None = None


DeployCommand = Deployment

COMMAND_MODELS: dict[str, type[BaseModel]] = {
    "deploy": Deployment,
    "update": UpdateCommand,
    "start": StartCommand,
    "stop": StopCommand,
    "remove": RemoveCommand,
    "status": StatusCommand,
    "metrics": MetricsCommand,
}


class ErrorBody(BaseModel):
    """What went wrong: a stable code (see ``schemas.errors``), a message, where."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    path: str | None = None


class OkReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None
    ok: Literal[True]
    result: dict[str, Any] = Field(default_factory=dict)


class ErrorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None
    ok: Literal[False]
    error: ErrorBody


Reply = Annotated[OkReply | ErrorReply, Field(discriminator="ok")]
REPLY_ADAPTER: TypeAdapter[OkReply | ErrorReply] = TypeAdapter(Reply)


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def ok_reply(request_id: str | None, result: dict[str, Any] | None = None) -> bytes:
    """The JSON bytes of a success reply."""
    return _dumps({"request_id": request_id, "ok": True, "result": result or {}})


def error_reply(request_id: str | None, err: EdgevaError) -> bytes:
    """The JSON bytes of an error reply."""
    return _dumps({"request_id": request_id, "ok": False, "error": err.to_dict()})


def parse_reply(payload: bytes | str) -> OkReply | ErrorReply:
    """Read a reply (operator side). Raises ``EdgevaError(bad_json / bad_request)``."""
    try:
        return REPLY_ADAPTER.validate_python(loads_strict(payload))
    except ValidationError as exc:
        raise from_validation_error(exc) from None


_RID_TEXT = re.compile(r'"request_id"\s*:\s*"([^"\\]{1,128})"')


def extract_request_id(payload: bytes | str) -> str | None:
    """Best effort: the ``request_id`` of a payload that may be invalid, so that even a refusal
    reaches the right reply topic. None when there is none or it is not a valid id."""
    try:
        rid = json.loads(payload).get("request_id")
    except (RecursionError, ValueError):  # nested too deep, cut at the size limit, not JSON:
        head = payload[:4096]  # the reply still says so, to its id when it can be read
        text = head.decode("utf-8", "replace") if isinstance(head, bytes | bytearray) else head
        found = _RID_TEXT.search(text)
        rid = found.group(1) if found else None
    except (AttributeError, TypeError):
        return None
    try:
        return TypeAdapter(RequestId).validate_python(rid)
    except ValidationError:
        return None


def parse_command(verb: str, payload: bytes | str | dict[str, Any]) -> BaseModel:
    """Read the payload of a ``cmd/{verb}`` message into its model.

    Raises ``EdgevaError``: ``bad_json`` (not JSON), ``duplicate_name`` (a key twice),
    ``bad_request`` (wrong shape, or an unknown verb: path ``verb``), with a dotted path.
    ``deploy`` accepts the Listing 1 form too (which then must carry ``"app"``).
    """
    if verb not in VERBS:
        raise EdgevaError(BAD_REQUEST, f"unknown verb {shown(verb)} (known: {', '.join(VERBS)})", "verb")
    if verb == "deploy":
        return parse_deployment(payload)
    data = payload if isinstance(payload, dict) else loads_strict(payload)
    try:
        return COMMAND_MODELS[verb].model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None

