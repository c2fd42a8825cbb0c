"""Apps spanning devices: agents as separate processes on one machine, linked by nng.

Every deploy here goes to a device's command topic from a plain paho client (as Node-RED or
mosquitto_pub would), not through the CLI: the receiving agent coordinates the parts.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.agent_harness import AgentProc, Commander, Watcher

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}
BIND = ("--data-bind", "tcp://127.0.0.1:0")


def split_app(name: str, src: str, dst: str, **pub) -> dict:
    return {"app": name, "modules": {
        "dec": {**DEC, "device": src, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}, "device": dst, **pub},
    }}


def ids_of(events: list) -> list[int]:
    return [e["frame_id"] for e in events]


def state(w: Watcher, device: str) -> dict:
    return w.get(f"edgeva/v1/{device}/state")[-1]


@pytest.fixture
def fleet(mosquitto, tmp_path):
    uid = uuid.uuid4().hex[:6]
    w = Watcher(mosquitto.url)
    agents: dict[str, AgentProc] = {}

    def start(letter: str) -> str:
        device = f"{letter}-{uid}"
        agents[device] = AgentProc(mosquitto.url, device, tmp_path / device, w, *BIND)
        return device

    yield w, start, agents
    for a in agents.values():
        a.stop()
    w.close()


def test_two_agents_split_pipeline_every_frame_in_order(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    # Published to B, the downstream device: B coordinates and hands A its part.
    r = Commander(w, b).send("deploy", split_app("split", a, b, policy="block"))
    assert r["ok"], r
    assert set(r["result"]["parts"]) == {a}
    ev = f"edgeva/v1/{b}/default/events/split"
    events = w.wait(ev, lambda ms: len(ms) >= 60, timeout=20)
    ids = ids_of(events)
    assert ids == list(range(len(ids)))  # from frame 0, none lost, in order
    assert all(e["latency_ms"] < 1000 for e in events)
    # Metrics: the link on both sides, and B's per-hop view of the app.
    dm = w.wait(f"edgeva/v1/{a}/metrics", lambda ms: ms[-1]["links"].get(b, {}).get("messages_sent", 0) > 0)[-1]
    assert dm["links"][b]["connected"]
    tm = w.wait(f"edgeva/v1/{b}/default/metrics",
                lambda ms: (ms[-1]["apps"].get("split", {}).get("hops") or [{}])[-1].get("cumulative_ms") is not None
                and any(h["kind"] == "link" and h["ms"] is not None for h in ms[-1]["apps"]["split"]["hops"]))[-1]
    hops = tm["apps"]["split"]["hops"]
    assert [h["kind"] for h in hops] == ["module", "link", "module"]
    assert hops[1]["name"] == f"{a}->{b}"
    print("per-hop p50 (ms):", [(h["name"], h["ms"], h["serialise_ms"], h["network_ms"], h["deserialise_ms"],
                                 h["cumulative_ms"]) for h in hops])
    print("e2e latency p50 (ms):", tm["apps"]["split"]["latency_ms"])
    # remove on the coordinator removes A's part too
    r = Commander(w, b).send("remove", {"app": "split"})
    assert r["ok"] and r["result"]["parts"][a]["removed"], r
    for d in (a, b):
        w.wait(f"edgeva/v1/{d}/state", lambda ms: not ms[-1]["modules"])


def test_three_agents_share_decoder_and_survive_peer_kill(fleet, tmp_path):
    w, start, agents = fleet
    a, b, c = start("a"), start("b"), start("c")
    # A synthetic source is not live, so the lossy hop is asked for: B may vanish.
    r1 = Commander(w, b).send("deploy", split_app("one", a, b, policy="drop_oldest"))
    assert r1["ok"], r1
    r2 = Commander(w, c).send("deploy", split_app("two", a, c))
    assert r2["ok"], r2
    ev_b, ev_c = f"edgeva/v1/{b}/default/events/one", f"edgeva/v1/{c}/default/events/two"
    w.wait(ev_b, lambda ms: len(ms) >= 10)
    w.wait(ev_c, lambda ms: len(ms) >= 10)
    mods_a = state(w, a)["modules"]
    assert len(mods_a) == 1  # one decoder on A serves both apps
    (dec_name, dec), = mods_a.items()
    assert sorted(dec["apps"]) == ["default/one", "default/two"]
    dec_pid = dec["pid"]

    agents[b].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{b}/state", lambda ms: ms[-1]["status"] == "offline")
    n_c = len(w.get(ev_c))
    w.wait(ev_c, lambda ms: len(ms) >= n_c + 20)  # C keeps getting frames while B is down
    dropped = lambda ms: ms[-1]["modules"].get(dec_name, {}).get("dropped", {}).get(f"link:{b}", 0) > 0  # noqa: E731
    w.wait(f"edgeva/v1/{a}/metrics", dropped, timeout=10)

    n_b = len(w.get(ev_b))
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)  # same state dir: restores "one"
    w.wait(ev_b, lambda ms: len(ms) >= n_b + 20, timeout=20)  # the link came back by itself
    ids = ids_of(w.get(ev_b)[n_b:])
    assert ids == sorted(ids)
    assert agents[a].proc.poll() is None
    st = state(w, a)["modules"][dec_name]
    assert st["pid"] == dec_pid and st["restarts"] == 0  # A's decoder never noticed
    dm = w.get(f"edgeva/v1/{a}/metrics")[-1]
    print("A's drops while B was down:", dm["modules"][dec_name]["dropped"], "link:", dm["links"][b]["dropped"])


def test_rollback_and_offline_device(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    bad = {"type": "decoder", "args": {"source": "rtsp://127.0.0.1:9/x", "fps": 5}}
    # The remote part fails: refused with B's error, nothing runs anywhere.
    dep = split_app("bad1", b, a)
    dep["modules"]["dec"] = {**bad, "device": b, "outputs": ["pub"]}
    r = Commander(w, a).send("deploy", dep)
    assert not r["ok"] and r["error"]["path"] == f"devices.{b}.modules.dec", r
    # The coordinator's own part fails after B's succeeded: B's part is removed again.
    dep = split_app("bad2", a, b)
    dep["modules"]["dec"] = {**bad, "device": a, "outputs": ["pub"]}
    r = Commander(w, a).send("deploy", dep)
    assert not r["ok"] and r["error"]["path"] == "modules.dec", r
    for d in (a, b):
        w.wait(f"edgeva/v1/{d}/state", lambda ms: not ms[-1]["modules"] and not ms[-1]["apps"].get("default"))
    # A device that is offline, or that nobody knows: refused whole, before anything starts.
    r = Commander(w, a).send("deploy", split_app("ghost", a, "ghost-1"))
    assert not r["ok"] and r["error"]["code"] == "unknown_device" and r["error"]["path"] == "modules.pub.device", r
    agents[b].stop()
    w.wait(f"edgeva/v1/{b}/state", lambda ms: ms[-1]["status"] == "offline")
    time.sleep(1.0)  # A hears of it through the broker too (a deploy racing that would go to B and time out)
    r = Commander(w, a).send("deploy", split_app("off", a, b))
    assert not r["ok"] and r["error"]["code"] == "unknown_device" and "offline" in r["error"]["message"], r
    assert not state(w, a)["modules"]


def test_listening_agent_restarts_and_the_peer_redials(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")  # a sorts first: it listens, b dials
    r = Commander(w, b).send("deploy", split_app("back", b, a, policy="drop_oldest"))
    assert r["ok"], r
    ev = f"edgeva/v1/{a}/default/events/back"
    w.wait(ev, lambda ms: len(ms) >= 10)
    old = state(w, a)["links"][b]
    agents[a].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{a}/state", lambda ms: ms[-1]["status"] == "offline")
    n = len(w.get(ev))
    agents[a] = AgentProc(agents[a].url, a, agents[a].state_dir, w, *BIND)  # listens on a new port
    w.wait(ev, lambda ms: len(ms) >= n + 20, timeout=20)
    assert state(w, a)["links"][b] != old
    assert agents[b].proc.poll() is None
