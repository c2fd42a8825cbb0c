"""Retained device state on ``edgeva/v1/{device}/state``.

The agent publishes it retained whenever apps or modules change, and sets its last will to
``{"device": ..., "status": "offline"}`` (every other field has a default for that reason).
Modules are listed by instance name, which is their identity (``schemas.graph``): one running
module can serve several apps, and ``apps`` says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeva.schemas.deployment import Name

AppStatus = Literal["deploying", "running", "stopped", "failed", "removing"]
ModuleStatus = Literal["starting", "running", "restarting", "backoff", "stopped", "failed"]


class AppState(BaseModel):
    """One app of one tenant on this device."""

    model_config = ConfigDict(extra="forbid")

    modules: list[str] = Field(
        default_factory=list, description="instance names (identities) of the app's modules here"
    )
    status: AppStatus
    error: str | None = Field(default=None, description="why it failed, when it did")
    awaiting_coordinator: str | None = Field(
        default=None,
        description="a part of an app spanning devices, restored with its last desired graph while its "
        "coordinator (this device id) could not be asked whether the app still exists or changed; "
        "cleared once the coordinator answers",
    )
    next_attempt_ts: float | None = Field(
        default=None,
        description="a failed app that ran when the agent last stopped: when the agent tries to start it "
        "again (unix time; tried with the modules' back-off until it runs or an operator acts)",
    )


class ModuleState(BaseModel):
    """One running module instance (an OS process), maybe shared by several apps."""

    model_config = ConfigDict(extra="forbid")

    type: str
    apps: list[str] = Field(default_factory=list, description="'tenant/app' of each user")
    pid: int | None = None
    status: ModuleStatus
    restarts: int = Field(default=0, ge=0, description="restarts by the supervisor so far")
    error: str | None = Field(default=None, max_length=600,
                              description="why it last stopped or failed to start (while not running)")
    backoff_s: float | None = Field(default=None, ge=0, description="the current back-off wait, while in back-off")
    next_attempt_ts: float | None = Field(
        default=None, description="unix time (s) of the next start, while in back-off (restarts never give up)")


class DeviceState(BaseModel):
    """What a device runs, for anyone listening (retained)."""

    model_config = ConfigDict(extra="forbid")

    device: Name
    status: Literal["online", "offline"]
    ts: float | None = Field(default=None, description="unix time (s) of this state")
    data_addr: str | None = Field(
        default=None, description="nng address peers dial for links, e.g. tcp://10.0.0.5:5600"
    )
    links: dict[str, str] = Field(
        default_factory=dict,
        description="peer device -> nng address this agent listens on for that peer's link "
        "(of two agents, the one whose id sorts first listens; the other dials this address)",
    )
    apps: dict[str, dict[str, AppState]] = Field(
        default_factory=dict, description="tenant -> app -> state"
    )
    modules: dict[str, ModuleState] = Field(
        default_factory=dict, description="instance name -> state"
    )
    version: str | None = Field(default=None, description="edgeva version of the agent")
    truncated: bool = Field(
        default=False, description="too big for one MQTT message (many tenants): modules, then apps, were left "
        "out; each tenant's status says everything")
