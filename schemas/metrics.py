"""Metrics payloads: ``edgeva/v1/{device}/{tenant}/metrics`` and ``edgeva/v1/{device}/metrics``.

Counters (frames, bytes, drops, events, restarts) are cumulative since the agent started the
instance or app, so a lost or late message loses nothing: take differences for rates.
Times (percentiles) cover the last interval (``interval_s``) and are null when it had no sample;
an app's latency repeats the last interval that had samples while its newest sample is under
2.5 intervals old (modules report on clocks of their own, so a tick can fall between reports).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeva.schemas.deployment import Name

_STRICT = ConfigDict(extra="forbid")


class P2(BaseModel):
    """p50 / p95 in milliseconds."""

    model_config = _STRICT

    p50: float | None = None
    p95: float | None = None


class P3(P2):
    """p50 / p95 / p99 in milliseconds."""

    p99: float | None = None


class ModuleMetrics(BaseModel):
    """One module instance. ``occupancy``/``dropped`` are per consumer of its output ring
    (consumer = the downstream instance name, or ``link:<device>``)."""

    model_config = _STRICT

    type: str
    frames_in: int = Field(default=0, ge=0)
    frames_out: int = Field(default=0, ge=0)
    proc_ms: P2 = Field(default_factory=P2, description="time in process()/produce()")
    occupancy: dict[str, float] = Field(
        default_factory=dict, description="consumer -> unread fraction of the ring, 0..1"
    )
    dropped: dict[str, int] = Field(
        default_factory=dict, description="consumer -> frames skipped (drop_oldest)"
    )
    restarts: int = Field(default=0, ge=0)
    status: str | None = Field(default=None, description="running, restarting, backoff, ... (see the device state)")
    next_attempt_ts: float | None = Field(default=None, description="unix time of the next start, while in back-off")
    counters: dict[str, float] = Field(
        default_factory=dict, description="the module's own figures, e.g. reid: embeddings, embeddings_per_frame"
    )


class HopMetrics(BaseModel):
    """One hop along an app's main path (its first source to its last module): a module's
    processing, or a crossed link (serialise on the sender + network + deserialise on the
    receiver). Times are p50 of the last interval, in ms; ``cumulative_ms`` sums the hops so
    far (the paper's Figure 8, per hop)."""

    model_config = _STRICT

    kind: Literal["module", "link"]
    name: str = Field(description="module name in the app, or 'SENDER->RECEIVER' for a link")
    device: Name = Field(description="device of the module; for a link, the receiving device")
    ms: float | None = Field(default=None, description="this hop's time (p50); null: no sample yet")
    serialise_ms: float | None = Field(default=None, description="links: encode on the sender")
    network_ms: float | None = Field(default=None, description="links: sender's send to receiver's receive")
    deserialise_ms: float | None = Field(default=None, description="links: decode on the receiver")
    cumulative_ms: float | None = Field(default=None, description="sum of the hops up to this one")


class AppMetrics(BaseModel):
    """One application, measured by frame id from decode to the app's last module."""

    model_config = _STRICT

    frames: int = Field(default=0, ge=0, description="frames that reached the app's last module")
    dropped: int = Field(default=0, ge=0, description="frames lost on the way (all its consumers)")
    latency_ms: P3 = Field(default_factory=P3, description="end-to-end latency")
    lag_ms_per_min: float | None = Field(
        default=None, description="slope of latency over time; > 0 steadily means falling behind"
    )
    lagging: bool = Field(default=False, description="the agent judges the app falls behind")
    events: int = Field(default=0, ge=0, description="events published")
    hops: list[HopMetrics] | None = Field(
        default=None,
        description="apps spanning devices, on the coordinating agent: per-hop times along "
        "the main path and their cumulative sum; null otherwise",
    )


class LinkMetrics(BaseModel):
    """The nng link to one peer device."""

    model_config = _STRICT

    connected: bool = False
    bytes_sent: int = Field(default=0, ge=0)
    bytes_received: int = Field(default=0, ge=0)
    messages_sent: int = Field(default=0, ge=0)
    messages_received: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0, description="messages refused by a full send queue")
    bad: int = Field(default=0, ge=0, description="received messages dropped as malformed (hostile or broken peer)")
    unrouted: int = Field(default=0, ge=0, description="received messages of a stream nobody here receives")
    serialise_ms: P2 = Field(default_factory=P2)
    network_ms: P2 = Field(default_factory=P2, description="sender's send to receiver's receive")
    deserialise_ms: P2 = Field(default_factory=P2)
    arrays: dict[str, list[str]] = Field(
        default_factory=dict, description="stream this device sends (the sending module's instance) -> the arrays "
        "its messages carried across so far; arrays no module beyond the link uses are left out")
    arrays_left_out: dict[str, list[str]] = Field(
        default_factory=dict, description="stream -> the arrays left out of its messages (no module beyond the "
        "link uses them)")


class TenantMetrics(BaseModel):
    """Payload of ``edgeva/v1/{device}/{tenant}/metrics``: only that tenant's apps and the
    module instances they use."""

    model_config = _STRICT

    device: Name
    tenant: Name
    ts: float = Field(description="unix time (s)")
    interval_s: float = Field(gt=0)
    apps: dict[str, AppMetrics] = Field(default_factory=dict)
    modules: dict[str, ModuleMetrics] = Field(default_factory=dict)


class DeviceMetrics(BaseModel):
    """Payload of ``edgeva/v1/{device}/metrics``: every instance and link of the device."""

    model_config = _STRICT

    device: Name
    ts: float = Field(description="unix time (s)")
    interval_s: float = Field(gt=0)
    cpu_percent: float | None = None
    mem_mb: float | None = None
    modules: dict[str, ModuleMetrics] = Field(default_factory=dict)
    links: dict[str, LinkMetrics] = Field(default_factory=dict, description="peer device -> link")
    events_waiting: int = Field(default=0, ge=0, description="events kept while the broker was away, not yet sent")
    truncated: bool = Field(
        default=False, description="too big for one MQTT message (many tenants): per-module figures left out; "
        "each tenant's metrics topic has its modules")
    events_dropped_offline: int = Field(
        default=0, ge=0, description="events lost because the broker was away longer than the outbox holds")
