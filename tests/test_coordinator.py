"""agent.coordinator through its public interface, in-process: no broker, no module, no peer.

The bridge hands the coordinator how to reach other agents (``request``); here a fake stands in
for it, so that what the coordinator sends, and what it answers an operator, is seen exactly:
an ``update`` sent to a part goes to its coordinator (whatever its request id) and the
coordinator's answer comes back to the operator marked with it; an offline coordinator is not
waited on; one tenant may keep at most ``MAX_FORWARDS`` updates waiting, and a finished one
frees its place (a leak would refuse that tenant's updates for good)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeva.agent.coordinator import MAX_FORWARDS, Coordinator
from edgeva.agent.core import AgentCore, App
from edgeva.agent.fleet import FleetView
from edgeva.schemas.commands import UpdateCommand
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import EdgevaError

HERE, COORD, OTHER = "cam-b", "cam-a", "cam-c"


class FakeAgents:
    """``request`` of the bridge: records each call, answers ``reply`` once ``go`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict, float]] = []
        self.reply: dict = {"ok": True, "result": {"app": "split", "status": "running"}}
        self.go = threading.Event()
        self.go.set()
        self.lock = threading.Lock()

    def __call__(self, device: str, tenant: str, verb: str, payload: dict, timeout: float) -> dict:
        with self.lock:
            self.calls.append((device, tenant, verb, payload, timeout))
        self.go.wait(10)
        return self.reply


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Coordinator, FakeAgents, FleetView]]:
    core = AgentCore(device=HERE, state_dir=tmp_path / "state", prefix=f"t{uuid.uuid4().hex[:8]}")
    # a part on this device of an app that cam-a coordinates (and that also runs on cam-c)
    dep = Deployment.model_validate({"app": "split", "part_of": {"coordinator": COORD}, "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["det"], "device": COORD},
        "det": {"type": "detector", "args": {}, "outputs": ["pub"], "device": HERE},
        "pub": {"type": "publish", "args": {}, "device": OTHER}}})
    core.apps["split"] = App(tenant="acme", deployment=dep)
    fleet, agents = FleetView(), FakeAgents()
    for d in (COORD, HERE, OTHER):
        fleet.put_state(d, json.dumps({"device": d, "status": "online"}).encode())
    coord = Coordinator(core, fleet, request=agents, submit=lambda t, fn, what: fn(), ready=lambda t: True,
                        state_changed=lambda: None, part_timeout=7.0, link_timeout=3.0, fleet_token="s3cret")
    try:
        yield coord, agents, fleet
    finally:
        core.close()


def _forward(coord: Coordinator, tenant: str = "acme", rid: str = "op-1") -> tuple[threading.Event, list[dict]]:
    done, got = threading.Event(), []

    def answer(reply: bytes) -> None:
        got.append(json.loads(reply))
        done.set()

    cmd = UpdateCommand(app="split", module="det", args={"threshold": 0.6})
    coord.forward(coord.forward_to(tenant, "update", cmd), tenant, cmd, rid, answer)  # type: ignore[arg-type]
    return done, got


def test_an_update_sent_to_a_part_goes_to_its_coordinator_and_its_answer_comes_back(setup) -> None:
    coord, agents, _fleet = setup
    cmd = UpdateCommand(app="split", module="det", args={"threshold": 0.6})
    assert coord.forward_to("acme", "update", cmd) == COORD
    assert coord.forward_to("acme", "start", cmd) is None  # only updates are forwarded
    assert coord.forward_to("globex", "update", cmd) is None  # another tenant's app: its usual refusal
    assert coord.forward_to("acme", "update", UpdateCommand(app="none", module="m", args={})) is None
    done, got = _forward(coord)
    assert done.wait(10)
    # the coordinator waits on the module's device, then up to 15 s on each of its other parts
    assert agents.calls == [(COORD, "acme", "update", {"app": "split", "module": "det", "args": {"threshold": 0.6}},
                             7.0 + 15.0 * 3)]
    assert got == [{"request_id": "op-1", "ok": True,
                    "result": {"app": "split", "status": "running", "coordinator": COORD}}]
    agents.reply = {"ok": False, "error": {"code": "bad_request", "message": "no such arg", "path": "args.x"}}
    done, got = _forward(coord, rid="op-2")
    assert done.wait(10)
    assert got[0]["ok"] is False and got[0]["request_id"] == "op-2"
    assert got[0]["error"]["code"] == "bad_request" and got[0]["error"]["path"] == "args.x"
    assert got[0]["error"]["message"] == f"coordinator {COORD!r}: no such arg"


def test_an_offline_coordinator_is_not_waited_on(setup) -> None:
    coord, agents, fleet = setup
    fleet.put_state(COORD, json.dumps({"device": COORD, "status": "offline"}).encode())
    done, got = _forward(coord)
    assert done.wait(10)
    assert agents.calls == []
    assert got[0]["ok"] is False and got[0]["error"]["code"] == "unknown_device" and got[0]["error"]["path"] == "app"


def test_a_tenant_keeps_at_most_max_forwards_waiting_and_a_finished_one_frees_its_place(setup) -> None:
    coord, agents, _fleet = setup
    agents.go.clear()  # the coordinator does not answer yet
    waiting = [_forward(coord, rid=f"op-{i}") for i in range(MAX_FORWARDS)]
    with pytest.raises(EdgevaError) as e:
        _forward(coord, rid="op-over")
    assert e.value.code == "limit" and e.value.path == "app"
    agents.go.set()
    assert all(done.wait(10) for done, _ in waiting)
    for _ in range(50):  # the count drops after the answer is handed over: once more a full set
        try:
            again = [_forward(coord, rid=f"again-{i}") for i in range(MAX_FORWARDS)]
            break
        except EdgevaError:
            threading.Event().wait(0.05)
    else:
        pytest.fail("finished forwards did not free their places")
    assert all(done.wait(10) for done, _ in again)


def test_what_a_part_gets_carries_the_fleet_token_and_what_a_tenant_reads_does_not(setup) -> None:
    coord, _agents, _fleet = setup
    dep = Deployment.model_validate({"app": "own", "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}, "device": OTHER}}})
    app = App(tenant="acme", deployment=dep)
    assert coord.remote_parts(app) == {OTHER}
    part = coord.status_part(app)
    assert part is not None and part["part_of"] == {"coordinator": HERE, "hold": False}
    assert part["modules"]["dec"]["device"] == HERE and "request_id" not in part
    part_here = coord.core.apps["split"]  # a part of an app cam-a coordinates: none of its commands are ours
    assert coord.remote_parts(part_here) == set() and coord.status_part(part_here) is None
