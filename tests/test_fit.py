"""Device-wide messages stay under the broker's packet limit however many tenants a device has
(agent/fit.py): over the limit, mosquitto drops a publish, and answers a QoS 1 one in a way that
made paho reconnect and resend the retained state for ever."""

from __future__ import annotations

import json

from edgeva.agent.fit import MAX_DEVICE_MESSAGE, fit_metrics, fit_state
from edgeva.schemas.metrics import DeviceMetrics, ModuleMetrics
from edgeva.schemas.state import AppState, DeviceState, ModuleState

ERR = "e" * 600  # the longest error a state carries


def _state(tenants: int) -> DeviceState:
    apps = {f"tenant{t:02d}": {f"app{a:02d}-" + "n" * 56: AppState(
        modules=[f"m{a}-{i}-" + "x" * 40 for i in range(8)], status="failed", error=ERR) for a in range(32)}
        for t in range(tenants)}
    mods = {f"m{t}-{i}-" + "x" * 40: ModuleState(type="decoder", apps=[f"tenant{t:02d}/app"], status="backoff",
                                                   error=ERR, next_attempt_ts=1.0)
            for t in range(tenants) for i in range(64)}
    return DeviceState(device="cam-01", status="online", ts=1.0, data_addr="tcp://10.0.0.5:5600",
                       links={"cam-02": "tcp://10.0.0.5:5601"}, apps=apps, modules=mods)


def test_a_state_that_fits_goes_whole() -> None:
    small = _state(1)
    assert json.loads(fit_state(small)) == json.loads(small.model_dump_json())


def test_a_state_of_many_tenants_is_cut_to_fit_and_keeps_what_peers_need() -> None:
    big = _state(64)
    assert len(big.model_dump_json()) > 4 * MAX_DEVICE_MESSAGE  # many tenants at their limits
    out = fit_state(big)
    assert len(out) <= MAX_DEVICE_MESSAGE
    got = DeviceState.model_validate_json(out)
    assert got.truncated and got.status == "online" and got.links == big.links and got.data_addr == big.data_addr
    mid = fit_state(_state(20))  # modules left out, apps kept
    got = DeviceState.model_validate_json(mid)
    assert len(mid) <= MAX_DEVICE_MESSAGE and got.truncated and not got.modules and len(got.apps) == 20


def test_device_metrics_of_many_modules_are_cut_to_fit() -> None:
    dm = DeviceMetrics(device="cam-01", ts=1.0, interval_s=2.0, modules={
        f"m{i}-" + "x" * 60: ModuleMetrics(type="detector", occupancy={f"c{j}" + "y" * 60: 0.5 for j in range(8)},
                                          dropped={f"c{j}" + "y" * 60: 1 for j in range(8)})
        for i in range(4096)})
    out = fit_metrics(dm)
    assert len(out) <= MAX_DEVICE_MESSAGE and DeviceMetrics.model_validate_json(out).truncated
    small = dm.model_copy(update={"modules": dict(list(dm.modules.items())[:3])})
    assert not DeviceMetrics.model_validate_json(fit_metrics(small)).truncated
