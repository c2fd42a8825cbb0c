"""Check a deployment offline, listing every error (``edgeva check``, and ``edgeva deploy``
before it publishes).

The agent refuses a deploy with its first error (``schemas.graph.validate_graph``, then the
fleet checks of ``agent.coordinator``); this goes through the same checks in the same order but
keeps going, so that ``errors[0]`` is what the agent would answer and the rest is what the
operator would meet one round trip at a time:

1. JSON (``bad_json``), every duplicated key (``duplicate_name``): nothing further is checked;
2. the paper's Listing 1 form, every entry (``bad_request``): nothing further if one is bad;
3. the deployment's shape (``bad_request``): every error; the graph is still checked when the
   modules themselves are well-formed;
4. unknown types, then every module's args against its installed type (``bad_args``: every
   field, with the known args for a misspelt one; files a decoder or a reid gallery names are
   checked by their configs, on this machine), outputs (``unknown_output``,
   ``duplicate_name``), a cycle, wiring that feeds a module nothing it can use
   (``bad_wiring``, every such edge: ``schemas.ports``);
5. with the fleet's retained states: devices that are unknown or offline (``unknown_device``)
   and devices without a data plane (``setup_failed``), as the receiving agent sees them.

Warnings (not errors: the agent accepts such a deploy) name every arg of a module type used
that the type leaves unbounded (``schemas.bounds``: a number without a maximum, a string or
list without a maximum length, a path-like string not marked). The built-in types have none
(``tests/test_bounds.py``); a third-party type that has some lets a tenant take more of the
device than its limits say, so the operator who installed it is told here.

What needs the device itself (another app of the same name, a module failing in ``setup``)
is not checked. ``registry`` maps a type name to its config class or Module class; ``schemas``
never imports the modules itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edgeva.schemas.bounds import unbounded_fields
from edgeva.schemas.deployment import (
    Deployment,
    ModuleSpec,
    is_listing1,
    listing1_native,
    without_schema_key,
)
from edgeva.schemas.errors import (
    BAD_ARGS,
    BAD_REQUEST,
    CYCLE,
    DUPLICATE_NAME,
    SETUP_FAILED,
    UNKNOWN_DEVICE,
    UNKNOWN_OUTPUT,
    UNKNOWN_TYPE,
    EdgevaError,
    describe,
    format_path,
)
from edgeva.schemas.graph import (
    _config_class,
    _find_cycle,
    _topological,
    known_args,
    unfed_module,
    validate_graph,
)
from edgeva.schemas.jsonio import duplicate_error, duplicate_keys, loads_object
from edgeva.schemas.ports import active_ports, wiring_errors
from edgeva.schemas.state import DeviceState


@dataclass
class CheckResult:
    """What ``check_deployment`` found: the deployment (when its shape is valid, even if its
    graph is not) and every error, the agent's own first."""

    deployment: Deployment | None = None
    errors: list[EdgevaError] = field(default_factory=list)
    #: ``{"path", "message"}``: args the module types used leave unbounded (see the module doc).
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON for tools: ``{"ok", "app", "modules", "errors": [{"code", "message", "path"}],
        "warnings": [{"path", "message"}]}``."""
        dep = self.deployment
        return {
            "ok": self.ok,
            "app": dep.app if dep is not None else None,
            "modules": len(dep.modules) if dep is not None else None,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
        }


def _pydantic_errors(exc: ValidationError, prefix: tuple, code: Any, hint: str = "",
                     type_prefix: tuple | None = None) -> list[EdgevaError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        base = type_prefix if type_prefix is not None and loc[:1] == ("type",) else prefix
        message = describe(err)
        if hint and err["type"] == "extra_forbidden":
            message += f" ({hint})"
        out.append(EdgevaError(code, message, format_path((*base, *loc)) or None))
    return out


def _args_errors(name: str, spec: ModuleSpec, cls: Any) -> tuple[Any, list[EdgevaError]]:
    """The module's config, or every error in its args (as ``graph.check_args``, all of them)."""
    where = ("modules", name)
    if "type" in spec.args:
        return None, [EdgevaError(BAD_ARGS, "'type' goes beside args, not inside",
                                  format_path((*where, "args", "type")))]
    try:
        return cls.model_validate({"type": spec.type, **spec.args}), []
    except ValidationError as exc:
        hint = "known args: " + (", ".join(known_args(cls)) or "none")
        return None, _pydantic_errors(exc, (*where, "args"), BAD_ARGS, hint, type_prefix=where)


def _salvage(native: dict[str, Any]) -> tuple[Deployment | None, set[str]]:
    """After a shape error: the modules that are well-formed, to check their graph too, and
    the names of the others (kept, without type or outputs, so that edges to them count)."""
    raw = native.get("modules")
    if not isinstance(raw, dict) or not raw:
        return None, set()
    mods: dict[str, ModuleSpec] = {}
    broken: set[str] = set()
    for name, body in raw.items():
        try:
            mods[name] = ModuleSpec.model_validate(body)
        except ValidationError:
            mods[name] = ModuleSpec.model_construct(type="", args={}, outputs=[], device=None, policy=None)
            broken.add(name)
    return Deployment.model_construct(app=str(native.get("app")), modules=mods), broken


def _graph_errors(dep: Deployment, registry: Mapping[str, Any], broken: set[str]) -> list[EdgevaError]:
    mods = dep.modules
    errors: list[EdgevaError] = []
    configs: dict[str, Any] = {}
    for name, spec in mods.items():
        if name not in broken and spec.type not in registry:
            known = ", ".join(sorted(registry)) or "none installed"
            errors.append(EdgevaError(UNKNOWN_TYPE, f"unknown module type {spec.type!r} (known: {known})",
                                      format_path(("modules", name, "type"))))
    for name, spec in mods.items():
        if name not in broken and spec.type in registry:
            configs[name], errs = _args_errors(name, spec, _config_class(registry[spec.type]))
            errors += errs
    good_outputs: dict[str, list[str]] = {}
    upstream: dict[str, list[str]] = {name: [] for name in mods}
    for name, spec in mods.items():
        good_outputs[name] = []
        seen: set[str] = set()  # not the list so far: linear in the outputs (issue 20 hole 15)
        for i, out in enumerate(spec.outputs):
            path = format_path(("modules", name, "outputs", i))
            if out not in mods:
                errors.append(EdgevaError(UNKNOWN_OUTPUT, f"no module named {out!r} in app {dep.app!r}", path))
            elif out in seen:
                errors.append(EdgevaError(DUPLICATE_NAME, f"{out!r} is listed twice", path))
            else:
                seen.add(out)
                good_outputs[name].append(out)
                upstream[out].append(name)
    unfed = unfed_module(dep, registry, upstream)
    if unfed is not None:
        errors.append(unfed)
    # a cycle among the edges that do name modules (the agent looks only once all of them do)
    pruned = dep.model_construct(**{**dict(dep), "modules": {
        n: s.model_construct(**{**dict(s), "outputs": good_outputs[n]}) for n, s in mods.items()}})
    cycle = _find_cycle(pruned)
    if cycle:
        names, src, idx = cycle
        real = mods[src].outputs.index(good_outputs[src][idx])
        errors.append(EdgevaError(CYCLE, "cycle: " + " -> ".join(names),
                                  format_path(("modules", src, "outputs", real))))
    else:  # a module whose type or args are wrong has unknown ports: never refused, satisfies all
        ports = {n: active_ports(configs[n]) if configs.get(n) is not None else None for n in mods}
        errors += wiring_errors(mods, ports, upstream, _topological(pruned, upstream))
    return errors


def _bounds_warnings(dep: Deployment, registry: Mapping[str, Any], broken: set[str]) -> list[dict[str, str]]:
    """Each unbounded arg of each module type used, at its first module of that type."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, spec in dep.modules.items():
        if name in broken or spec.type not in registry or spec.type in seen:
            continue
        seen.add(spec.type)
        for f in unbounded_fields(_config_class(registry[spec.type])):
            out.append({"path": format_path(("modules", name, "args")) + "." + f.path,
                        "message": f"module type {spec.type!r} leaves this arg unbounded ({f.problem}): a tenant "
                                   "could take more of the device with it than its limits allow"})
    return out


def _fleet_errors(dep: Deployment, local: str | None, fleet: Mapping[str, DeviceState]) -> list[EdgevaError]:
    """What the receiving agent (``local``) says of the devices an app names, given the
    retained states of the fleet (``agent.coordinator``: unknown/offline, then data planes)."""
    remote = {m.device for m in dep.modules.values() if m.device and m.device != local}
    if not remote:
        return []
    online = {d for d, st in fleet.items() if st.status == "online"}
    known = online | ({local} if local else set())
    errors = []
    for name, m in dep.modules.items():
        if m.device and m.device not in known:
            why = "offline" if m.device in fleet else "unknown (no agent announced it)"
            errors.append(EdgevaError(UNKNOWN_DEVICE, f"device {m.device!r} is {why}; nothing was deployed",
                                      format_path(("modules", name, "device"))))
    if errors:
        return errors
    here = fleet.get(local) if local else None
    if here is not None and here.data_addr is None:
        first = next(n for n, m in dep.modules.items() if m.device and m.device != local)
        errors.append(EdgevaError(SETUP_FAILED, f"device {local!r} has no data plane for links to other "
                                  "devices: start its agent with --data-bind tcp://HOST:PORT",
                                  format_path(("modules", first, "device"))))
    for d in sorted(remote):
        if fleet[d].data_addr is None:
            errors.append(EdgevaError(SETUP_FAILED, f"device {d!r} has no data plane (its agent runs "
                                      "without --data-bind)", format_path(("devices", d))))
    return errors


def _read(payload: bytes | str | dict[str, Any], app: str | None,
          errors: list[EdgevaError]) -> dict[str, Any] | None:
    """The native form as a dict (not validated), or None with ``errors`` filled."""
    if isinstance(payload, dict):
        data = payload
    else:
        try:
            data, _ = loads_object(payload)
        except EdgevaError as err:
            errors.append(err)
            return None
        dups = duplicate_keys(payload)
        if dups:
            errors.extend(duplicate_error(loc) for loc in dups)
            return None
    data = without_schema_key(data)
    if is_listing1(data):
        native = listing1_native(data, app, errors=errors)
        return None if errors else native
    if app is not None and "app" not in data:
        return {**data, "app": app}
    if app is not None and data["app"] != app:
        errors.append(EdgevaError(BAD_REQUEST, f"payload names app {data['app']!r}, not {app!r}", "app"))
        return None
    return data


def check_deployment(
    payload: bytes | str | dict[str, Any],
    registry: Mapping[str, Any],
    *,
    app: str | None = None,
    local_device: str | None = None,
    fleet: Mapping[str, DeviceState] | None = None,
) -> CheckResult:
    """Every error of a deploy payload (native or Listing 1), offline; see the module doc.

    ``app`` names the app of a Listing 1 payload (or must agree with the payload's);
    ``local_device`` is the device the deploy goes to; ``fleet`` (device -> its retained
    state), when given, enables the device checks.
    """
    result = CheckResult()
    native = _read(payload, app, result.errors)
    if native is None:
        return result
    try:
        dep = Deployment.model_validate(native)
    except ValidationError as exc:
        result.errors += _pydantic_errors(exc, (), BAD_REQUEST)
        dep, broken = _salvage(native)
        if dep is None:
            return result
    else:
        result.deployment, broken = dep, set()
    result.errors += _graph_errors(dep, registry, broken)
    result.warnings = _bounds_warnings(dep, registry, broken)
    if fleet is not None:
        result.errors += _fleet_errors(dep, local_device, fleet)
    if not result.errors:
        # the agent's own check, as a guard: a disagreement would be a bug here
        try:
            validate_graph(dep, registry, None, local_device or "local")
        except EdgevaError as err:
            result.errors.append(err)
    return result
