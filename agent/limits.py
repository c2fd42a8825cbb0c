"""Per-tenant limits: what one tenant may take of a device, so that it cannot starve the others.

Checked by ``AgentCore`` on every deploy/start, before anything the check can foresee starts
(apps, modules), and once each module is ready but before any frame flows (its output size,
known only after its ``setup``: frame sizes and crop sizes both end up there). A refusal is a
``limit`` error that names the limit and the agent flag that sets it; the deploy is rolled back
and what ran before runs on. Defaults suit a 4-core board serving a few tenants.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeva.agent.settings import default, mb_to_bytes


@dataclass(frozen=True)
class TenantLimits:
    """``max_apps``: apps a tenant may have deployed on the device; ``max_modules``: module
    instances its apps may run; ``max_slot_bytes``: the largest output message of one of its
    modules (a frame plus crops: the ring slot size); ``max_shm_bytes``: shared memory all its
    modules' output rings may take (slot size x slots, summed). Defaults: ``edgeva agent``'s."""

    max_apps: int = default("max_apps")
    max_modules: int = default("max_modules")
    max_slot_bytes: int = mb_to_bytes(default("max_slot_mb"))
    max_shm_bytes: int = mb_to_bytes(default("max_shm_mb"))


def mib(n: int) -> str:
    """Bytes as MiB for messages."""
    return f"{n / 2**20:.1f} MiB"
