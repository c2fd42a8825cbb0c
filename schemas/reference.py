"""The module reference (``docs/modules.md``), generated from the module configs.

Everything comes from the pydantic models: each arg's type, default, range (``ge``, ``gt``,
lengths, patterns) and description from its JSON Schema, its example from the field's
``examples`` (else a value derived from its type, range and default), a section's text from
the config's and the module's docstrings. A new arg or a new module type therefore appears
by regenerating (``edgeva schema docs``); CI compares the committed file with the code.
Nested models are listed with dotted names (``triton.url``, ``gallery[].image``); each member
of a discriminated union with its tag (``backend.url (triton)``).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from edgeva.schemas.ports import ports_of

HEADER = """\
# Module reference

Generated from the module configs by `edgeva schema docs` (do not edit by hand: CI checks
that this file matches the code). A module's args go in its `"args"` in a deployment; unknown
args are refused, by `edgeva check`, by `check-jsonschema` against
[`schemas/json/deployment.json`](../schemas/json/deployment.json) and by the agent. Each type's
args also have a schema of their own: `schemas/json/modules/<type>.json`. How to add a type of
your own: [Writing a module type](../README.md#writing-a-module-type).

Each type's **ports** say what it reads from and writes to messages (fields and arrays by name,
`schemas/ports.py`): what it consumes (`a + b`: both; `a or b`: either), what it produces, and
what of its input it passes on. `edgeva check` and every deploy refuse wiring that gives a
module none of what it consumes (`bad_wiring` at the `outputs` entry that feeds it). A type
that declares no ports is never refused. Ports also decide what crosses a link between devices:
only the arrays some module beyond it consumes, or passes on to one that does (a type that
declares no ports gets every array; `schemas/crossing.py`, docs/protocol.md): an array a type
reads only when present goes in an alternative with what it needs (`detections | detections +
frame`), or a link leaves it out.
"""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else node


def _branches(node: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The non-null alternatives of a field's schema, and whether null is allowed."""
    alts = node.get("anyOf") or node.get("oneOf")
    if not alts:
        return [node], node.get("type") == "null"
    return [a for a in alts if a.get("type") != "null"], any(a.get("type") == "null" for a in alts)


def type_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema as a short type: ``number | null``, ``"tcp" | "udp"``, ``[integer, integer]``."""
    alts, nullable = _branches(node)
    parts = [_one_type(a, defs) for a in alts]
    if nullable:
        parts.append("null")
    return " | ".join(parts)


def _one_type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        return "object (" + node["$ref"].rsplit("/", 1)[-1] + ")"
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "anyOf" in node or "oneOf" in node:
        return "(" + type_text(node, defs) + ")"
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(type_text(i, defs) for i in node["prefixItems"]) + "]"
        items = node.get("items")
        return f"array of {type_text(items, defs)}" if items else "array"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return f"{{string: {type_text(extra, defs)}}}"
        return "object"
    return str(kind or "any")


def range_text(node: dict[str, Any]) -> str:
    """Bounds, lengths, item counts and patterns of a field (any non-null alternative)."""
    out: list[str] = []
    for alt in _branches(node)[0]:
        for key, fmt in (("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"),
                         ("exclusiveMaximum", "< {}"), ("minLength", "length >= {}"),
                         ("maxLength", "length <= {}"), ("minItems", "items >= {}"),
                         ("maxItems", "items <= {}"), ("pattern", "matches `{}`")):
            if key in alt and not (key in ("minItems", "maxItems") and "prefixItems" in alt):
                out.append(fmt.format(alt[key]))
    return ", ".join(out)


def _default(field: Any) -> Any:
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    # as the JSON a deployment holds: tuples and sets as lists, anything else as its text
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple | set | frozenset) else str(v)))


def _derived_example(node: dict[str, Any], defs: dict[str, Any], default: Any) -> Any:
    """A valid-looking value when the field declares no example: not the default where the
    type offers another choice (an example should show something to change)."""
    alts, _ = _branches(node)
    alt = _resolve(alts[0], defs) if alts else {}
    choices = alt.get("enum") or ([alt["const"]] if "const" in alt else None)
    if choices:
        return next((c for c in choices if c != default), choices[0])
    kind = alt.get("type")
    if kind == "array" and "prefixItems" in alt and default is None:  # a tuple: one per item
        return [_derived_example(item, defs, None) for item in alt["prefixItems"]]
    if kind == "boolean":
        return not default if isinstance(default, bool) else True
    if kind in ("integer", "number"):
        if default is not None:
            return default
        low = alt.get("minimum", alt.get("exclusiveMinimum"))
        value = 1 if low is None else (low + 1 if "exclusiveMinimum" in alt else low)
        value = max(value, 1) if alt.get("maximum", 2) >= 1 else value
        return int(value) if kind == "integer" else float(value)
    if default is not None:
        return default
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def _cell(text: str) -> str:
    # one line; '|' would end the cell and '<name>' would vanish as an HTML tag
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", " ".join(str(text).split()).replace("|", "\\|"))


def _code(value: Any) -> str:
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def _rows(model: type[BaseModel], defs: dict[str, Any], prefix: str = "",
          parent_example: Any = None, member: str = "") -> list[list[str]]:
    schema = model.model_json_schema()
    defs = {**defs, **schema.get("$defs", {})}
    props = schema.get("properties", {})
    rows: list[list[str]] = []
    for name, field in model.model_fields.items():
        if name == "type" and (member or not prefix):
            continue  # the module's type, or a union member's tag (in the row's name)
        node = props.get(field.alias or name, {})
        required = field.is_required()
        default = None if required else _default(field)
        examples = list(field.examples or [])
        if not examples and isinstance(parent_example, dict) and name in parent_example:
            examples = [parent_example[name]]  # from the enclosing field's example
        example = examples[0] if examples else _derived_example(node, defs, default)
        rows.append([
            f"`{prefix}{name}`" + (f" ({member})" if member else ""),
            _cell(type_text(node, defs)),
            "required" if required else _code(default),
            _cell(range_text(node)),
            _cell(field.description or ""),
            "" if example is None else _code(example),
        ])
        members = _tagged_members(field)
        if members:  # one of several models (a detector's backend): each one's args, by its tag
            for tag, sub in members.items():
                rows += _rows(sub, defs, f"{prefix}{name}.", None, str(tag))
            continue
        nested = _nested_model(field.annotation)
        if nested is not None:
            sub, is_list = nested
            inner = example[0] if is_list and isinstance(example, list) and example else example
            rows += _rows(sub, defs, f"{prefix}{name}{'[]' if is_list else ''}.", inner)
    return rows


def _tagged_members(field: Any) -> dict[Any, type[BaseModel]]:
    """Tag -> model of a field holding one of several models told apart by a discriminator."""
    import typing

    key = field.discriminator
    if not isinstance(key, str):
        return {}
    return {m.model_fields[key].default: m for m in typing.get_args(field.annotation)
            if isinstance(m, type) and issubclass(m, BaseModel) and key in m.model_fields}


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds (``Opts``, ``Opts | None``, ``list[Opts]``), if any."""
    import typing

    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    for arg in args:  # Optional / Union
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
    return None


def example_args(config: type[BaseModel]) -> dict[str, Any]:
    """Args of a minimal working example: every required arg, from its declared example."""
    schema = config.model_json_schema()
    out = {}
    for name, field in config.model_fields.items():
        if name != "type" and field.is_required():
            node = schema.get("properties", {}).get(field.alias or name, {})
            out[name] = field.examples[0] if field.examples else _derived_example(
                node, schema.get("$defs", {}), None)
    return out


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "") if obj is not None and obj.__doc__ else ""


def render_reference(registry: Mapping[str, Any]) -> str:
    """The whole ``docs/modules.md`` for ``registry`` (type name -> config class or Module
    class with ``config_class``)."""
    out = [HEADER, "| type | config | args | consumes | produces |", "|---|---|---|---|---|"]
    entries = {name: registry[name] for name in sorted(registry)}
    for name, entry in entries.items():
        config = getattr(entry, "config_class", entry)
        n = len([f for f in config.model_fields if f != "type"])
        p = ports_of(config)
        needs = "?" if p is None else "-" if getattr(entry, "is_source", False) else p.needs()
        made = "?" if p is None else ", ".join([*p.produces, *p.arrays]) or "-"
        out.append(f"| [`{name}`](#{name}) | `{config.__name__}` | {n} | {needs} | {made} |")
    for name, entry in entries.items():
        config = getattr(entry, "config_class", entry)
        out += ["", f"## {name}", ""]
        doc = _doc(config)
        if doc:
            out += [doc, ""]
        module_doc = _doc(entry) if entry is not config else ""  # __doc__ is not inherited
        if module_doc:
            out += [module_doc, ""]
        p = ports_of(config)
        out += [f"**Ports**: {p.summary(source=getattr(entry, 'is_source', False))}." if p is not None else
                "**Ports**: not declared (any wiring is accepted).", ""]
        example = {"type": name, "args": example_args(config)}
        out += ["```json", json.dumps(example, ensure_ascii=False), "```", ""]
        out += ["| arg | type | default | range | description | example |",
                "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(row) + " |" for row in _rows(config, {})]
    return "\n".join(out) + "\n"
