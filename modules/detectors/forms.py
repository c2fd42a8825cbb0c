"""The two forms of a detector's backend args, one config.

The detector's config holds its backend's config in ``backend``, a union discriminated by
``type``. Deployments write it nested (``{"backend": {"type": "triton", "url": ...}}``) or, as
they did before each backend had a config of its own, flat: the backend's name in ``backend``
and its args beside the detector's (``{"backend": "triton", "url": ...}``; no ``backend``: the
default one). :class:`BackendForms` turns the flat form into the nested one before pydantic
validates it, refuses an arg of another backend at its path naming the backend it belongs to,
reports pydantic's errors at the paths the deployment wrote (``url`` or ``backend.url``, never
the union's ``backend.triton.url``), and writes both forms into the JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from edgeva.modules.detectors import BackendConfig

FIELD = "backend"


def _error(kind: str, message: str, loc: tuple, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


class BackendForms:
    """Both forms of ``backend`` for a config whose own args are ``common``. ``configs``:
    backend name -> its config class; ``default``: the backend of args that name none."""

    def __init__(self, configs: Mapping[str, type[BackendConfig]], common: Iterable[str], default: str) -> None:
        self.configs, self.default = dict(configs), default
        common = set(common)
        #: Flat arg -> the backends that have it: every backend arg but ``type`` and those
        #: named like one of the config's own (a plugin's ``threads`` is reachable nested only).
        self.owners: dict[str, list[str]] = {}
        for tag, cfg in self.configs.items():
            for key in cfg.model_fields:
                if key != "type" and key not in common:
                    self.owners.setdefault(key, []).append(tag)
        self.common = common

    def known_args(self) -> list[str]:
        """Every arg a deployment may write, flat backend args included (for error hints)."""
        return sorted((self.common - {"type"}) | set(self.owners))

    # -- validation ---------------------------------------------------------------------------

    def validate(self, data: Any, handler: Callable[[Any], Any], title: str) -> Any:
        """The body of the config's ``model_validator(mode="wrap")``."""
        if not isinstance(data, Mapping):
            return handler(data)  # a config already (model_copy, revalidation) or junk: pydantic's
        nested, tag, flat, wrong = self.nest(data)
        try:
            config = handler(nested)
        except ValidationError as e:
            raise ValidationError.from_exception_data(
                title, wrong + self.relocated(e.errors(include_url=False), tag, flat)) from None
        if wrong:
            raise ValidationError.from_exception_data(title, wrong)
        return config

    def nest(self, data: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, bool, list[InitErrorDetails]]:
        """Args in either form -> the nested form, the backend's name, whether it was flat, and
        errors for the args of another backend (``data`` is not changed)."""
        owners = self.owners
        backend = data.get(FIELD, self.default)
        if isinstance(backend, BackendConfig):
            # An instance (a config built in code): as its dict, so that its type counts as set
            # and an exclude_unset dump (what the agent sends a module) still names it.
            backend = backend.model_dump()
        if isinstance(backend, Mapping):
            tag = backend.get("type")
            # Flat args beside a nested backend: one place per arg (else which would win?).
            wrong = [_error("flat_and_nested", f"{key} goes inside {FIELD} when {FIELD} is an object "
                            f"(it is an arg of backend {', '.join(owners[key])})", (key,), data[key])
                     for key in data if key in owners]
            rest = {k: v for k, v in data.items() if k not in owners}
            rest[FIELD] = backend
            return rest, tag if isinstance(tag, str) else None, False, wrong
        if not isinstance(backend, str):
            bad = _error("backend_type", f"{FIELD} is a backend's name ({', '.join(self.configs)}) or an "
                         "object with its type and args", (FIELD,), backend)
            return {k: v for k, v in data.items() if k != FIELD and k not in owners}, None, False, [bad]
        own = self.configs.get(backend)
        nested: dict[str, Any] = {"type": backend}
        rest: dict[str, Any] = {}
        wrong = []
        for key, value in data.items():
            if key == FIELD:
                continue
            if key not in owners:  # the config's own, or unknown: pydantic refuses it at its path
                rest[key] = value
            elif own is not None and key in own.model_fields:
                nested[key] = value
            elif own is not None:  # of another backend (with an unknown backend: its error is enough)
                which = owners[key]
                wrong.append(_error("wrong_backend", f"{key} is only for backend{'s' if len(which) > 1 else ''} "
                                    f"{', '.join(which)} (this detector's backend is {backend})", (key,), value))
        rest[FIELD] = nested
        return rest, backend, True, wrong

    def relocated(self, errors: list[dict[str, Any]], tag: str | None, flat: bool) -> list[InitErrorDetails]:
        """Pydantic's errors at the paths the deployment wrote: a discriminated union puts the
        tag in the path (``backend.triton.url``); the flat form has the arg beside the name
        (``url``), the nested one inside ``backend`` (``backend.url``)."""
        out = []
        known = ", ".join(self.configs)
        for err in errors:
            loc, kind, msg, value = tuple(err["loc"]), err["type"], err["msg"], err.get("input")
            if tag is not None and loc[:2] == (FIELD, tag):
                loc = loc[2:] if flat and len(loc) > 2 else (FIELD, *loc[2:])
            elif loc == (FIELD,) and kind == "union_tag_invalid":
                msg = f"unknown backend (installed: {known})"
                value = tag if flat else value  # as written: the name, not the object made of it
            elif loc == (FIELD,) and kind == "union_tag_not_found":
                msg = f"{FIELD} needs its type: one of {known}"
            out.append(_error(kind, msg, loc, value))
        return out

    # -- JSON Schema --------------------------------------------------------------------------

    def json_schema(self, schema: dict[str, Any]) -> None:
        """Both forms in the config's JSON Schema (its ``json_schema_extra``): ``backend`` is a
        backend's name or its config object; each backend's args are also properties, flat,
        and ``allOf`` rules refuse those of another backend, as the agent does."""
        props = schema["properties"]
        union = props.pop(FIELD)
        union.pop("discriminator", None)  # its mapping would name $defs that the export renames
        desc = union.pop("description", "")
        union.pop("default", None)
        examples = union.pop("examples", None)
        props[FIELD] = {
            "anyOf": [{"type": "string", "enum": list(self.configs),
                       "description": "flat form: the backend's name, its args beside it"}, union],
            "default": self.default, "description": desc,
        }
        if examples:
            props[FIELD]["examples"] = examples
        owners = self.owners
        for key, tags in owners.items():
            sub = dict(self.configs[tags[0]].model_json_schema()["properties"][key])
            sub["description"] = f"backend {', '.join(tags)} only (flat form of {FIELD}.{key}): " + \
                sub.get("description", "")
            props[key] = sub
        rules: list[dict[str, Any]] = []
        for tag, cfg in self.configs.items():
            then: dict[str, Any] = {"properties": {k: False for k in owners if tag not in owners[k]}}
            required = [k for k, f in cfg.model_fields.items() if f.is_required() and k in owners]
            if required:
                then["required"] = required
            named: dict[str, Any] = {"properties": {FIELD: {"const": tag}}, "required": [FIELD]}
            cond = {"anyOf": [named, {"not": {"required": [FIELD]}}]} if tag == self.default else named
            rules.append({"if": cond, "then": then})
        rules.append({"if": {"properties": {FIELD: {"type": "object"}}, "required": [FIELD]},
                      "then": {"properties": {k: False for k in owners}}})
        schema["allOf"] = rules
