"""What an agent knows of the other agents: their retained states and latest device metrics.

Every agent subscribes to ``edgeva/v1/+/state`` (retained) and ``edgeva/v1/+/metrics``. The
states say which devices are online (a deploy naming any other device is refused whole) and
where each listens for our link; the metrics give the per-hop times of apps spanning devices.
"""

from __future__ import annotations

import logging
import threading

from pydantic import ValidationError

from edgeva.agent.dataplane.quietlog import QuietLog
from edgeva.schemas.errors import shown
from edgeva.schemas.graph import ValidatedGraph
from edgeva.schemas.metrics import DeviceMetrics, HopMetrics, LinkMetrics
from edgeva.schemas.state import DeviceState

log = logging.getLogger("edgeva.fleet")


class FleetView:
    """Last ``DeviceState`` and ``DeviceMetrics`` per device (thread-safe).

    Each is filed under the device of the topic it came on, which the caller passes: a payload
    naming another device is refused. The broker's ACL decides who may publish on a device's
    topics, not what the payload says: a state filed under the device its payload named let
    any account that may publish one state (``cam-evil``) announce link addresses for another
    device (``cam-a``), and that device's peers redialled to the attacker."""

    def __init__(self) -> None:
        self.states: dict[str, DeviceState] = {}
        self.metrics: dict[str, DeviceMetrics] = {}
        self._lock = threading.Lock()
        self._log = QuietLog(log)  # a flood of forged states must not flood the log
        self.refused = 0  # states and metrics whose payload named another device than the topic

    def put_state(self, device: str, payload: bytes) -> DeviceState | None:
        """File the state published on ``device``'s state topic; None (nothing filed) when it
        does not parse or names another device."""
        try:
            st = DeviceState.model_validate_json(payload)
        except (ValidationError, ValueError):
            return None
        if st.device != device:
            self._refuse("state", device, st.device)
            return None
        with self._lock:
            self.states[device] = st
        return st

    def put_metrics(self, device: str, payload: bytes | DeviceMetrics) -> None:
        """File the metrics published on ``device``'s metrics topic (or this agent's own)."""
        try:
            m = payload if isinstance(payload, DeviceMetrics) else DeviceMetrics.model_validate_json(payload)
        except (ValidationError, ValueError):
            return
        if m.device != device:
            self._refuse("metrics", device, m.device)
            return
        with self._lock:
            self.metrics[device] = m

    def _refuse(self, what: str, device: str, named: str) -> None:
        with self._lock:
            self.refused += 1
        self._log.note("%s on device %s's topic names device %s: ignored (a device speaks only for itself)",
                       what, shown(device), shown(named))

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
