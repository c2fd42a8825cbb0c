"""Device-wide messages kept under the broker's packet limit.

A tenant's own messages (its replies, metrics, events) are bounded by its limits; two messages
grow with the number of tenants: the retained device state and the device metrics. The shipped
mosquitto drops a publish over ``message_size_limit`` (1.75 MiB), and under MQTT 5 answers a
QoS 1 one with a reason code that paho takes for a malformed packet: it disconnects, reconnects
and sends the same state again, for ever. So the agent makes them fit: whole when they fit in
``MAX_DEVICE_MESSAGE`` bytes, else without their per-module detail (``truncated``), else
without the per-app detail too. Each tenant's ``status`` and metrics still say everything.
"""

from __future__ import annotations

from edgeva.schemas.metrics import DeviceMetrics
from edgeva.schemas.state import DeviceState

#: Largest device state or device metrics message the agent publishes (under the shipped
#: broker's 1.75 MiB ``message_size_limit``, with room for the MQTT header and properties).
MAX_DEVICE_MESSAGE = 1 << 20


def fit_state(state: DeviceState, limit: int = MAX_DEVICE_MESSAGE) -> str:
    """The state as JSON within ``limit`` bytes: whole, else without modules, else without apps
    (the device, its status and links, which peers need to dial it, always stay)."""
    text = state.model_dump_json()
    if len(text) <= limit:
        return text
    text = state.model_copy(update={"modules": {}, "truncated": True}).model_dump_json()
    if len(text) <= limit:
        return text
    return state.model_copy(update={"modules": {}, "apps": {}, "truncated": True}).model_dump_json()


def fit_metrics(dm: DeviceMetrics, limit: int = MAX_DEVICE_MESSAGE) -> str:
    """The device metrics as JSON within ``limit`` bytes: whole, else without per-module figures
    (links and the device's own figures stay; each tenant's metrics topic has its modules)."""
    text = dm.model_dump_json()
    if len(text) <= limit:
        return text
    return dm.model_copy(update={"modules": {}, "truncated": True}).model_dump_json()
