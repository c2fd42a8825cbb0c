"""What an agent knows of the other agents: their retained states and latest device metrics.

Every agent subscribes to ``edgeva/v1/+/state`` (retained) and ``edgeva/v1/+/metrics``. The
states say which devices are online (a deploy naming any other device is refused whole) and
where each listens for our link; the metrics give the per-hop times of apps spanning devices.
"""

from __future__ import annotations

import threading

from pydantic import ValidationError

from schemas.graph import ValidatedGraph
from schemas.metrics import DeviceMetrics, HopMetrics, LinkMetrics
from schemas.state import DeviceState


class FleetView:
    """Last ``DeviceState`` and ``DeviceMetrics`` per device (thread-safe)."""

    def __init__(self) -> None:
        self.states: dict[str, DeviceState] = {}
        self.metrics: dict[str, DeviceMetrics] = {}
        self._lock = threading.Lock()

    def put_state(self, payload: bytes) -> DeviceState | None:
        try:
            st = DeviceState.model_validate_json(payload)
        except (ValidationError, ValueError):
            return None
        with self._lock:
            self.states[st.device] = st
        return st

    def put_metrics(self, payload: bytes | DeviceMetrics) -> None:
        try:
            m = payload if isinstance(payload, DeviceMetrics) else DeviceMetrics.model_validate_json(payload)
        except (ValidationError, ValueError):
            return
        with self._lock:
            self.metrics[m.device] = m

    def online(self) -> set[str]:
        with self._lock:
            return {d for d, s in self.states.items() if s.status == "online"}

    def state(self, device: str) -> DeviceState | None:
        with self._lock:
            return self.states.get(device)


def main_path(graph: ValidatedGraph) -> list[str]:
    """The app's main path: from its last module (see ``agent.core``) back along each module's
    first upstream to a source, in flow order."""
    node = [n for n in graph.order if not graph.downstream[n]][-1]
    path = [node]
    while graph.upstream[node]:
        node = graph.upstream[node][0]
        path.append(node)
    return path[::-1]


def _add(*xs: float | None) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(sum(vals), 3) if vals else None


def pipeline_hops(graph: ValidatedGraph, metrics: dict[str, DeviceMetrics]) -> list[HopMetrics]:
    """Per-hop p50 times along the main path, from each device's latest metrics: every module's
    processing time, and for every crossed link the sender's serialise time plus the receiver's
    network and deserialise times (link-wide figures: all streams of that pair of devices)."""
    ids = graph.identities()
    hops: list[HopMetrics] = []
    total: float | None = None
    prev: str | None = None
    for name in main_path(graph):
        dev = graph.devices[name]
        if prev is not None and graph.devices[prev] != dev:
            src = graph.devices[prev]
            sent = metrics[src].links.get(dev, LinkMetrics()) if src in metrics else LinkMetrics()
            got = metrics[dev].links.get(src, LinkMetrics()) if dev in metrics else LinkMetrics()
            ser, net, de = sent.serialise_ms.p50, got.network_ms.p50, got.deserialise_ms.p50
            ms = _add(ser, net, de)
            total = _add(total, ms)
            hops.append(HopMetrics(kind="link", name=f"{src}->{dev}", device=dev, ms=ms, serialise_ms=ser,
                                   network_ms=net, deserialise_ms=de, cumulative_ms=total))
        mod = metrics[dev].modules.get(ids[name]) if dev in metrics else None
        ms = mod.proc_ms.p50 if mod is not None else None
        total = _add(total, ms)
        hops.append(HopMetrics(kind="module", name=name, device=dev, ms=ms, cumulative_ms=total))
        prev = name
    return hops
