"""Transports of ``edgeva bench hop``: one module per transport, found by discovery.

Adding a transport is a one-file change: drop ``agent/bench/transports/<name>.py`` defining a
``Transport`` subclass decorated with ``@register`` (see ``base``). Modules whose name starts with
``_`` are skipped. Transport modules import their heavy dependencies lazily, so that a missing
one (or a data-plane piece not written yet) fails that transport at run time, not discovery.
"""

from __future__ import annotations

import importlib
import pkgutil

from edgeva.bench.hop.transports.base import REGISTRY, Payload, Transport, register

__all__ = ["REGISTRY", "Payload", "Transport", "register", "transports"]


def transports() -> dict[str, type[Transport]]:
    """Every registered transport, in table order (``order``, then name)."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    return dict(sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))
