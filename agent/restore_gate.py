"""When a tenant's commands may run after a restart: once that tenant's saved apps are back.

A restarted agent restores each tenant's apps on a thread of its own (``AgentCore.restore``).
A tenant's commands wait for its own restore only: they must see its restored apps (a
coordinator asking a part about an app, an operator's ``status``), but another tenant's apps
(a camera that never answers, a coordinator that is away) must not hold them up. One shared
"restored" event once made every tenant wait 113 s behind one tenant's three apps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class RestoreGate:
    """Until ``plan(tenants)``, every tenant waits (the saved state is not read yet); then
    tenants outside ``tenants`` pass at once, and each of ``tenants`` once ``open(tenant)``.
    ``set()`` lets everyone pass (restore done or given up, or the agent stopping)."""

    def __init__(self, open_all: bool = False) -> None:
        self._cond = threading.Condition()
        self._all = open_all
        self._pending: set[str] | None = None  # None: no plan yet

    def plan(self, tenants: Iterable[str]) -> None:
        """The tenants with apps to restore; every other tenant passes from now on."""
        with self._cond:
            self._pending = set(tenants)
            self._cond.notify_all()

    def open(self, tenant: str) -> None:
        """``tenant``'s apps are back: its commands run."""
        with self._cond:
            if self._pending is not None:
                self._pending.discard(tenant)
            self._cond.notify_all()

    def set(self) -> None:
        """Everyone passes."""
        with self._cond:
            self._all = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        """Whether every tenant's restore is over (``set()`` was called)."""
        return self._all

    def is_open(self, tenant: str) -> bool:
        """Whether ``tenant``'s commands may run now."""
        with self._cond:
            return self._passes(tenant)

    def wait(self, tenant: str, timeout: float | None = None) -> bool:
        """Block until ``tenant`` may pass or ``timeout`` s went by; returns whether it may."""
        with self._cond:
            return self._cond.wait_for(lambda: self._passes(tenant), timeout)

    def _passes(self, tenant: str) -> bool:
        return self._all or (self._pending is not None and tenant not in self._pending)
