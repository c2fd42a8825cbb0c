"""Prometheus exporter: ``edgeva agent --metrics-port N`` serves ``/metrics`` in the text format.

It computes nothing of its own: every metrics tick the bridge hands it the ``DeviceMetrics``
and ``TenantMetrics`` it has just published on MQTT (``AgentBridge.metrics_sinks``), plus the
device state, and a scrape renders the latest of those. So a scrape never resets an interval
and costs the agent nothing between scrapes; a removed app's series go with the next tick.

Series (names per the Prometheus conventions: base units, ``_total`` counters; see
docs/prometheus.md for the whole table):

- per app, labels ``device``, ``tenant``, ``app``: ``edgeva_app_frames_total``,
  ``edgeva_app_frames_per_second``, ``edgeva_app_latency_seconds{quantile}``,
  ``edgeva_app_dropped_frames_total``, ``edgeva_app_events_total``, ``edgeva_app_lag_ratio``,
  ``edgeva_app_lagging``, ``edgeva_app_up``, ``edgeva_app_hop_seconds{hop,kind,hop_device}``;
- per module instance, labels ``device``, ``module`` (the instance name), ``type``:
  frames in/out, ``edgeva_module_processing_seconds{quantile}``,
  ``edgeva_module_queue_occupancy_ratio{consumer}``, ``edgeva_module_dropped_frames_total{consumer}``,
  ``edgeva_module_restarts_total``. An instance may serve several apps of several tenants, so
  its series carry no ``app``: ``edgeva_app_module_info{device,tenant,app,module}`` (value 1)
  says which apps use it, for joins (``* on(device, module) group_left(tenant, app)``);
- per link, labels ``device``, ``peer``: ``edgeva_link_up``, bytes/messages sent and received,
  dropped, ``edgeva_link_{serialise,network,deserialise}_seconds{quantile}``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from edgeva.agent.settings import default
from edgeva.schemas.metrics import P2, DeviceMetrics, TenantMetrics
from edgeva.schemas.state import DeviceState

_APP = ["device", "tenant", "app"]
_MOD = ["device", "module", "type"]
_LINK = ["device", "peer"]


@dataclass(frozen=True)
class _Snapshot:
    device: DeviceMetrics
    tenants: dict[str, TenantMetrics]
    state: DeviceState | None
    fps: dict[tuple[str, str], float]  # (tenant, app) -> frames/s between the last two ticks


class _Quantiles(Metric):
    """A summary made of ``quantile`` samples only: the agent keeps interval percentiles, not
    sums, so there is no ``_sum``/``_count`` (the text format and promtool allow that)."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "summary")
        self._labels = labels

    def add(self, values: list[str], p: P2) -> None:
        """p50/p95[/p99] in ms -> samples in seconds; an interval without samples (null)
        gives no sample rather than a made-up value."""
        labels = dict(zip(self._labels, values, strict=True))
        for q, ms in (("0.5", p.p50), ("0.95", p.p95), ("0.99", getattr(p, "p99", None))):
            if ms is not None:
                self.add_sample(self.name, {**labels, "quantile": q}, ms / 1000.0)


class EdgevaCollector:
    """Renders the latest metrics the agent computed as Prometheus families on each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None

    def update(self, device: DeviceMetrics, tenants: dict[str, TenantMetrics],
               state: DeviceState | None = None) -> None:
        """Take one tick's metrics (called by the bridge after it publishes them)."""
        with self._lock:
            prev = self._snap
        fps: dict[tuple[str, str], float] = {}
        for tenant, tm in tenants.items():
            before = prev.tenants.get(tenant) if prev is not None else None
            for name, am in tm.apps.items():
                if before is None or name not in before.apps or tm.ts <= before.ts:
                    continue
                gained = am.frames - before.apps[name].frames
                if gained >= 0:  # negative: the app was redeployed, its counter restarted
                    fps[(tenant, name)] = gained / (tm.ts - before.ts)
        snap = _Snapshot(device, dict(tenants), state, fps)
        with self._lock:
            self._snap = snap

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the apps running: no fixed description at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snap
        if snap is None:
            return
        for fam in (*self._apps(snap), *self._modules(snap), *self._links(snap)):
            if fam.samples:  # a family with no series (no links, no sample yet) is left out
                yield fam

    def _apps(self, snap: _Snapshot) -> Iterator[Metric]:
        frames = CounterMetricFamily("edgeva_app_frames", "Frames that reached the app's last module", labels=_APP)
        fps = GaugeMetricFamily("edgeva_app_frames_per_second",
                                "Frames per second at the app's last module, between the agent's last two "
                                "metrics ticks", labels=_APP)
        latency = _Quantiles("edgeva_app_latency_seconds",
                             "End-to-end latency from decode to the app's last module, by frame id, over the "
                             "last metrics interval", _APP)
        dropped = CounterMetricFamily("edgeva_app_dropped_frames", "Frames the app lost on the way", labels=_APP)
        events = CounterMetricFamily("edgeva_app_events", "Events the app published", labels=_APP)
        lag = GaugeMetricFamily("edgeva_app_lag_ratio",
                                "Growth of end-to-end latency per second of wall time (least-squares slope over "
                                "the last 30 s); steadily above 0: the app falls behind", labels=_APP)
        lagging = GaugeMetricFamily("edgeva_app_lagging", "1 when the agent judges the app falls behind",
                                    labels=_APP)
        up = GaugeMetricFamily("edgeva_app_up", "1 when the app runs, 0 when stopped or failed", labels=_APP)
        hops = GaugeMetricFamily("edgeva_app_hop_seconds",
                                 "Apps spanning devices, on the coordinating agent: p50 time of each hop along "
                                 "the main path", labels=[*_APP, "hop", "kind", "hop_device"])
        info = InfoMetricFamily("edgeva_app_module", "The module instances an app uses (value 1)", labels=_APP)
        dev = snap.device.device
        for tenant, tm in sorted(snap.tenants.items()):
            for name, am in sorted(tm.apps.items()):
                labels = [dev, tenant, name]
                frames.add_metric(labels, am.frames)
                dropped.add_metric(labels, am.dropped)
                events.add_metric(labels, am.events)
                lagging.add_metric(labels, 1.0 if am.lagging else 0.0)
                if (tenant, name) in snap.fps:
                    fps.add_metric(labels, snap.fps[(tenant, name)])
                latency.add(labels, am.latency_ms)
                if am.lag_ms_per_min is not None:
                    lag.add_metric(labels, am.lag_ms_per_min / 60_000.0)  # ms per min -> s per s
                for hop in am.hops or []:
                    if hop.ms is not None:
                        hops.add_metric([*labels, hop.name, hop.kind, hop.device], hop.ms / 1000.0)
        if snap.state is not None:
            for tenant, apps in sorted(snap.state.apps.items()):
                for name, st in sorted(apps.items()):
                    up.add_metric([dev, tenant, name], 1.0 if st.status == "running" else 0.0)
                    for inst in st.modules:
                        info.add_metric([dev, tenant, name], {"module": inst})
        yield from (frames, fps, latency, dropped, events, lag, lagging, up, hops, info)

    def _modules(self, snap: _Snapshot) -> Iterator[Metric]:
        f_in = CounterMetricFamily("edgeva_module_frames_in", "Messages the module instance consumed", labels=_MOD)
        f_out = CounterMetricFamily("edgeva_module_frames_out", "Messages the module instance produced",
                                    labels=_MOD)
        proc = _Quantiles("edgeva_module_processing_seconds",
                          "Time in process()/produce() per message over the last interval that had samples", _MOD)
        occ = GaugeMetricFamily("edgeva_module_queue_occupancy_ratio",
                                "Unread fraction of the module's output ring, per consumer (0..1; 1: the "
                                "consumer blocks the producer or starts dropping)", labels=[*_MOD, "consumer"])
        drops = CounterMetricFamily("edgeva_module_dropped_frames",
                                    "Frames a consumer of the module's output skipped (drop_oldest) or a link "
                                    "queue refused", labels=[*_MOD, "consumer"])
        restarts = CounterMetricFamily("edgeva_module_restarts", "Times the agent restarted the module process",
                                       labels=_MOD)
        dev = snap.device.device
        for name, mm in sorted(snap.device.modules.items()):
            labels = [dev, name, mm.type]
            f_in.add_metric(labels, mm.frames_in)
            f_out.add_metric(labels, mm.frames_out)
            restarts.add_metric(labels, mm.restarts)
            proc.add(labels, mm.proc_ms)
            for consumer, ratio in sorted(mm.occupancy.items()):
                occ.add_metric([*labels, consumer], ratio)
            for consumer, n in sorted(mm.dropped.items()):
                drops.add_metric([*labels, consumer], n)
        yield from (f_in, f_out, proc, occ, drops, restarts)

    def _links(self, snap: _Snapshot) -> Iterator[Metric]:
        up = GaugeMetricFamily("edgeva_link_up", "1 when the nng link to the peer device is connected",
                               labels=_LINK)
        counters = {
            field: CounterMetricFamily(f"edgeva_link_{name}", text, labels=_LINK)
            for field, name, text in (
                ("bytes_sent", "sent_bytes", "Bytes sent to the peer"),
                ("bytes_received", "received_bytes", "Bytes received from the peer"),
                ("messages_sent", "sent_messages", "Messages sent to the peer"),
                ("messages_received", "received_messages", "Messages received from the peer"),
                ("dropped", "dropped_messages", "Messages refused by the full send queue"),
            )
        }
        times = {
            field: _Quantiles(f"edgeva_link_{field}_seconds", text, _LINK)
            for field, text in (
                ("serialise", "Encoding a message on this (sending) side, over the last interval"),
                ("network", "Sender's hand-off to nng to the receiver's receive, over the last interval"),
                ("deserialise", "Decoding a message on this (receiving) side, over the last interval"),
            )
        }
        dev = snap.device.device
        for peer, lm in sorted(snap.device.links.items()):
            labels = [dev, peer]
            up.add_metric(labels, 1.0 if lm.connected else 0.0)
            for field, fam in counters.items():
                fam.add_metric(labels, getattr(lm, field))
            for field, fam in times.items():
                fam.add(labels, getattr(lm, f"{field}_ms"))
        yield from (up, *counters.values(), *times.values())


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of one agent: its own registry (the agent's families
    plus the ``process_*`` ones of the agent process), served from a daemon thread."""

    def __init__(self, port: int, host: str = default("metrics_host")) -> None:
        self.collector = EdgevaCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self.host, self.port = host, port
        self._server = None

    def start(self) -> MetricsServer:
        """Listen; ``OSError`` when ``host:port`` cannot be bound (in use, bad host)."""
        server, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self._server = server
        self.port = server.server_address[1]  # port 0: the one the OS picked
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
