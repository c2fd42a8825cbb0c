"""MQTT topic names of protocol v1. Build and parse topics only through these helpers.

The tenant is part of the topic so that a broker ACL (``pattern write edgeva/v1/+/%u/cmd/#``)
decides who may command what; the agent trusts the tenant it reads from the topic.
Every part is checked against ``^[A-Za-z0-9_.-]{1,64}$`` so that no ``+``, ``#`` or ``/``
can widen a subscription or forge another tenant's topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from edgeva.schemas.errors import BAD_REQUEST, EdgevaError, shown

PREFIX = "edgeva/v1"
DEFAULT_TENANT = "default"
#: In a subscription (``*_subscription``): any value of one level. The topics one publishes to
#: refuse it (``_check``), so a wildcard never reaches a publish.
ANY = "+"

Verb = Literal["deploy", "update", "start", "stop", "remove", "status", "metrics"]
VERBS: tuple[str, ...] = get_args(Verb)

_PART = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _check(kind: str, value: str, pattern: re.Pattern[str] = _PART) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise EdgevaError(BAD_REQUEST, f"invalid {kind} {shown(value)} (allowed: {pattern.pattern})", kind)
    return value


def cmd_topic(device: str, tenant: str, verb: str) -> str:
    """``edgeva/v1/{device}/{tenant}/cmd/{verb}``: operator -> agent."""
    if verb not in VERBS:
        raise EdgevaError(BAD_REQUEST, f"unknown verb {shown(verb)} (known: {', '.join(VERBS)})", "verb")
    return f"{PREFIX}/{_check('device', device)}/{_check('tenant', tenant)}/cmd/{verb}"


def _or_any(kind: str, value: str) -> str:
    return value if value == ANY else _check(kind, value)


def reply_prefix(device: str, tenant: str) -> str:
    """``edgeva/v1/{device}/{tenant}/reply/``: what every reply topic of ``tenant`` on ``device``
    begins with (an MQTT 5 response topic must be one of them: see ``parse_topic``)."""
    return f"{PREFIX}/{_check('device', device)}/{_check('tenant', tenant)}/reply/"


def reply_topic(device: str, tenant: str, request_id: str) -> str:
    """``edgeva/v1/{device}/{tenant}/reply/{request_id}``: agent -> operator."""
    rid = _check("request_id", request_id, _REQUEST_ID)
    return reply_prefix(device, tenant) + rid


def events_topic(device: str, tenant: str, app: str) -> str:
    """``edgeva/v1/{device}/{tenant}/events/{app}``: an app's results, rate-limited."""
    return f"{PREFIX}/{_check('device', device)}/{_check('tenant', tenant)}/events/{_check('app', app)}"


def tenant_metrics_topic(device: str, tenant: str) -> str:
    """``edgeva/v1/{device}/{tenant}/metrics``: the tenant's apps' metrics."""
    return f"{PREFIX}/{_check('device', device)}/{_check('tenant', tenant)}/metrics"


def state_topic(device: str) -> str:
    """``edgeva/v1/{device}/state``: retained device state; the last will says offline."""
    return f"{PREFIX}/{_check('device', device)}/state"


def device_metrics_topic(device: str) -> str:
    """``edgeva/v1/{device}/metrics``: device-wide metrics."""
    return f"{PREFIX}/{_check('device', device)}/metrics"


def cmd_subscription(device: str) -> str:
    """What an agent subscribes to: every tenant's commands for this device."""
    return f"{PREFIX}/{_check('device', device)}/+/cmd/+"


def reply_subscription(device: str, tenant: str) -> str:
    """What an operator client subscribes to for its replies from ``device`` (``ANY``: from
    every device)."""
    return f"{PREFIX}/{_or_any('device', device)}/{_check('tenant', tenant)}/reply/+"


def state_subscription(device: str = ANY) -> str:
    """``edgeva/v1/{device}/state``; by default every device's: ``edgeva/v1/+/state``."""
    return f"{PREFIX}/{_or_any('device', device)}/state"


def device_metrics_subscription(device: str = ANY) -> str:
    """``edgeva/v1/{device}/metrics``; by default every device's: ``edgeva/v1/+/metrics``."""
    return f"{PREFIX}/{_or_any('device', device)}/metrics"


def events_subscription(device: str = ANY, tenant: str = ANY, app: str = ANY) -> str:
    """``edgeva/v1/{device}/{tenant}/events/{app}``, each part ``ANY`` by default."""
    return f"{PREFIX}/{_or_any('device', device)}/{_or_any('tenant', tenant)}/events/{_or_any('app', app)}"


def tenant_metrics_subscription(device: str = ANY, tenant: str = ANY) -> str:
    """``edgeva/v1/{device}/{tenant}/metrics``, each part ``ANY`` by default."""
    return f"{PREFIX}/{_or_any('device', device)}/{_or_any('tenant', tenant)}/metrics"


def device_topic(topic: str) -> tuple[str, Literal["state", "metrics"]] | None:
    """``edgeva/v1/cam-01/state`` -> ``("cam-01", "state")``, ``.../metrics`` -> ``(.., "metrics")``;
    None for any other topic. The device of a state or of device metrics is the topic's, never
    the one its payload names: the broker's ACL decides who may write a device's topics, while
    anyone who may write any state topic can write any payload."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 4 or "/".join(parts[:2]) != PREFIX or not _PART.match(parts[2]):
        return None
    kind = parts[3]
    if kind == "state":
        return parts[2], "state"
    if kind == "metrics":
        return parts[2], "metrics"
    return None


def cmd_topic_tenant(topic: str) -> str | None:
    """The tenant a command topic names, even one ``parse_cmd_topic`` refuses (an unknown
    verb), so that its refusal can go to that tenant's reply topics; None if it names none."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) == 6 and "/".join(parts[:2]) == PREFIX and parts[4] == "cmd" and _PART.match(parts[3]):
        return parts[3]
    return None


def parse_cmd_topic(topic: str) -> tuple[str, str, Verb]:
    """``edgeva/v1/cam-01/acme/cmd/deploy`` -> ``("cam-01", "acme", "deploy")``.

    Raises ``EdgevaError(bad_request, path="topic")`` for anything else, including a part
    with characters outside ``[A-Za-z0-9_.-]``.
    """
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 6 or "/".join(parts[:2]) != PREFIX or parts[4] != "cmd":
        raise EdgevaError(BAD_REQUEST, f"not a command topic: {shown(topic)}", "topic")
    device, tenant, verb = parts[2], parts[3], parts[5]
    if not (_PART.match(device) and _PART.match(tenant)) or verb not in VERBS:
        raise EdgevaError(BAD_REQUEST, f"invalid command topic: {shown(topic)}", "topic")
    return device, tenant, verb  # type: ignore[return-value]


@dataclass(frozen=True)
class Topic:
    """A protocol v1 topic, parsed: ``device`` always; ``tenant`` and ``name`` (the verb, the
    request id, the app) for a tenant's topics; both None for a device's ``state`` / ``metrics``."""

    device: str
    kind: Literal["state", "metrics", "cmd", "reply", "events"]
    tenant: str | None = None
    name: str | None = None


_TENANT_KINDS = {"cmd": _PART, "reply": _REQUEST_ID, "events": _PART}


def parse_topic(topic: str) -> Topic | None:
    """Any protocol v1 topic -> its parts; None for anything else (another prefix, a part with
    characters the builders above would refuse, an unknown kind, a verb that is not one).

    ``edgeva/v1/cam-01/state`` -> ``Topic("cam-01", "state")``;
    ``edgeva/v1/cam-01/acme/events/tracking`` -> ``Topic("cam-01", "events", "acme", "tracking")``;
    ``edgeva/v1/cam-01/acme/metrics`` -> ``Topic("cam-01", "metrics", "acme")``."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) < 4 or "/".join(parts[:2]) != PREFIX or not _PART.match(parts[2]):
        return None
    device = parts[2]
    if len(parts) == 4:
        return Topic(device, parts[3]) if parts[3] in ("state", "metrics") else None  # type: ignore[arg-type]
    if not _PART.match(parts[3]):
        return None
    if len(parts) == 5:
        return Topic(device, "metrics", parts[3]) if parts[4] == "metrics" else None
    pattern = _TENANT_KINDS.get(parts[4])
    if len(parts) != 6 or pattern is None or not pattern.match(parts[5]) \
            or (parts[4] == "cmd" and parts[5] not in VERBS):
        return None
    return Topic(device, parts[4], parts[3], parts[5])  # type: ignore[arg-type]
