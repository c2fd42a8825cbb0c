"""Module discovery: built-in types plus third-party ones from the ``edgeva.modules`` entry
point group (``mytype = "mypkg.mymodule:MyModule"``). Classes are imported here; heavy
dependencies (onnxruntime, motrackers) are imported by the modules in ``setup``."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

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


def _load(ref: str) -> type[Module]:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def load_registry() -> dict[str, type[Module]]:
    """Every installed module type by name. A type that fails to import is logged and left
    out (a deployment using it then gets ``unknown_type`` naming the known ones)."""
    refs = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTIN and ep.value != BUILTIN[ep.name]:
            log.warning("entry point %s=%s ignored: %r is a built-in type", ep.name, ep.value, ep.name)
            continue
        refs[ep.name] = ep.value
    reg: dict[str, type[Module]] = {}
    for name, ref in refs.items():
        try:
            cls = _load(ref)
        except Exception as e:  # a broken plugin must not take the agent down
            log.warning("module type %r (%s) unavailable: %s", name, ref, e)
            continue
        declared = cls.config_class.model_fields["type"].default
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
