"""Messages between the agent and one module process (over a pipe, msgpack-encoded).

The agent starts a module process with a ``RunnerSpec``; afterwards it sends ``ToRunner``
messages and receives ``FromRunner`` ones. Both sides validate what they receive, so a module
process of another version fails loudly instead of misbehaving.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from edgeva.schemas.deployment import Policy

_STRICT = ConfigDict(extra="forbid")


class InputSpec(BaseModel):
    """One upstream ring the module consumes."""

    model_config = _STRICT
    ring: str
    policy: Policy = "block"
    depth: int | None = Field(default=None, ge=1)


class RunnerSpec(BaseModel):
    """Everything a module process needs to start."""

    model_config = _STRICT
    name: str = Field(description="instance name (its identity)")
    type: str = Field(description="module type, looked up in the module registry")
    config: dict[str, Any]
    device: str
    inputs: list[InputSpec] = Field(default_factory=list)
    output_ring: str
    nslots: int = Field(default=8, ge=2)
    apps: list[str] = Field(default_factory=list, description="'tenant/app' using this instance")
    sink_for: list[str] = Field(default_factory=list, description="apps whose last module this is")
    metrics_interval: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"
    hold: bool = Field(default=False, description="sources: wait for GoMsg before producing")
    unattended: bool = Field(
        default=False, description="no operator waits on this start (restore at boot, restart after a failure): "
        "sources wait for their input instead of failing setup")
    hang_timeout: float = Field(
        default=10.0, gt=0, le=3600,
        description="seconds one process/produce call may take before the agent calls the module hung, "
        "kills and restarts it (a first call gets at least 60 s)",
    )


class UpdateMsg(BaseModel):
    model_config = _STRICT
    op: Literal["update"] = "update"
    config: dict[str, Any]


class AppsMsg(BaseModel):
    """The apps using the instance changed (sharing): new event targets and sinks."""

    model_config = _STRICT
    op: Literal["apps"] = "apps"
    apps: list[str]
    sink_for: list[str]


class GoMsg(BaseModel):
    """Sources held at start: the whole app is up, start producing."""

    model_config = _STRICT
    op: Literal["go"] = "go"


class FinishMsg(BaseModel):
    """Sources: stop producing and end the stream (downstream drains it, then ends too)."""

    model_config = _STRICT
    op: Literal["finish"] = "finish"


class StopMsg(BaseModel):
    model_config = _STRICT
    op: Literal["stop"] = "stop"


class ReadyMsg(BaseModel):
    model_config = _STRICT
    op: Literal["ready"] = "ready"
    ring: str
    slot_size: int
    live: bool = False
    #: what the module says of itself once set up (``Module.describe``: e.g. its provider)
    info: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=16)


#: Exit code of a module process that asked to be started again (``modules.base.Restart``).
EXIT_RESTART = 75


class FailedMsg(BaseModel):
    model_config = _STRICT
    op: Literal["failed"] = "failed"
    stage: Literal["setup", "attach", "run", "update", "restart"]
    message: str


class EventMsg(BaseModel):
    model_config = _STRICT
    op: Literal["event"] = "event"
    event: dict[str, Any]


class MetricsMsg(BaseModel):
    """Counters are cumulative; ``proc_ms`` holds [p50, p95] of the last interval (or []);
    ``sink`` holds [frame_id, source, latency_ms, t_done_s] of each message finished here since the last
    report, for the apps this instance ends."""

    model_config = _STRICT
    op: Literal["metrics"] = "metrics"
    frames_in: int
    frames_out: int
    proc_ms: list[float]
    sink: list[tuple[int, str, float, float]] = Field(default_factory=list)
    counters: dict[str, float] = Field(
        default_factory=dict, description="the module's own figures (Module.metrics), e.g. reid's embeddings per frame")


class UpdatedMsg(BaseModel):
    model_config = _STRICT
    op: Literal["updated"] = "updated"
    applied: bool
    message: str = ""


class EndedMsg(BaseModel):
    """The source ended (file without loop, max_frames reached)."""

    model_config = _STRICT
    op: Literal["ended"] = "ended"


ToRunner = Annotated[UpdateMsg | AppsMsg | GoMsg | FinishMsg | StopMsg, Field(discriminator="op")]
FromRunner = Annotated[
    ReadyMsg | FailedMsg | EventMsg | MetricsMsg | UpdatedMsg | EndedMsg, Field(discriminator="op")
]
TO_RUNNER: TypeAdapter[Any] = TypeAdapter(ToRunner)
FROM_RUNNER: TypeAdapter[Any] = TypeAdapter(FromRunner)
