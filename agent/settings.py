"""Every setting of ``edgeva agent``, its default, bounds and meaning, written once.

``AgentSettings`` is the one place a setting's default lives. ``edgeva agent``'s command line is
generated from it (``control/commands/agent.py``: each field is the flag ``--field-name``, its
description the help, its default shown there, its bounds checked when the flag is parsed), and
the classes that take these values as constructor arguments (``AgentCore``, ``AgentBridge``,
``TenantLimits``, ``RestartPolicy``, ``Link``/``Peers``, ``PathPolicy``) read their defaults from
here with ``default()``, so that an embedder (the demo, a benchmark, a test) that leaves one out
gets what an agent started with no flags gets. To change a default, change it here.

Sizes are in MB on the command line (``--max-slot-mb``) and in bytes in the classes that take
them: ``mb_to_bytes`` converts, the same way everywhere.

This module imports nothing heavier than pydantic: every ``edgeva`` invocation builds the
agent's parser from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticUndefined

#: where ``edgeva broker`` (``control.broker.EmbeddedBroker``) listens when given no flags ...
DEFAULT_BROKER_HOST, DEFAULT_BROKER_PORT = "127.0.0.1", 1883
#: ... and so the broker every ``edgeva`` command dials when given no ``--broker`` (nor ``EDGEVA_BROKER``)
DEFAULT_BROKER = f"mqtt://{DEFAULT_BROKER_HOST}:{DEFAULT_BROKER_PORT}"


@dataclass(frozen=True)
class Flag:
    """How a setting appears on ``edgeva agent``'s command line, besides its name, type, default
    and description (the field's). ``env``: the environment variable that gives the flag's value
    when the flag is absent; ``metavar``: the value's name in ``--help``; ``group``: the argument
    group it is listed under (see ``GROUPS`` in ``control/commands/agent.py``); ``shown``: what
    ``--help`` says the default is, where the field's default (None: computed when the agent
    starts) would not say it; ``repeat``: the flag may be given several times (from ``env``,
    values are separated by ``os.pathsep``)."""

    env: str | None = None
    metavar: str | None = None
    group: str | None = None
    shown: str | None = None
    repeat: bool = False


_MEDIA, _LIMITS, _RESTARTS, _LINKS = "paths", "limits", "restarts", "links"


class AgentSettings(BaseModel):
    """What ``edgeva agent`` is started with. Unknown settings are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(description="this device's id (letters, digits, _ . -)")
    broker: Annotated[str, Flag(env="EDGEVA_BROKER")] = Field(
        DEFAULT_BROKER, description="mqtt://HOST:PORT or mqtts://HOST:PORT")
    state_dir: Annotated[str | None, Flag(shown="~/.local/state/edgeva/DEVICE")] = Field(
        None, description="where the desired state lives")
    prefix: Annotated[str | None, Flag(shown="the device id")] = Field(
        None, description="shared-memory name prefix")
    username: Annotated[str | None, Flag(env="EDGEVA_USERNAME")] = Field(None, description="broker user")
    password: Annotated[str | None, Flag(env="EDGEVA_PASSWORD")] = Field(None, description="broker password")
    password_file: Annotated[str | None, Flag(env="EDGEVA_PASSWORD_FILE", metavar="FILE")] = Field(
        None, description="read the broker password from FILE's first line, e.g. a mounted Kubernetes Secret")
    tls_ca: Annotated[str | None, Flag(metavar="PEM")] = Field(
        None, description="CA certificate(s) to verify the broker")
    tls_cert: Annotated[str | None, Flag(metavar="PEM")] = Field(None, description="client certificate")
    tls_key: Annotated[str | None, Flag(metavar="PEM")] = Field(None, description="client certificate's key")
    tls_insecure: bool = Field(False, description="do not check the broker's host name")
    # the values of agent.mqtt.PROTOCOLS (not imported: it would load paho into every `edgeva`
    # run; tests/test_agent_settings.py keeps the two equal)
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="MQTT version")
    metrics_interval: Annotated[float, Flag(metavar="S")] = Field(
        2.0, gt=0, description="seconds between metrics")
    event_rate: Annotated[float, Flag(metavar="N")] = Field(
        100.0, ge=0, description="events per second per app at most")
    metrics_port: Annotated[int | None, Flag(metavar="N")] = Field(
        None, ge=0, le=65535,
        description="serve Prometheus metrics at http://HOST:N/metrics (0: a free port; see docs/prometheus.md)")
    metrics_host: Annotated[str, Flag(metavar="HOST")] = Field(
        "127.0.0.1", description="address for --metrics-port; 0.0.0.0 lets a Prometheus on another host "
                                 "scrape (the page shows every tenant's apps)")
    # a ring needs two slots at least (agent.dataplane.ring)
    slots: int = Field(8, ge=2, description="slots per ring")

    # -- files and URLs tenants' modules may use (agent.paths.PathPolicy) --------------------------
    media_dir: Annotated[list[str] | None, Flag(env="EDGEVA_MEDIA_DIRS", metavar="DIR", group=_MEDIA,
                                                shown="the working directory, none when that is /",
                                                repeat=True)] = Field(
        None, description="a directory every tenant may read media from; repeatable")
    tenant_media_root: Annotated[str | None, Flag(env="EDGEVA_TENANT_MEDIA_ROOT", metavar="ROOT", group=_MEDIA)] = (
        Field(None, description="each tenant also reads ROOT/<tenant>"))
    output_root: Annotated[str, Flag(env="EDGEVA_OUTPUT_ROOT", metavar="ROOT", group=_MEDIA)] = Field(
        "out", description="each tenant writes files only under ROOT/<tenant>")
    url_scheme: Annotated[list[str], Flag(metavar="SCHEME", group=_MEDIA, repeat=True)] = Field(
        ["rtsp", "rtsps"], description="URL scheme a source may use; repeatable or comma-separated")
    url_host: Annotated[list[str], Flag(
        metavar="HOST", group=_MEDIA, repeat=True,
        shown="none, so that no tenant reaches other hosts of the network through its modules")] = Field(
        [], description="host a source URL or an inference server URL may name: a name, an IP address or a "
                        "network (192.168.1.0/24); repeatable or comma-separated; '*' for any host")

    # -- per-tenant limits (agent.limits.TenantLimits) ---------------------------------------------
    max_apps: Annotated[int, Flag(metavar="N", group=_LIMITS)] = Field(32, ge=0, description="apps per tenant")
    max_modules: Annotated[int, Flag(metavar="N", group=_LIMITS)] = Field(
        64, ge=0, description="module instances per tenant, and modules one app may declare")
    max_slot_mb: Annotated[float, Flag(metavar="MB", group=_LIMITS)] = Field(
        64.0, gt=0, description="largest output message of a tenant's module: frame and crops")
    max_shm_mb: Annotated[float, Flag(metavar="MB", group=_LIMITS)] = Field(
        2048.0, gt=0, description="shared memory all of a tenant's rings may take")

    # -- restarts (agent.supervisor.RestartPolicy) -------------------------------------------------
    restart_backoff_first: Annotated[float, Flag(metavar="S", group=_RESTARTS)] = Field(
        1.0, gt=0, description="first back-off wait, doubled at each failure")
    restart_backoff_cap: Annotated[float, Flag(metavar="S", group=_RESTARTS)] = Field(
        300.0, gt=0, description="longest back-off wait (Kubernetes' cap for a crash-looping container)")

    # -- links to other agents (agent.peers.Peers, agent.dataplane.link) ---------------------------
    data_bind: Annotated[str | None, Flag(env="EDGEVA_DATA_BIND", metavar="tcp://HOST:PORT", group=_LINKS)] = Field(
        None, description="host to listen on for peers' links and first port to try (0: any free port; N: "
                          "N, N+1, ... one per peer); tls+tcp:// with the --link-tls-* files")
    data_advertise: Annotated[str | None, Flag(metavar="HOST", group=_LINKS, shown="the --data-bind host")] = (
        Field(None, description="host peers dial"))
    link_tls_ca: Annotated[str | None, Flag(metavar="PEM", group=_LINKS)] = Field(
        None, description="links over mutual TLS: CA that signs every agent's certificate")
    link_tls_cert: Annotated[str | None, Flag(metavar="PEM", group=_LINKS)] = Field(
        None, description="this agent's link certificate")
    link_tls_key: Annotated[str | None, Flag(metavar="PEM", group=_LINKS)] = Field(
        None, description="this agent's link certificate's key")
    link_tls_check_name: Annotated[bool, Flag(group=_LINKS)] = Field(
        False, description="also require a listener's certificate to name its device id (subjectAltName)")
    # the default holds a 1080p RGB frame (6.2 MB); 4K needs more, on both peers
    link_max_mb: Annotated[float, Flag(metavar="MB", group=_LINKS)] = Field(
        16.0, gt=0, description="largest message on a link, same on every agent")
    link_slot_mb: Annotated[float, Flag(metavar="MB", group=_LINKS)] = Field(
        8.0, gt=0, description="slot size of rings fed by a link: the largest message a peer's module may "
                               "send here (the default holds a 1080p RGB frame)")
    fleet_token: Annotated[str | None, Flag(env="EDGEVA_FLEET_TOKEN", metavar="SECRET", group=_LINKS)] = Field(
        None, description="secret shared by every agent of the fleet: a part of an app spanning devices is "
                          "accepted only with it, so that tenants cannot forge parts; without it this agent "
                          "refuses parts sent to it")
    fleet_token_file: Annotated[str | None, Flag(metavar="FILE", group=_LINKS)] = Field(
        None, description="read the fleet token from FILE (keeps it out of ps)")
    # above the 30 s a part's modules have to become ready (agent.supervisor.READY_TIMEOUT_S)
    part_timeout: Annotated[float, Flag(metavar="S", group=_LINKS)] = Field(
        45.0, gt=0, description="how long a coordinating agent waits for another device's part to answer")
    link_timeout: Annotated[float, Flag(metavar="S", group=_LINKS)] = Field(
        15.0, gt=0, description="how long a starting part waits for its links to peers to be up before it "
                                "fails (a TLS peer from another CA never connects); keep it under --part-timeout")

    @field_validator("url_scheme", "url_host", mode="before")
    @classmethod
    def _comma_separated(cls, values: Any) -> Any:
        """``--url-host a,b --url-host c`` is ``[a, b, c]``: each value split at commas."""
        if isinstance(values, list | tuple):
            return [v.strip() for x in values for v in str(x).split(",") if v.strip()]
        return values


def default(name: str) -> Any:
    """The default of setting ``name`` (a field of ``AgentSettings``: ``default("slots")`` is 8).
    A copy for a list, so that no caller can change the default of another. ``KeyError`` for a
    name that is no setting or a setting without a default (``device``)."""
    value = AgentSettings.model_fields[name].default
    if value is PydanticUndefined:
        raise KeyError(f"setting {name!r} has no default")
    return list(value) if isinstance(value, list) else value


def mb_to_bytes(mb: float) -> int:
    """A size given in MB (MiB: 2**20 bytes) on the command line, in bytes."""
    return int(mb * (1 << 20))
