"""Placement of apps over devices from measured per-module costs (the paper's future work).

The problem: every module of a set of apps goes on one online device. Each device has a load,
the CPU time per second its modules need (``cost_ms`` per frame x the app's fps / 1000, as a
fraction of one core, divided by the device's ``capacity`` in cores). A good placement keeps the
most loaded device as light as possible, and keeps frame edges on one device (a link costs
serialise + network + deserialise per frame, on both ends, and bandwidth).

The method, small on purpose: modules are placed one by one in topological order (so that a
module's upstreams are placed before it); modules the operator pinned with ``device`` stay; a
module identical to one already placed (same type, args, upstreams: it will be shared at run
time) goes where that one went and costs nothing more. Every other module goes to the device
that minimises ``max load after placing it + link_ms x fps / 1000 x edges it would cross``: a
cross-device edge is worth taking only when it lowers the busiest device by more than the link
costs. Greedy, not optimal, but explainable: each choice comes with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from edgeva.schemas.deployment import Deployment

#: ms per frame on one core of a small ARM board, used when nothing was measured.
DEFAULT_COSTS: dict[str, float] = {
    "decoder": 8.0, "detector": 60.0, "tracker": 4.0, "reid": 35.0, "roi": 1.0, "annotate": 6.0, "publish": 0.5,
}
UNKNOWN_COST_MS = 5.0
LINK_MS = 3.0  # per frame and hop: serialise + deserialise + send, both ends together


@dataclass
class Choice:
    app: str
    module: str
    device: str
    cost: float  # load it adds (cores)
    reason: str


@dataclass
class Placement:
    choices: list[Choice] = field(default_factory=list)
    load: dict[str, float] = field(default_factory=dict)  # device -> cores used / capacity
    links: int = 0  # cross-device edges

    def deployments(self, apps: list[Deployment]) -> list[Deployment]:
        """The apps with every module's ``device`` filled in."""
        where = {(c.app, c.module): c.device for c in self.choices}
        return [a.model_copy(update={"modules": {n: m.model_copy(update={"device": where[(a.app, n)]})
                                                 for n, m in a.modules.items()}}) for a in apps]

    def explain(self) -> str:
        lines = [f"{c.app}.{c.module} -> {c.device} (+{c.cost * 100:.1f}% of a core): {c.reason}" for c in self.choices]
        lines.append("load: " + ", ".join(f"{d} {v * 100:.0f}%" for d, v in sorted(self.load.items())))
        lines.append(f"cross-device edges: {self.links}; busiest device at {max(self.load.values()) * 100:.0f}%")
        return "\n".join(lines)


def _fps(app: Deployment) -> float:
    rates = [float(m.args["fps"]) for m in app.modules.values() if isinstance(m.args.get("fps"), (int, float))]
    return max(rates) if rates else 10.0


def _order(app: Deployment) -> list[str]:
    ups = {n: [u for u, m in app.modules.items() if n in m.outputs] for n in app.modules}
    order: list[str] = []
    while len(order) < len(ups):
        ready = [n for n in app.modules if n not in order and all(u in order for u in ups[n])]
        if not ready:
            raise ValueError(f"app {app.app}: the graph has a cycle")
        order.append(ready[0])
    return order


def place(
    apps: list[Deployment],
    devices: dict[str, float],
    costs: dict[str, float] | None = None,
    link_ms: float = LINK_MS,
) -> Placement:
    """Place every module of ``apps`` on one of ``devices`` (device -> capacity in cores)."""
    if not devices:
        raise ValueError("no online device to place on")
    costs = {**DEFAULT_COSTS, **(costs or {})}
    plan = Placement(load={d: 0.0 for d in devices})
    shared: dict[str, str] = {}  # sharing key -> device
    for app in apps:
        fps = _fps(app)
        where: dict[str, str] = {}
        keys: dict[str, str] = {}
        for name in _order(app):
            spec = app.modules[name]
            ups = [u for u, m in app.modules.items() if name in m.outputs]
            keys[name] = json.dumps([spec.type, spec.args, spec.device, sorted(keys[u] for u in ups)], sort_keys=True)
            cost = costs.get(spec.type, UNKNOWN_COST_MS) * fps / 1000
            if keys[name] in shared:
                dev, cost, why = shared[keys[name]], 0.0, "identical to a module already placed: shared there"
            elif spec.device is not None:
                if spec.device not in devices:
                    raise ValueError(f"{app.app}.{name} is pinned to {spec.device}, which is not online")
                dev, why = spec.device, "pinned by the deployment"
            else:
                def score(d: str, ups=ups, cost=cost, where=where, fps=fps) -> tuple[float, float]:
                    others = max((v for k, v in plan.load.items() if k != d), default=0.0)
                    peak = max(others, plan.load[d] + cost / devices[d])
                    crossed = sum(1 for u in ups if where[u] != d)
                    return peak + crossed * link_ms * fps / 1000, plan.load[d]

                dev = min(devices, key=score)
                local = [u for u in ups if where[u] == dev]
                if ups and local:
                    why = f"next to {', '.join(local)} (no link), busiest device stays lowest"
                elif ups:
                    why = f"away from {', '.join(ups)}: its load outweighs a link ({link_ms:g} ms/frame)"
                else:
                    why = "least loaded device"
            for u in ups:
                if where[u] != dev:
                    plan.links += 1
            where[name] = dev
            shared.setdefault(keys[name], dev)
            plan.load[dev] += cost / devices[dev]
            plan.choices.append(Choice(app.app, name, dev, cost, why))
    return plan


def measured_costs(device_metrics: list[dict]) -> dict[str, float]:
    """ms per frame by module type: the mean p50 ``proc_ms`` of running modules (device metrics)."""
    seen: dict[str, list[float]] = {}
    for dm in device_metrics:
        for m in (dm.get("modules") or {}).values():
            p50 = (m.get("proc_ms") or {}).get("p50")
            if p50 is not None:
                seen.setdefault(m["type"], []).append(float(p50))
    return {t: round(sum(v) / len(v), 3) for t, v in seen.items()}
