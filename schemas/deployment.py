"""A deployment: one application and its module graph, in native or Listing 1 form.

Native form (what the agent stores and what every error path refers to)::

    {"request_id": "8d3f", "app": "tracking",
     "modules": {"decoder":  {"type": "decoder", "args": {"source": "clip.mp4"},
                              "outputs": ["detector"]},
                 "detector": {"type": "detector", "args": {}, "device": "cam-02"}}}

The paper's Listing 1 form means the same (the type is the prefix of ``<type>_args``)::

    {"Decoder_1": {"decoder_args": {"source": "clip.mp4"},
                   "runtime_args": {"outputs": ["Inference_1"]}},
     "Inference_1": {"inference_args": {}, "runtime_args": {}}}

Either form may carry a top-level ``"$schema"`` string (where an editor finds the JSON Schema,
``schemas/json/deployment.json``); it is dropped on reading. Listing 1 may carry top-level
``"request_id"`` and ``"app"`` strings; otherwise the app name comes from
the caller. Errors found while reading Listing 1 itself point into what was written
(``Decoder_1.runtime_args.foo``); errors found later point into the native form
(``modules.Decoder_1.args.fps``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgeva.schemas.errors import BAD_REQUEST, EdgevaError, from_validation_error, shown
from edgeva.schemas.jsonio import duplicate_error, loads_object

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: request ids end up in reply topics: no ``/``, ``+``, ``#``.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
Policy = Literal["block", "drop_oldest"]
#: Most modules one app may declare (and outputs one module may list), and most args one
#: module may be given (bounds by construction: ``schemas.bounds``; the built-in types have at
#: most 40 args). A ceiling on what one command can hold, above what a 1 MiB command fits with
#: real names; what a tenant may run is the agent's --max-modules, counted per declared module.
MAX_MODULES_PER_APP = 16384
MAX_ARGS = 128
#: A module's args: names, then values that the module type's own config checks (and bounds).
Args = dict[Annotated[str, StringConstraints(max_length=64)], Any]
ARGS_CHECKED = {"edgeva_checked_by": "the module type's config (schemas.graph.check_args)"}
#: Top-level key editors read to find a file's JSON Schema; not part of the deployment.
SCHEMA_KEY = "$schema"


class ModuleSpec(BaseModel):
    """One module of an application, as the operator declares it."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(max_length=128, description="module type, as registered under the edgeva.modules entry point")
    args: Args = Field(
        default_factory=dict, max_length=MAX_ARGS, json_schema_extra=ARGS_CHECKED,
        description="the type's config (its `type` field excepted)",
    )
    outputs: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_MODULES_PER_APP, json_schema_extra={"edgeva_not_path": "module names"},
        description="names of the modules of this app that get its output",
    )
    device: Name | None = Field(
        default=None, description="device that runs it; null = the device receiving the deploy"
    )
    policy: Policy | None = Field(
        default=None,
        description="how it consumes its inputs: block (lossless) or drop_oldest (live); "
        "null = the agent's default",
    )
    hang_timeout: float | None = Field(
        default=None, gt=0, le=3600,
        description="seconds one message (or one frame of a source) may take before the module is "
        "called hung, killed and restarted like a crash; a first call gets at least 60 s; null = 10",
    )


class PartOf(BaseModel):
    """Marks a deploy as one device's part of an app spanning devices (agent to agent).

    The coordinator (the agent that received the operator's deploy) sends every other device
    the whole graph, every module's ``device`` filled in, with this field: the receiving agent
    starts only its own modules and the links to its peers. Operators never set it."""

    model_config = ConfigDict(extra="forbid")

    coordinator: Name = Field(description="device whose agent received the deploy and coordinates")
    hold: bool = Field(
        default=False,
        description="keep sources held until a `start` of the app (the coordinator sends it "
        "once every part runs, so that no frame is sent before its consumer listens)",
    )
    token: str | None = Field(
        default=None, max_length=256,
        description="the fleet's shared secret (`edgeva agent --fleet-token`): proves that an agent, not "
        "a tenant, sent this part; agents never echo or store it",
    )


class Deployment(BaseModel):
    """One application: a name and a graph of modules (the ``deploy`` command's payload)."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId | None = Field(default=None, description="echoed in the reply")
    app: Name = Field(description="application name, unique per tenant and device")
    modules: Annotated[dict[Name, ModuleSpec], Field(min_length=1, max_length=MAX_MODULES_PER_APP)] = Field(
        description="module name (unique in the app) -> spec"
    )
    part_of: PartOf | None = Field(
        default=None,
        description="set by agents only: this is one device's part of a multi-device app",
    )


_META_KEYS = ("request_id", "app")
_RUNTIME_KEYS = frozenset({"outputs", "device", "policy", "hang_timeout"})


def _listing1_module(name: str, body: Any) -> dict[str, Any]:
    """One Listing 1 entry in native form; ``EdgevaError(bad_request)`` pointing into it."""
    if not isinstance(body, dict):
        raise EdgevaError(BAD_REQUEST, "expected an object with '<type>_args'", name)
    typed = [k for k in body if k.endswith("_args") and k != "runtime_args"]
    if len(typed) != 1:
        found = f"found {typed}" if typed else "found none"
        raise EdgevaError(BAD_REQUEST, f"expected exactly one '<type>_args' key, {found}", name)
    for key in body:
        if key not in (typed[0], "runtime_args"):
            raise EdgevaError(
                BAD_REQUEST, f"unknown key (expected {shown(typed[0])}, 'runtime_args')", f"{name}.{key}"
            )
    args = body[typed[0]] if body[typed[0]] is not None else {}
    runtime = body.get("runtime_args") or {}
    if not isinstance(runtime, dict):
        raise EdgevaError(BAD_REQUEST, "expected an object", f"{name}.runtime_args")
    for key in runtime:
        if key not in _RUNTIME_KEYS:
            allowed = ", ".join(sorted(_RUNTIME_KEYS))
            raise EdgevaError(
                BAD_REQUEST, f"unknown runtime arg (allowed: {allowed})", f"{name}.runtime_args.{key}"
            )
    return {"type": typed[0][: -len("_args")], "args": args, **runtime}


def from_listing1(data: dict[str, Any], app: str | None = None, request_id: str | None = None) -> Deployment:
    """Convert the paper's Listing 1 form into a ``Deployment``.

    Top-level ``"request_id"`` / ``"app"`` strings in ``data`` are taken as such; ``app`` must
    then agree with the argument if both are given. Raises ``EdgevaError(bad_request)``.
    """
    return _validate(listing1_native(data, app, request_id))


def listing1_native(
    data: dict[str, Any],
    app: str | None = None,
    request_id: str | None = None,
    errors: list[EdgevaError] | None = None,
) -> dict[str, Any]:
    """The native form (a dict, not yet validated) of a Listing 1 payload.

    Raises the first ``EdgevaError(bad_request)``; with ``errors`` given, appends every one
    there instead (in the order the agent would meet them) and leaves the bad entries out."""

    def refuse(err: EdgevaError) -> None:
        if errors is None:
            raise err
        errors.append(err)

    meta = {k: data[k] for k in _META_KEYS if k in data and not isinstance(data[k], dict)}
    if app is not None and "app" in meta and meta["app"] != app:
        refuse(EdgevaError(BAD_REQUEST, f"payload names app {shown(meta['app'])}, not {app!r}", "app"))
    modules = {}
    for name, body in data.items():
        if name in meta:
            continue
        try:
            modules[name] = _listing1_module(name, body)
        except EdgevaError as err:
            refuse(err)
    native = {
        "request_id": meta.get("request_id", request_id),
        "app": meta.get("app", app),
        "modules": modules,
    }
    if native["app"] is None:
        refuse(EdgevaError(BAD_REQUEST, "no app name: give one (Listing 1 carries none)", "app"))
    return native


def is_listing1(data: dict[str, Any]) -> bool:
    """True when ``data`` looks like Listing 1: no ``modules`` key, and every entry besides
    ``request_id``/``app`` is an object holding a ``<type>_args`` key."""
    if "modules" in data:
        return False
    bodies = [v for k, v in data.items() if not (k in _META_KEYS and not isinstance(v, dict))]
    return bool(bodies) and all(
        isinstance(b, dict) and any(k.endswith("_args") for k in b) for b in bodies
    )


def _validate(native: dict[str, Any]) -> Deployment:
    try:
        return Deployment.model_validate(native)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def parse_deployment(payload: bytes | str | dict[str, Any], app: str | None = None) -> Deployment:
    """Read a deploy payload in either form; ``app`` names the app when the payload does not.

    Raises ``EdgevaError`` with ``bad_json``, ``bad_request`` or ``duplicate_name`` (a key
    repeated in the JSON text, e.g. two modules called ``detector``: path ``modules.detector``).
    The graph itself (types, args, outputs, cycles, devices) is checked by
    ``schemas.graph.validate_graph``.
    """
    if isinstance(payload, dict):
        data = payload
    else:
        data, dup = loads_object(payload)
        if dup:  # its path reads the same in both forms: where the key was written
            raise duplicate_error(dup)
    data = without_schema_key(data)
    if is_listing1(data):
        return from_listing1(data, app)
    if app is not None and "app" not in data:
        data = {**data, "app": app}
    elif app is not None and data["app"] != app:
        raise EdgevaError(BAD_REQUEST, f"payload names app {shown(data['app'])}, not {app!r}", "app")
    return _validate(data)


def without_schema_key(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without a top-level ``"$schema"`` string (an editor's pointer to the schema).
    Any other ``$schema`` value is left for validation to refuse."""
    if isinstance(data.get(SCHEMA_KEY), str):
        return {k: v for k, v in data.items() if k != SCHEMA_KEY}
    return data
