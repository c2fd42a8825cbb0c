"""JSON Schema files for non-Python tools (editors, Node-RED flows, dashboards, other agents).

One file per model in ``schemas/json``, plus one per module type in ``schemas/json/modules``,
written deterministically (sorted keys, 2-space indent, trailing newline) so that CI can compare
the committed copies with what the code says: ``edgeva schema check`` fails when a model changed
and the files were not re-exported.

The deployment schema types each module's ``args`` by its ``type``: a ``oneOf`` over every
module type given (each branch ``if type == T then <T's spec>``, plus an OpenAPI-style
``discriminator`` for tools that read one), so that ``check-jsonschema`` or an editor flags a
misspelt arg or a wrong value, not only the agent. The module types come from the caller (the
registry lives in ``modules``, which ``schemas`` must not import): the committed copies hold
the built-in types, ``edgeva schema export`` every installed one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from edgeva.schemas import commands, metrics, state
from edgeva.schemas.deployment import SCHEMA_KEY, Deployment
from edgeva.schemas.frame import FrameHeader

DEFAULT_DIR = Path(__file__).parent / "json"
MODULES_DIR = "modules"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Module type name -> its config class (a pydantic model with ``type: Literal[name]``).
Configs = Mapping[str, type[BaseModel]]

#: file stem -> model. ``deploy`` is ``deployment`` (the Listing 1 form is not a schema).
MODELS: dict[str, Any] = {
    "deployment": Deployment,
    "cmd_update": commands.UpdateCommand,
    "cmd_start": commands.StartCommand,
    "cmd_stop": commands.StopCommand,
    "cmd_remove": commands.RemoveCommand,
    "cmd_status": commands.StatusCommand,
    "cmd_metrics": commands.MetricsCommand,
    "reply": commands.Reply,
    "state": state.DeviceState,
    "metrics_tenant": metrics.TenantMetrics,
    "metrics_device": metrics.DeviceMetrics,
    "frame_header": FrameHeader,
}


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _schema(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    return TypeAdapter(model).json_schema()


def render(model: Any) -> str:
    """The exact text of a model's schema file."""
    return _dump(_schema(model))


def _pointer(key: str) -> str:
    # a $defs key inside a JSON Pointer (RFC 6901): a plugin's type name may hold '/' or '~'
    return "#/$defs/" + key.replace("~", "~0").replace("/", "~1")


def _rebase(node: Any, prefix: str) -> Any:
    """``node`` with every local ``$ref`` renamed into the ``prefix.`` namespace (two module
    types may both call a nested model ``Options``)."""
    if isinstance(node, dict):
        return {
            k: _pointer(f"{prefix}.{v.rsplit('/', 1)[-1]}")
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/")
            else _rebase(v, prefix)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(v, prefix) for v in node]
    return node


def args_schema(type_name: str, config: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a module type's ``args``: its config without the ``type`` field
    (which sits beside ``args`` in a deployment). Unknown args are refused, as by the agent."""
    schema = copy.deepcopy(config.model_json_schema())
    schema.get("properties", {}).pop("type", None)
    required = [r for r in schema.get("required", []) if r != "type"]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    schema["additionalProperties"] = False
    schema["title"] = f"{type_name} args"
    doc = (config.__doc__ or "").strip()
    if doc and "description" not in schema:
        schema["description"] = doc
    return schema


def deployment_schema(configs: Configs) -> dict[str, Any]:
    """The deployment's JSON Schema with every module's ``args`` typed by its ``type``.

    ``ModuleSpec`` becomes an object whose ``type`` is one of ``configs`` and which is valid
    under exactly one branch of a ``oneOf``: ``if type == T then T's spec`` (``else`` false),
    each spec refusing unknown args and requiring ``args`` when the type has required args.
    The ``if``/``else: false`` form (not a bare ``const`` per branch) keeps validators' best
    error the real one (``args.fps: 'ten' is not of type 'number'``), not "'annotate' was
    expected".
    """
    schema = Deployment.model_json_schema()
    schema["$schema"] = DIALECT
    schema["properties"][SCHEMA_KEY] = {
        "type": "string",
        "description": "where editors find this schema; ignored by the agent",
    }
    defs = schema["$defs"]
    spec = defs.pop("ModuleSpec")
    names = sorted(configs)
    branches, mapping = [], {}
    for name in names:
        args = args_schema(name, configs[name])
        for key, sub in sorted(args.pop("$defs", {}).items()):
            defs[f"{name}.{key}"] = _rebase(sub, name)
        defs[f"{name}.args"] = _rebase(args, name)
        variant = copy.deepcopy(spec)
        variant["title"] = f"{name} module"
        variant["properties"]["type"] = {"const": name, "description": spec["properties"]["type"].get("description", "")}
        variant["properties"]["args"] = {"$ref": _pointer(f"{name}.args")}
        variant["required"] = ["type", "args"] if args.get("required") else ["type"]
        defs[f"{name}.module"] = variant
        mapping[name] = _pointer(f"{name}.module")
        branches.append({
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"$ref": mapping[name]},
            "else": False,
        })
    defs["ModuleSpec"] = {
        "title": "ModuleSpec",
        "description": spec.get("description", ""),
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": names, "description": "an installed module type"}},
        "oneOf": branches,
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return schema


def listing1_schema(configs: Configs) -> dict[str, Any]:
    """The paper's Listing 1 form, typed the same way: every top-level entry but ``app``,
    ``request_id`` and ``$schema`` is a module holding exactly one ``<type>_args`` (typed by
    the type) and optional ``runtime_args`` (``outputs``, ``device``, ``policy``)."""
    native = deployment_schema(configs)
    defs = {k: v for k, v in native["$defs"].items() if k not in ("ModuleSpec", "PartOf")}
    spec = native["$defs"]["decoder.module"]["properties"] if "decoder" in configs else \
        Deployment.model_json_schema()["$defs"]["ModuleSpec"]["properties"]
    defs["runtime_args"] = {
        "title": "runtime_args",
        "description": "where the module's output goes, where it runs, how it reads its inputs",
        "type": "object",
        "properties": {k: spec[k] for k in ("outputs", "device", "policy")},
        "additionalProperties": False,
    }
    branches = []
    for name in sorted(configs):
        key = f"{name}_args"
        branches.append({
            "if": {"required": [key]},
            "then": {
                "title": f"{name} module",
                "properties": {key: {"$ref": _pointer(f"{name}.args")},
                               "runtime_args": {"$ref": _pointer("runtime_args")}},
                "required": [key],
                "additionalProperties": False,
            },
            "else": False,
        })
    defs["Listing1Module"] = {
        "title": "Listing1Module",
        "description": "one module: exactly one '<type>_args' and optional 'runtime_args'",
        "type": "object",
        "minProperties": 1,
        "oneOf": branches,
    }
    props = native["properties"]
    return {
        "$schema": DIALECT,
        "title": "Listing1Deployment",
        "description": "The paper's request form (Listing 1): module name -> {'<type>_args': {...}, "
                       "'runtime_args': {...}}; means the same as deployment.json.",
        "type": "object",
        "properties": {k: props[k] for k in ("app", "request_id", SCHEMA_KEY)},
        "required": ["app"],
        "additionalProperties": {"$ref": _pointer("Listing1Module")},
        "minProperties": 2,
        "$defs": defs,
    }


def module_schema(type_name: str, config: type[BaseModel]) -> dict[str, Any]:
    """The schema file of one module type: its ``args`` (as for ``edgeva update --set``)."""
    return {"$schema": DIALECT, **args_schema(type_name, config)}


def expected_files(configs: Configs) -> dict[str, str]:
    """Relative file name -> content, for every exported model and module type."""
    files = {f"{stem}.json": render(model) for stem, model in MODELS.items()}
    files["deployment.json"] = _dump(deployment_schema(configs))
    files["deployment_listing1.json"] = _dump(listing1_schema(configs))
    for name, config in sorted(configs.items()):
        files[f"{MODULES_DIR}/{name}.json"] = _dump(module_schema(name, config))
    return files


def export_json_schemas(configs: Configs, directory: str | Path = DEFAULT_DIR) -> list[Path]:
    """Write every schema file into ``directory`` (created if needed), removing module files
    of types no longer given; return the paths written."""
    out = Path(directory)
    (out / MODULES_DIR).mkdir(parents=True, exist_ok=True)
    expected = expected_files(configs)
    for stale in (out / MODULES_DIR).glob("*.json"):
        if f"{MODULES_DIR}/{stale.name}" not in expected:
            stale.unlink()
    written = []
    for name, text in expected.items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def check_json_schemas(configs: Configs, directory: str | Path = DEFAULT_DIR) -> list[str]:
    """Names of the files in ``directory`` that differ from the models: changed, missing, or
    stale (a ``.json`` no model exports any more). Empty when all agree."""
    out = Path(directory)
    expected = expected_files(configs)
    bad = []
    for name, text in expected.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(name)
    for sub in ("", MODULES_DIR):
        if (out / sub).is_dir():
            found = (f"{sub}/{p.name}" if sub else p.name for p in (out / sub).glob("*.json"))
            bad += [n for n in found if n not in expected]
    return sorted(bad)
