"""Whole-deployment checks, done before anything changes on the device, and module identity.

``validate_graph`` checks, in this order, and stops at the first error (with a precise path):

1. unknown module type          ``unknown_type``    ``modules.<name>.type``
2. args that do not fit the type ``bad_args``       ``modules.<name>.args.<field>``
3. outputs naming no module,     ``unknown_output``  ``modules.<name>.outputs[i]``
   or naming one twice           ``duplicate_name``  ``modules.<name>.outputs[i]``
4. a cycle                       ``cycle``           ``modules.<name>.outputs[i]`` (closing edge)
5. a module fed by no module     ``bad_request``     ``modules.<name>``
6. wiring that feeds a module    ``bad_wiring``      ``modules.<upstream>.outputs[i]``
   nothing it can use (``schemas.ports``: ``decoder -> roi``, roi needs tracks or detections)
7. a device nobody knows         ``unknown_device``  ``modules.<name>.device``

Why identities: sharing. Two apps that both declare "decoder of rtsp://cam1 at 10 fps" and
"detector on that decoder's frames" should run one decoder and one detector, whatever the
instance names each app chose (``dec``/``Decoder_1``). A module's identity is a hash of what
decides its output stream: its type, its full config (defaults filled in, so ``{}`` and
``{"fps": 10}`` agree when 10 is the default), the device it runs on, and the identities of its
upstream modules. The agent keys running instances by identity: a deploy whose module has the
identity of a running one attaches a consumer to it instead of starting a second process.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from edgeva.schemas.deployment import Deployment, ModuleSpec
from edgeva.schemas.errors import (
    BAD_ARGS,
    BAD_REQUEST,
    CYCLE,
    DUPLICATE_NAME,
    UNKNOWN_DEVICE,
    UNKNOWN_OUTPUT,
    UNKNOWN_TYPE,
    EdgevaError,
    format_path,
    from_validation_error,
    shown,
)
from edgeva.schemas.ports import active_ports, wiring_errors

if TYPE_CHECKING:  # schemas must not import modules at run time (modules import schemas)
    from edgeva.modules.base import ModuleConfig


@dataclass
class ValidatedGraph:
    """A deployment that passed every check, ready for the agent to place and run.

    - ``configs``: module name -> its validated config (a ``ModuleConfig`` instance).
    - ``order``: module names, every module after all of its upstreams (start in this order,
      stop in reverse).
    - ``upstream`` / ``downstream``: module name -> names it reads from / writes to, in
      declaration order.
    - ``devices``: module name -> the device that runs it (``local_device`` when unplaced).
    """

    deployment: Deployment
    configs: dict[str, BaseModel]
    order: list[str]
    upstream: dict[str, list[str]]
    downstream: dict[str, list[str]]
    devices: dict[str, str]
    #: who may share these modules: part of every identity when set (the agent sets the tenant,
    #: so that tenants never share a module instance, see docs/security.md)
    scope: str = ""
    _ids: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def app(self) -> str:
        return self.deployment.app

    def spec(self, name: str) -> ModuleSpec:
        return self.deployment.modules[name]

    def identity(self, name: str) -> str:
        """Stable id of module ``name``: ``<type>-<16 hex>`` from (type, canonical config
        JSON, device, sorted identities of its upstreams, and ``scope`` when set). Equal across apps for modules that
        would produce the same stream, so they can share one running instance."""
        if name not in self._ids:
            # All at once, in topological order: each module's upstreams are known by then, and
            # no recursion (a chain of 20,000 modules fits in a 1 MiB command).
            for node in self.order:
                if node not in self._ids:
                    self._ids[node] = self._identity(node)
        return self._ids[name]

    def _identity(self, name: str) -> str:
        config = self.configs[name]
        ups = sorted({self.identity(u) for u in self.upstream[name]})  # known: upstreams come first
        key = [
            config.type,  # type: ignore[attr-defined]
            config.model_dump(mode="json"),
            self.devices[name],
            ups,
        ]
        if self.scope:
            key.append(self.scope)
        blob = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return f"{config.type}-{digest}"  # type: ignore[attr-defined]

    def identities(self) -> dict[str, str]:
        """Module name -> identity, for every module (in topological order)."""
        return {name: self.identity(name) for name in self.order}


def _config_class(entry: Any) -> type[BaseModel]:
    # registries may map a type to its config class or to its Module class (config_class)
    return getattr(entry, "config_class", entry)


def _path(*loc: str | int) -> str:
    return format_path(("modules", *loc))


def known_args(cls: Any) -> list[str]:
    """The args a config takes, for the hint of an unknown one: its own ``known_args()`` where
    it has one (a detector's backend args, accepted flat beside the backend's name), else its
    fields but ``type``."""
    own = getattr(cls, "known_args", None)
    return list(own()) if callable(own) else sorted(f for f in cls.model_fields if f != "type")


def check_args(type_name: str, args: dict[str, Any], cls: type[BaseModel], where: tuple = ()) -> BaseModel:
    """Validate a module's args into its config; a ``bad_args`` error with the path under
    ``where`` (e.g. ``("modules", "det")``) and, for an unknown arg, the known ones."""
    if "type" in args:
        raise EdgevaError(BAD_ARGS, "'type' goes beside args, not inside", format_path((*where, "args", "type")))
    try:
        return cls.model_validate({"type": type_name, **args})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        hint = ""
        if first["type"] == "extra_forbidden":
            hint = "known args: " + (", ".join(known_args(cls)) or "none")
        # a 'type' error means the registry name and the config's Literal disagree
        prefix = where if first["loc"][:1] == ("type",) else (*where, "args")
        raise from_validation_error(exc, prefix, BAD_ARGS, hint) from None


def _check_args(name: str, spec: ModuleSpec, cls: type[BaseModel]) -> BaseModel:
    return check_args(spec.type, spec.args, cls, ("modules", name))


def _find_cycle(dep: Deployment) -> tuple[list[str], str, int] | None:
    """Depth-first search in declaration order; returns (cycle, from, output index) or None.

    Iterative, with the position of each module on the stack kept in a dict: a command may
    hold tens of thousands of modules, in a chain (too deep to recurse) or all outputs of one
    (a list searched per output was quadratic: seconds of CPU for one sub-1 MiB command)."""
    done: set[str] = set()
    on_stack: dict[str, int] = {}  # module -> its index in ``stack``
    stack: list[tuple[str, int]] = []  # (module, index of its next output to follow)
    for root in dep.modules:
        if root in done:
            continue
        on_stack[root] = 0
        stack.append((root, 0))
        while stack:
            node, i = stack[-1]
            outs = dep.modules[node].outputs
            if i == len(outs):
                stack.pop()
                del on_stack[node]
                done.add(node)
                continue
            stack[-1] = (node, i + 1)
            out = outs[i]
            if out in on_stack:
                return [*(n for n, _ in stack[on_stack[out]:]), out], node, i
            if out not in done:
                on_stack[out] = len(stack)
                stack.append((out, 0))
    return None


def _topological(dep: Deployment, upstream: dict[str, list[str]]) -> list[str]:
    # Kahn's algorithm, picking ready modules in declaration order so the result is stable
    # (a deque: popping the head of a list is linear, quadratic over the whole graph).
    waiting = {name: len(ups) for name, ups in upstream.items()}  # outputs are unique (checked)
    order: list[str] = []
    ready = deque(n for n in dep.modules if waiting[n] == 0)
    while ready:
        node = ready.popleft()
        order.append(node)
        for out in dep.modules[node].outputs:
            waiting[out] -= 1
            if waiting[out] == 0:
                ready.append(out)
    return order


def unfed_module(dep: Deployment, registry: Mapping[str, Any], upstream: Mapping[str, list[str]]) -> EdgevaError | None:
    """The error for the first module that needs input and gets none (no module lists it in its
    outputs), else None. Such a module would wait forever, or crash at every restart."""
    for name, spec in dep.modules.items():
        entry = registry.get(spec.type)
        if not upstream.get(name) and getattr(entry, "is_source", True) is False:
            return EdgevaError(BAD_REQUEST, f"module {shown(name)} ({spec.type}) takes input, and no module "
                               "lists it in its outputs: feed it from a decoder (or another module)",
                               _path(name))
    return None


def validate_graph(
    dep: Deployment,
    registry: Mapping[str, type[ModuleConfig] | Any],
    known_devices: set[str] | None,
    local_device: str,
) -> ValidatedGraph:
    """Check a deployment whole; raise the first ``EdgevaError`` found, else return its graph.

    ``registry`` maps a type name to its config class (or to a Module class that has
    ``config_class``). ``known_devices`` is the set of devices modules may be placed on
    (``None``: do not check placement); ``local_device`` is always allowed and is where
    unplaced modules run.
    """
    mods = dep.modules
    for name, spec in mods.items():
        if spec.type not in registry:
            known = ", ".join(sorted(registry)) or "none installed"
            raise EdgevaError(UNKNOWN_TYPE, f"unknown module type {shown(spec.type)} (known: {known})",
                              _path(name, "type"))
    configs = {name: _check_args(name, spec, _config_class(registry[spec.type]))
               for name, spec in mods.items()}
    upstream: dict[str, list[str]] = {name: [] for name in mods}
    for name, spec in mods.items():
        seen: set[str] = set()  # a set, not the list so far: linear in the outputs
        for i, out in enumerate(spec.outputs):
            if out not in mods:
                raise EdgevaError(UNKNOWN_OUTPUT, f"no module named {shown(out)} in app {dep.app!r}",
                                  _path(name, "outputs", i))
            if out in seen:
                raise EdgevaError(DUPLICATE_NAME, f"{shown(out)} is listed twice", _path(name, "outputs", i))
            seen.add(out)
            upstream[out].append(name)
    cycle = _find_cycle(dep)
    if cycle:
        names, src, idx = cycle
        raise EdgevaError(CYCLE, "cycle: " + " -> ".join(names), _path(src, "outputs", idx))
    unfed = unfed_module(dep, registry, upstream)
    if unfed is not None:
        raise unfed
    order = _topological(dep, upstream)
    for err in wiring_errors(mods, {n: active_ports(c) for n, c in configs.items()}, upstream, order):
        raise err
    devices = {name: spec.device or local_device for name, spec in mods.items()}
    if known_devices is not None:
        allowed = set(known_devices) | {local_device}
        for name, spec in mods.items():
            if spec.device is not None and spec.device not in allowed:
                known = ", ".join(sorted(allowed))
                raise EdgevaError(UNKNOWN_DEVICE, f"unknown device {shown(spec.device)} (known: {known})",
                                  _path(name, "device"))
    downstream = {name: list(spec.outputs) for name, spec in mods.items()}
    return ValidatedGraph(dep, configs, order, upstream, downstream, devices)
