"""Plugin discovery: built-in classes plus third-party ones from an entry point group.

One pattern for every kind of plugin: a table of built-ins (name -> ``"pkg.module:Class"``) and
an entry point group where installed packages add theirs (``name = "mypkg.mymodule:MyClass"``
in their ``pyproject.toml``); ``discover`` imports both, a built-in name cannot be taken.

- module types: ``BUILTIN`` below, group ``edgeva.modules`` (``load_registry``);
- detector backends: ``edgeva.modules.detectors.BUILTIN``, group ``edgeva.detector_backends``;
- reid embedders: ``edgeva.modules.embedders.BUILTIN``, group ``edgeva.embedders``.

Classes are imported here; heavy dependencies (onnxruntime, motrackers, tritonclient) are
imported by the plugins when they are set up."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from edgeva.modules.base import Module
from edgeva.schemas.bounds import unbounded_fields

log = logging.getLogger("edgeva.registry")
GROUP = "edgeva.modules"

BUILTIN = {
    "decoder": "edgeva.modules.decoder:Decoder",
    "publish": "edgeva.modules.publish:Publish",
    "tracker": "edgeva.modules.tracker:Tracker",
    "roi": "edgeva.modules.roi:Roi",
    "reid": "edgeva.modules.reid:Reid",
    "annotate": "edgeva.modules.annotate:Annotate",
    "detector": "edgeva.modules.detector:Detector",
}


def _load(ref: str) -> Any:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def discover(builtin: Mapping[str, str], group: str, what: str) -> dict[str, tuple[str, Any]]:
    """Name -> (reference, class) for the built-ins and the ``group`` entry points. A plugin
    that fails to import is logged and left out (a broken plugin must not take the agent down);
    an entry point reusing a built-in name is ignored (a plugin cannot hijack a built-in).
    ``what`` names the kind in the log (``module type``, ``detector backend``)."""
    refs = dict(builtin)
    for ep in entry_points(group=group):
        if ep.name in builtin and ep.value != builtin[ep.name]:
            log.warning("entry point %s=%s ignored: %r is a built-in %s", ep.name, ep.value, ep.name, what)
            continue
        refs[ep.name] = ep.value
    found: dict[str, tuple[str, Any]] = {}
    for name, ref in refs.items():
        try:
            found[name] = (ref, _load(ref))
        except Exception as e:  # noqa: BLE001 - whatever a plugin's import raises
            log.warning("%s %r (%s) unavailable: %s", what, name, ref, e)
    return found


def declared_type(config_class: Any) -> Any:
    """The default of a config class's ``type`` field: the name it answers to."""
    field = getattr(config_class, "model_fields", {}).get("type")
    return None if field is None else field.default


def load_registry() -> dict[str, type[Module]]:
    """Every installed module type by name. A type that fails to import is logged and left
    out (a deployment using it then gets ``unknown_type`` naming the known ones)."""
    reg: dict[str, type[Module]] = {}
    for name, (ref, cls) in discover(BUILTIN, GROUP, "module type").items():
        declared = declared_type(cls.config_class)
        if declared != name:
            log.warning("module type %r (%s) declares type %r: ignored", name, ref, declared)
            continue
        reg[name] = cls
        if name not in BUILTIN:  # the built-in types are held to it by tests/test_bounds.py
            loose = unbounded_fields(cls.config_class)
            if loose:
                log.warning("module type %r (%s) leaves %d args unbounded, e.g. %s (edgeva check lists them)",
                            name, ref, len(loose), loose[0])
    return reg


def module_class(ref_or_name: str) -> type[Module]:
    """The class for a type name (built-in or entry point) or a ``pkg.mod:Class`` reference."""
    if ":" in ref_or_name:
        return _load(ref_or_name)
    reg = load_registry()
    if ref_or_name not in reg:
        raise KeyError(f"unknown module type {ref_or_name!r} (known: {', '.join(sorted(reg))})")
    return reg[ref_or_name]
