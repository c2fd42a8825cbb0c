"""The agent end to end: a real broker, a real agent process, real module processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from edgeva.agent.dataplane.ring import producer_pid
from edgeva.agent.dataplane.segment import list_segments
from tests.agent_harness import AgentProc, Commander, Watcher

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}


def app(name: str, **extra_pub) -> dict:
    return {"app": name, "modules": {"dec": {**DEC, "outputs": ["pub"]}, "pub": {"type": "publish", "args": extra_pub}}}


def frame_ids(events: list) -> list[int]:
    return [e["frame_id"] for e in events]


def contiguous(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids)))


@pytest.fixture
def env(mosquitto, tmp_path):
    device = f"dev-{uuid.uuid4().hex[:6]}"
    w = Watcher(mosquitto.url)
    agent = AgentProc(mosquitto.url, device, tmp_path / "agent", w)
    yield w, agent, Commander(w, device), device
    agent.stop()
    w.close()


def state(w: Watcher, device: str) -> dict:
    return w.get(f"edgeva/v1/{device}/state")[-1]


def test_deploy_with_mosquitto_pub_and_share_a_decoder(env, mosquitto, tmp_path):
    w, agent, cmd, device = env
    ev1, ev2 = (f"edgeva/v1/{device}/default/events/{a}" for a in ("one", "two"))
    # A client edgeva did not write deploys the first app.
    dep = tmp_path / "one.json"
    dep.write_text(json.dumps({"request_id": "first", **app("one")}))
    t0 = time.monotonic()
    subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t",
                    f"edgeva/v1/{device}/default/cmd/deploy", "-f", str(dep)], check=True)
    reply = w.wait(f"edgeva/v1/{device}/default/reply/first")[0]
    assert reply["ok"], reply
    w.wait(ev1)
    first_event_s = time.monotonic() - t0
    dec_pid = reply["result"]["modules"]["dec"]["pid"]
    w.wait(ev1, lambda ms: len(ms) >= 10)

    t0 = time.monotonic()
    r2 = cmd.send("deploy", app("two", fields=[]))  # same decoder, its own publish
    attach_s = time.monotonic() - t0
    assert r2["ok"], r2
    assert r2["result"]["modules"]["dec"]["pid"] == dec_pid  # shared, not restarted
    assert r2["result"]["modules"]["dec"]["shared_with"] == ["one"]
    assert len(r2["result"]["started"]) == 1  # only the new publish
    w.wait(ev2, lambda ms: len(ms) >= 10)
    w.wait(ev1, lambda ms: len(ms) >= 40)
    ids1, ids2 = frame_ids(w.get(ev1)), frame_ids(w.get(ev2))
    assert ids1[0] == 0 and contiguous(ids1)  # app one lost no frame while two attached
    assert contiguous(ids2) and ids2[0] > 0
    print(f"deploy-to-first-event {first_event_s * 1e3:.0f} ms, attach second app {attach_s * 1e3:.0f} ms")

    # remove two: the shared decoder keeps running for one
    r = cmd.send("remove", {"app": "two"})
    assert r["ok"] and len(r["result"]["stopped_modules"]) == 1
    n = len(w.get(ev1))
    w.wait(ev1, lambda ms: len(ms) >= n + 10)
    assert contiguous(frame_ids(w.get(ev1)))
    s = cmd.send("status", {})["result"]
    assert list(s["apps"]) == ["one"] and s["apps"]["one"]["modules"]["dec"]["pid"] == dec_pid
    # remove one: nobody uses the decoder any more, it stops
    assert cmd.send("remove", {"app": "one"})["ok"]
    w.wait(f"edgeva/v1/{device}/state", lambda ms: ms[-1]["modules"] == {} and ms[-1]["apps"] == {})


BAD = [
    ("unknown type", {"app": "x", "modules": {"a": {"type": "nope"}}}, "unknown_type", "modules.a.type"),
    ("bad args", {"app": "x", "modules": {"a": {**DEC, "args": {"source": "synthetic", "fps": -1}}}},
     "bad_args", "modules.a.args.fps"),
    ("unknown arg", {"app": "x", "modules": {"a": {**DEC, "args": {"source": "synthetic", "colour": 1}}}},
     "bad_args", "modules.a.args.colour"),
    ("cycle", {"app": "x", "modules": {"a": {**DEC, "outputs": ["b"]}, "b": {"type": "publish", "outputs": ["a"]}}},
     "cycle", "modules.b.outputs[0]"),
    ("unknown output", {"app": "x", "modules": {"a": {**DEC, "outputs": ["zz"]}}}, "unknown_output", "modules.a.outputs[0]"),
    ("unknown device", {"app": "x", "modules": {"a": {**DEC, "device": "mars"}}}, "unknown_device", "modules.a.device"),
]


def test_bad_commands_get_errors_and_change_nothing(env):
    w, agent, cmd, device = env
    ev = f"edgeva/v1/{device}/default/events/keep"
    r = cmd.send("deploy", app("keep"))
    assert r["ok"]
    pids = {k: v["pid"] for k, v in r["result"]["modules"].items()}
    for label, payload, code, path in BAD:
        reply = cmd.send("deploy", payload)
        assert not reply["ok"], label
        assert (reply["error"]["code"], reply["error"]["path"]) == (code, path), (label, reply)
    # duplicate names: only visible in the raw JSON
    dup = '{"request_id": "@RID@", "app": "x", "modules": {"a": {"type": "publish"}, "a": {"type": "publish"}}}'
    reply = cmd.send("deploy", dup)
    assert reply["error"]["code"] == "duplicate_name" and reply["error"]["path"] == "modules.a"
    reply = cmd.send("deploy", '{"request_id": "@RID@", "app": "x", "modules": []}')
    assert reply["error"]["code"] == "bad_request" and reply["error"]["path"] == "modules"
    w.client.publish(f"edgeva/v1/{device}/default/cmd/deploy", b'{"app": ', qos=1)  # no id: no reply
    # another tenant may neither see nor touch this app
    for verb, body in (("remove", {"app": "keep"}), ("update", {"app": "keep", "module": "pub", "args": {}}),
                       ("deploy", app("keep"))):
        reply = cmd.send(verb, body, tenant="intruder")
        assert reply["error"]["code"] == "forbidden", (verb, reply)
    assert cmd.send("status", {}, tenant="intruder")["result"]["apps"] == {}
    # a module failing in setup rolls its app back and says why
    failing = {"app": "bad", "modules": {"dec": {"type": "decoder", "args": {"source": "rtsp://127.0.0.1:9/none"},
                                                 "outputs": ["pub"]}, "pub": {"type": "publish"}}}
    reply = cmd.send("deploy", failing)
    assert reply["error"]["code"] == "setup_failed" and reply["error"]["path"] == "modules.dec", reply
    assert "cannot open" in reply["error"]["message"]
    status = cmd.send("status", {})["result"]
    assert list(status["apps"]) == ["keep"]
    assert {k: v["pid"] for k, v in status["apps"]["keep"]["modules"].items()} == pids  # untouched
    assert set(state(w, device)["modules"]) == {v["instance"] for v in status["apps"]["keep"]["modules"].values()}
    n = len(w.get(ev))
    w.wait(ev, lambda ms: len(ms) >= n + 5)
    assert contiguous(frame_ids(w.get(ev)))


def test_listing1_deploys_the_same_graph(env):
    w, agent, cmd, device = env
    native = cmd.send("deploy", app("native"))
    listing1 = {
        "app": "paper",
        "Decoder_1": {"decoder_args": DEC["args"], "runtime_args": {"outputs": ["Publish_1"]}},
        "Publish_1": {"publish_args": {}, "runtime_args": {}},
    }
    paper = cmd.send("deploy", listing1)
    assert paper["ok"], paper
    inst = lambda r: sorted(m["instance"] for m in r["result"]["modules"].values())  # noqa: E731
    assert inst(paper) == inst(native)  # identical identities: the very same running modules
    assert paper["result"]["started"] == []


def test_update_in_place_and_by_restart(env):
    w, agent, cmd, device = env
    ev = f"edgeva/v1/{device}/default/events/upd"
    r = cmd.send("deploy", app("upd"))
    w.wait(ev, lambda ms: len(ms) >= 3)
    r = cmd.send("update", {"app": "upd", "module": "pub", "args": {"fields": ["width"]}})
    assert r["ok"] and r["result"]["applied_live"], r
    w.wait(ev, lambda ms: "height" not in ms[-1] and ms[-1].get("width") == 160)
    pid = cmd.send("status", {"app": "upd"})["result"]["apps"]["upd"]["modules"]["dec"]["pid"]
    r = cmd.send("update", {"app": "upd", "module": "dec", "args": {"width": 96}})
    assert r["ok"] and not r["result"]["applied_live"], r  # the decoder restarts with it
    w.wait(ev, lambda ms: ms[-1].get("width") == 96)  # the publish module re-attached by itself
    assert cmd.send("status", {"app": "upd"})["result"]["apps"]["upd"]["modules"]["dec"]["pid"] != pid
    bad = cmd.send("update", {"app": "upd", "module": "dec", "args": {"fps": "fast"}})
    assert bad["error"]["code"] == "bad_args" and bad["error"]["path"] == "args.fps"


def test_metrics_per_module_and_per_app(env):
    w, agent, cmd, device = env
    cmd.send("deploy", app("m"))
    topic = f"edgeva/v1/{device}/default/metrics"

    def counted(ms: list) -> bool:  # modules report on their own clocks: wait for all of them
        if not ms or ms[-1]["apps"].get("m", {}).get("frames", 0) < 20:
            return False
        by_type = {v["type"]: v for v in ms[-1]["modules"].values()}
        return by_type.get("decoder", {}).get("frames_out", 0) >= 20 and by_type.get("publish", {}).get("frames_in", 0) >= 19

    msgs = w.wait(topic, counted)
    m = msgs[-1]
    a = m["apps"]["m"]
    assert a["latency_ms"]["p50"] is not None and a["latency_ms"]["p50"] < 1000
    assert a["dropped"] == 0 and a["events"] >= 20
    mods = m["modules"]
    dec = next(v for v in mods.values() if v["type"] == "decoder")
    pub = next(v for v in mods.values() if v["type"] == "publish")
    assert dec["frames_out"] >= 20 and pub["frames_in"] >= 19
    # pacing is not processing: the wait for the next frame (1000/fps ms) is not counted
    period_ms = 1000 / DEC["args"]["fps"]
    assert dec["proc_ms"]["p50"] is not None and dec["proc_ms"]["p50"] < 0.8 * period_ms
    assert len(dec["occupancy"]) == 1 and list(dec["dropped"].values()) == [0]
    r = cmd.send("metrics", {"app": "m"})
    assert r["ok"] and r["result"]["apps"]["m"]["frames"] >= 20
    dm = w.wait(f"edgeva/v1/{device}/metrics")[-1]
    assert set(dm["modules"]) == set(mods)


def test_sigkill_publishes_offline_and_restart_restores_apps(env, mosquitto, tmp_path):
    w, agent, cmd, device = env
    r = cmd.send("deploy", app("survivor"))
    assert r["ok"]
    pids = [m["pid"] for m in r["result"]["modules"].values()]
    rings = list_segments(device)  # the agent's rings: /dev/shm/edgeva.<device>.*
    assert rings and {producer_pid(n) for n in rings} <= set(pids), (rings, pids)
    assert _mapping(device) - {agent.proc.pid} <= set(pids)
    agent.kill()
    w.wait(f"edgeva/v1/{device}/state", lambda ms: ms[-1]["status"] == "offline")
    # module processes die with their agent: no orphan keeps the camera or the rings
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in pids)
    deadline = time.monotonic() + 10
    while _mapping(device) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _mapping(device) == set()  # no live process has any of the rings mapped
    left = list_segments(device)  # SIGKILL: nobody unlinked them; none has a live producer
    assert not any(_running(producer_pid(n) or 0) for n in left), left
    # One more leftover that no module of the restored app will reuse: only a sweep removes it.
    stray = f"edgeva.{device}.stray"
    subprocess.run([sys.executable, "-c", "import os; from agent.dataplane.ring import RingProducer; "
                    f"RingProducer.create({stray!r}, 4096); os._exit(0)"], check=True, timeout=60)
    assert stray in list_segments(device) and not _running(producer_pid(stray) or 0)
    again = AgentProc(mosquitto.url, device, agent.state_dir, w)
    try:
        ev = f"edgeva/v1/{device}/default/events/survivor"
        n = len(w.get(ev))
        w.wait(ev, lambda ms: len(ms) >= n + 5)  # desired state brought the app back
        assert list(cmd.send("status", {})["result"]["apps"]) == ["survivor"]
        # The restart swept what the kill left and made fresh rings, owned by the new modules:
        # no stale segment, none produced by a process of the killed agent.
        new_pids = {m["pid"] for m in cmd.send("status", {})["result"]["apps"]["survivor"]["modules"].values()}
        now = list_segments(device)
        if stray in now:  # say enough to tell a missed sweep from a reused pid
            pid = producer_pid(stray) or 0
            swept = [ln for ln in again.log.read_text().splitlines() if "swept" in ln]
            raise AssertionError(f"{stray} survived the restart: its producer pid {pid} running="
                                 f"{_running(pid)}; agent log: {swept}")
        assert now and {producer_pid(n) for n in now} <= new_pids, (now, new_pids)
        assert not new_pids & set(pids)
        assert _mapping(device) <= new_pids | {again.proc.pid}
    finally:
        again.stop()


def _mapping(device: str) -> set[int]:
    """Pids of live processes that have one of ``device``'s ring segments mapped."""
    head = f" /dev/shm/edgeva.{device}."
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps") as f:
                if head in f.read():
                    found.add(int(d))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_embedded_amqtt_broker(amqtt_broker, tmp_path):
    w = Watcher(amqtt_broker.url)
    device = "amqtt-dev"
    agent = AgentProc(amqtt_broker.url, device, tmp_path / "a", w)
    try:
        r = Commander(w, device).send("deploy", app("emb"))
        assert r["ok"], r
        ids = frame_ids(w.wait(f"edgeva/v1/{device}/default/events/emb", lambda ms: len(ms) >= 10))
        assert contiguous(ids)
    finally:
        agent.stop()
        w.close()


def test_rtsp_camera_that_drops_comes_back_without_a_restart(env, tmp_path):
    """A live source that goes away: the decoder process reconnects by itself (NO_FRAME keeps
    it responsive meanwhile), frame ids keep counting, nothing restarts."""
    from tests.rtsp_peer import RtspPeer

    w, agent, cmd, device = env
    ev = f"edgeva/v1/{device}/default/events/cam"
    with RtspPeer(tmp_path) as peer:
        dep = {"app": "cam", "modules": {
            "dec": {"type": "decoder", "outputs": ["pub"],
                    "args": {"source": peer.url, "fps": 10, "reconnect_s": 0.2, "reconnect_max_s": 0.5}},
            "pub": {"type": "publish", "args": {"fields": ["reconnects"]}}}}
        r = cmd.send("deploy", dep)
        assert r["ok"], r
        pid = r["result"]["modules"]["dec"]["pid"]
        w.wait(ev, lambda ms: len(ms) >= 5)
        peer.stop()
        time.sleep(1.0)
        upd = cmd.send("update", {"app": "cam", "module": "pub", "args": {"fields": ["reconnects", "width"]}})
        assert upd["ok"] and upd["result"]["applied_live"]  # control still served during the outage
        peer.start()
        w.wait(ev, lambda ms: ms[-1].get("reconnects") == 1 and "width" in ms[-1], timeout=30)
        ids = frame_ids(w.get(ev))
        assert ids == sorted(set(ids))  # ids keep counting up across the outage
        status = cmd.send("status", {"app": "cam"})["result"]["apps"]["cam"]["modules"]["dec"]
        assert status["pid"] == pid and status["status"] == "running"
