"""Apps spanning devices: agents as separate processes on one machine, linked by nng.

Every deploy here goes to a device's command topic from a plain paho client (as Node-RED or
mosquitto_pub would), not through the CLI: the receiving agent coordinates the parts.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.agent_harness import AgentProc, Commander, Watcher
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}
BIND = ("--data-bind", "tcp://127.0.0.1:0", "--fleet-token", "test-fleet")


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

    def start(letter: str, *extra: str) -> str:
        device = f"{letter}-{uid}"
        agents[device] = AgentProc(mosquitto.url, device, tmp_path / device, w, *BIND, *extra)
        return device

    start.uid = uid  # type: ignore[attr-defined]
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
    events = w.wait(ev, lambda ms: len(ms) >= 60, timeout=60)
    ids = ids_of(events)
    assert ids == list(range(len(ids)))  # from frame 0, none lost, in order
    assert all(e["latency_ms"] < 5000 for e in events)  # nothing stuck in a queue (fps 20: 50 ms apart)
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
    w.wait(f"edgeva/v1/{a}/metrics", dropped, timeout=60)

    n_b = len(w.get(ev_b))
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)  # same state dir: restores "one"
    w.wait(ev_b, lambda ms: len(ms) >= n_b + 20, timeout=60)  # the link came back by itself
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
    hears_offline(w, a, b)  # A's own view (a deploy racing that would go to B and time out)
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
    w.wait(ev, lambda ms: len(ms) >= n + 20, timeout=60)
    assert state(w, a)["links"][b] != old
    assert agents[b].proc.poll() is None


def hears_offline(w: Watcher, a: str, b: str, timeout: float = 60.0) -> None:
    """Wait until agent ``a``'s own view of the fleet has ``b`` offline (the watcher seeing the
    retained state is not enough: A hears it through its own subscription). The probe: a deploy
    with a module on ``b`` and one on a device nobody announced; A refuses it at ``b``'s module
    once it knows ``b`` is offline, at the other one's before. Either way nothing is deployed."""
    probe = {"app": "probe", "modules": {
        "dec": {**DEC, "device": b, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}, "device": f"nobody-{uuid.uuid4().hex[:6]}"},
    }}
    deadline = time.monotonic() + timeout
    while True:
        r = Commander(w, a).send("deploy", probe)
        assert not r["ok"] and r["error"]["code"] == "unknown_device", r
        if r["error"]["path"] == "modules.dec.device":
            assert "offline" in r["error"]["message"], r
            return
        assert r["error"]["path"] == "modules.pub.device", r
        assert time.monotonic() < deadline, f"{a} never heard that {b} is offline"
        time.sleep(0.05)


def frame_interval(events: list) -> float:
    """Mean seconds between consecutive frames, from the source's own timestamps."""
    assert len(events) >= 2
    return (events[-1]["ts"] - events[0]["ts"]) / (events[-1]["frame_id"] - events[0]["frame_id"])


def desired(agent: AgentProc) -> dict:
    """Every tenant's saved apps (one file per tenant: agent/store.py)."""
    return {app: rec for f in sorted((agent.state_dir / "tenants").glob("*.json"))
            for app, rec in json.loads(f.read_text())["apps"].items()}


def wait_log(agent: AgentProc, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {agent.device}'s log:\n{agent.log.read_text()[-2000:]}"
        time.sleep(0.1)


# -- TLS between agents ----------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def device_pki(d: Path, devices: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """A fleet CA and another CA; one certificate per device (device id in subjectAltName),
    signed by the CA named in ``devices``. Every agent trusts the fleet CA. Returns each
    device's --link-tls-* arguments."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("fleet", "other"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN={ca} CA", cwd=d)
    out = {}
    for dev, ca in devices.items():
        _openssl("req", *ec, "-keyout", f"{dev}.key", "-out", f"{dev}.csr", "-subj", f"/CN={dev}", cwd=d)
        (d / f"{dev}.ext").write_text(f"subjectAltName=DNS:{dev}\n")
        _openssl("x509", "-req", "-in", f"{dev}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{dev}.crt", "-days", "2", "-extfile", f"{dev}.ext", cwd=d)
        out[dev] = ("--link-tls-ca", str(d / "fleet.crt"), "--link-tls-cert", str(d / f"{dev}.crt"),
                    "--link-tls-key", str(d / f"{dev}.key"), "--link-tls-check-name")
    return out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_links_and_an_agent_from_another_ca_cannot_join(fleet, tmp_path):
    w, start, agents = fleet
    a, b, c = (f"{x}-{start.uid}" for x in "abc")
    pki = tmp_path / "pki"
    pki.mkdir()
    tls = device_pki(pki, {a: "fleet", b: "fleet", c: "other"})  # c trusts the fleet CA; its cert is not from it
    quick = ("--part-timeout", "8", "--link-timeout", "3")
    for dev in (a, b, c):
        start(dev.split("-")[0], *tls[dev], *quick)
    r = Commander(w, b).send("deploy", split_app("sec", a, b, policy="block"))
    assert r["ok"], r
    ev = f"edgeva/v1/{b}/default/events/sec"
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= 40))
    assert ids == list(range(len(ids)))  # over mutual TLS, from frame 0, none lost, in order
    assert state(w, a)["links"][b].startswith("tls+tcp://127.0.0.1:")
    assert state(w, b)["data_addr"].startswith("tls+tcp://")
    mods = {d: sorted(state(w, d)["modules"]) for d in (a, b)}

    # C's certificate is from another CA: a deploy placing a module on it fails, in bounded time.
    dep = split_app("intruder", c, b)
    dep["modules"]["dec"]["args"] = {**DEC["args"], "fps": 7}
    t0 = time.monotonic()
    r = Commander(w, b).send("deploy", dep, timeout=30)
    took = time.monotonic() - t0
    assert not r["ok"], r
    assert r["error"]["code"] == "setup_failed" and r["error"]["path"].startswith(f"devices.{c}.links."), r
    assert "not up" in r["error"]["message"], r
    print(f"intruder refused in {took:.1f} s:", r["error"])
    assert took < 12, took  # the link timeout (3 s) plus the deploy, well under the part timeout
    # Nothing of it runs anywhere, and the first app flows on untouched.
    for d in (a, b, c):
        w.wait(f"edgeva/v1/{d}/state", lambda ms: "intruder" not in (ms[-1]["apps"].get("default") or {}))
        assert "intruder" not in desired(agents[d])
    assert {d: sorted(state(w, d)["modules"]) for d in (a, b)} == mods
    assert not state(w, c)["modules"]
    n = len(w.get(ev))
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 10))
    assert ids == list(range(len(ids)))


# -- update of an app spanning devices ---------------------------------------------------------


def test_update_reaches_every_part_and_restarted_parts_still_flow(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    # A coordinates and runs the decoder; B's part runs publish.
    r = Commander(w, a).send("deploy", split_app("upd", a, b, policy="block"))
    assert r["ok"], r
    ev = f"edgeva/v1/{b}/default/events/upd"
    before = w.wait(ev, lambda ms: len(ms) >= 10)[-8:]
    r = Commander(w, a).send("update", {"app": "upd", "module": "dec", "args": {"fps": 5}})
    assert r["ok"], r
    assert r["result"]["parts"][b]["adopted"], r
    # Every part holds the new graph (B does not run the decoder: it only recorded it).
    for d in (a, b):
        assert desired(agents[d])["upd"]["deployment"]["modules"]["dec"]["args"]["fps"] == 5
    n = len(w.get(ev))
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 10, timeout=60))
    assert ids == list(range(len(ids)))  # renaming the stream lost nothing
    # ...and the frames that reach B now come at the new rate (5 fps, 0.2 s apart), against
    # the rate measured before the update in this same run (20 fps)
    after = w.get(ev)[n + 2 :]  # past any frame made before the update took effect
    old, new = frame_interval(before), frame_interval(after)
    assert new >= 0.8 * 0.2 and new > 2 * old, (old, new)
    # The part that does not run the decoder restarts: it computes the stream A now sends on.
    agents[b].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{b}/state", lambda ms: ms[-1]["status"] == "offline")
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)
    n = len(w.get(ev))
    w.wait(ev, lambda ms: len(ms) >= n + 15, timeout=60)
    # And the one that runs it: it restores the new graph, B listens on its names.
    agents[a].stop()
    w.wait(f"edgeva/v1/{a}/state", lambda ms: ms[-1]["status"] == "offline")
    agents[a] = AgentProc(agents[a].url, a, agents[a].state_dir, w, *BIND)
    n = len(w.get(ev))
    w.wait(ev, lambda ms: len(ms) >= n + 15, timeout=60)


# -- a part removed while its device was down ---------------------------------------------------


def test_part_removed_while_its_device_was_down_is_dropped_at_restart(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    r = Commander(w, a).send("deploy", split_app("gone", b, a))  # A coordinates, B's part runs the decoder
    assert r["ok"], r
    r = Commander(w, a).send("deploy", split_app("kept", b, a, policy="drop_oldest"))  # stays
    assert r["ok"], r
    w.wait(f"edgeva/v1/{a}/default/events/gone", lambda ms: len(ms) >= 5)
    agents[b].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{b}/state", lambda ms: ms[-1]["status"] == "offline")
    hears_offline(w, a, b)
    t0 = time.monotonic()
    r = Commander(w, a).send("remove", {"app": "gone"})
    assert r["ok"] and r["result"]["parts"][b]["error"]["code"] == "unknown_device", r
    assert time.monotonic() - t0 < 14  # no wait on a device known to be down (that wait: 15 s)
    assert set(desired(agents[b])) == {"gone", "kept"}  # B could not be told
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)
    wait_log(agents[b], "dropped, its coordinator no longer has it")
    ev = f"edgeva/v1/{a}/default/events/kept"
    n = len(w.get(ev))
    w.wait(ev, lambda ms: len(ms) >= n + 10, timeout=60)  # the app A still has came back
    assert set(desired(agents[b])) == {"kept"}
    # B's retained state catches up on its own schedule: wait for it to list an app at all
    apps_b = lambda ms: (ms[-1].get("apps") or {}).get("default") or {}  # noqa: E731
    assert set(apps_b(w.wait(f"edgeva/v1/{b}/state", apps_b, timeout=60))) == {"kept"}


def test_update_sent_to_a_part_goes_through_its_coordinator(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    r = Commander(w, a).send("deploy", split_app("via", a, b, policy="block"))  # A coordinates, runs dec
    assert r["ok"], r
    ev = f"edgeva/v1/{b}/default/events/via"
    w.wait(ev, lambda ms: len(ms) >= 10)
    # Sent to B, which only runs publish: B forwards it to A, which applies it and tells every part.
    r = Commander(w, b).send("update", {"app": "via", "module": "dec", "args": {"fps": 25}}, timeout=60)
    assert r["ok"], r
    assert r["result"]["coordinator"] == a and r["result"]["module"] == "dec", r
    assert r["result"]["parts"][b]["adopted"], r
    for d in (a, b):
        assert desired(agents[d])["via"]["deployment"]["modules"]["dec"]["args"]["fps"] == 25
    n = len(w.get(ev))
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 15))
    assert ids == list(range(len(ids)))  # one stream, renamed in two phases: nothing lost, in order


def deploy_split_and_wait(w, a: str, b: str, app: str) -> str:
    """Deploy ``app`` split over a and b (live source) from a; wait until b emits its events.
    Returns b's events topic for it."""
    r = Commander(w, a).send("deploy", split_app(app, a, b, policy="drop_oldest"))
    assert r["ok"], r
    ev = f"edgeva/v1/{b}/default/events/{app}"
    w.wait(ev, lambda ms: len(ms) >= 10)
    return ev


def test_part_down_during_an_update_adopts_the_new_graph_at_restart(fleet):
    w, start, agents = fleet
    a, b = start("a"), start("b")
    ev = deploy_split_and_wait(w, a, b, "late")
    agents[b].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{b}/state", lambda ms: ms[-1]["status"] == "offline")
    hears_offline(w, a, b)
    t0 = time.monotonic()
    r = Commander(w, a).send("update", {"app": "late", "module": "dec", "args": {"fps": 25}})
    assert r["ok"] and r["result"]["parts"][b]["error"]["code"] == "unknown_device", r
    assert time.monotonic() - t0 < 14  # no wait on a device known to be down (that wait: 15 s)
    assert desired(agents[b])["late"]["deployment"]["modules"]["dec"]["args"]["fps"] == 20  # B missed it
    n = len(w.get(ev))
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)  # restores, asks A first
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 15, timeout=60)[n:])  # A's new stream name reaches B
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids  # in order from some frame on
    assert desired(agents[b])["late"]["deployment"]["modules"]["dec"]["args"]["fps"] == 25
    # B took the new graph from A: by asking at its restore ("adopting it"), or, where that ask
    # timed out on a loaded machine ("did not say"), from A's convergence of parts that missed
    # an update. Either way through one of the two, and said so.
    deadline = time.monotonic() + 20
    while not ("adopting it" in agents[b].log.read_text()
               or f"part on {b} has the current graph" in agents[a].log.read_text()):
        assert time.monotonic() < deadline, f"neither path logged:\n{agents[b].log.read_text()[-2000:]}"
        time.sleep(0.1)


# -- parts that miss an update or their coordinator's word, without a restart -------------------
def test_part_unreachable_during_an_update_converges_when_back_without_a_restart(fleet, mosquitto, tmp_path):
    """B stays ``online`` (its MQTT connection is up; only what the broker sends it is lost,
    as on a half-open uplink) while A coordinates an update: B misses the new graph. Once the
    path heals, A sends it again by itself: B adopts it without an agent restart, and frames
    on the new stream names reach it."""
    w, start, agents = fleet
    a = start("a")
    proxy = TcpProxy(mosquitto.host, mosquitto.port)
    b = f"b-{start.uid}"
    try:
        agents[b] = AgentProc(proxy.url, b, tmp_path / b, w, *BIND)
        r = Commander(w, a).send("deploy", split_app("cut", a, b, policy="drop_oldest"))
        assert r["ok"], r
        ev = f"edgeva/v1/{b}/default/events/cut"
        w.wait(ev, lambda ms: len(ms) >= 10)
        pid = agents[b].proc.pid
        proxy.cut()
        r = Commander(w, a).send("update", {"app": "cut", "module": "dec", "args": {"fps": 25}}, timeout=90)
        assert r["ok"] and r["result"]["parts"][b]["error"]["code"] == "timeout", r
        assert state(w, b)["status"] == "online", "B must have looked online all along (cut, not down)"
        assert proxy.dropped_bytes > 0
        assert desired(agents[b])["cut"]["deployment"]["modules"]["dec"]["args"]["fps"] == 20  # B missed it
        proxy.heal()
        deadline = time.monotonic() + 60
        while desired(agents[b])["cut"]["deployment"]["modules"]["dec"]["args"]["fps"] != 25:
            assert time.monotonic() < deadline, f"B never got the new graph:\n{agents[a].log.read_text()[-2000:]}"
            time.sleep(0.2)
        n = len(w.get(ev))
        ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 15, timeout=60)[n:])  # the new names reach B
        assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
        assert agents[b].proc.pid == pid and agents[b].proc.poll() is None, "B was restarted"
        wait_log(agents[a], "has the current graph")
    finally:
        proxy.close()


def test_part_restored_while_its_coordinator_is_away_says_so_until_it_answers(fleet):
    """B restarts while A, the app's coordinator, is down: B restores its part as saved and its
    retained state says it awaits A; when A is back, B asks again, the mark goes, frames flow."""
    w, start, agents = fleet
    a, b = start("a"), start("b")
    ev = deploy_split_and_wait(w, a, b, "away")
    agents[a].kill(signal.SIGKILL)
    w.wait(f"edgeva/v1/{a}/state", lambda ms: ms[-1]["status"] == "offline")
    agents[b].stop()
    agents[b] = AgentProc(agents[b].url, b, agents[b].state_dir, w, *BIND)

    def app_state(ms: list) -> dict:
        return ms[-1].get("apps", {}).get("default", {}).get("away", {})

    st = w.wait(f"edgeva/v1/{b}/state", lambda ms: app_state(ms).get("awaiting_coordinator") == a, timeout=30)
    assert app_state(st)["status"] == "running", st[-1]
    agents[a] = AgentProc(agents[a].url, a, agents[a].state_dir, w, *BIND)
    w.wait(f"edgeva/v1/{b}/state", lambda ms: app_state(ms).get("status") == "running"
           and app_state(ms).get("awaiting_coordinator") is None, timeout=60)
    n = len(w.get(ev))
    ids = ids_of(w.wait(ev, lambda ms: len(ms) >= n + 10, timeout=60)[n:])
    assert ids == sorted(ids), ids
