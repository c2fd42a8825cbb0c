"""Hostile tenants on the control plane (issue 15): each test runs a real agent process as its
own broker user behind mosquitto with the ACL edgeva ships (docs/mosquitto/acl), and tenants
``acme`` and ``globex`` that can only touch their own topics."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.agent_harness import AgentProc, Commander, Watcher, module_pid, rates_around_a_freeze
from tests.brokers import Broker

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 10, "width": 64, "height": 48}}


def app(name: str, dec: dict | None = None) -> dict:
    return {"app": name, "modules": {"dec": {**(dec or DEC), "outputs": ["pub"]},
                                     "pub": {"type": "publish", "args": {}}}}


@dataclass
class Fleet:
    device: str
    observer: Watcher
    agent: AgentProc
    tenants: dict[str, Watcher]
    broker: Broker

    def cmd(self, tenant: str) -> Commander:
        return Commander(self.tenants[tenant], self.device, tenant)


def start_fleet(broker: Broker, root: Path, *agent_args: str) -> Fleet:
    device = f"sec-{uuid.uuid4().hex[:6]}"
    obs = Watcher(broker.url, username="observer", password=broker.users["observer"])
    agent = AgentProc(broker.url, device, root / "agent", obs, "--username", "agent",
                      "--password", broker.users["agent"], *agent_args)
    tenants = {t: Watcher(broker.url, mqtt.MQTTv5, username=t, password=broker.users[t],
                          topics=(f"edgeva/v1/+/{t}/#",)) for t in ("acme", "globex")}
    return Fleet(device, obs, agent, tenants, broker)


def stop_fleet(f: Fleet) -> None:
    f.agent.stop()
    for w in (f.observer, *f.tenants.values()):
        w.close()


@pytest.fixture
def fleet(mosquitto_auth: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = start_fleet(mosquitto_auth, tmp_path)
    yield f
    stop_fleet(f)


def everything_received(w: Watcher) -> str:
    with w.cond:
        return json.dumps({t: ms for t, ms in w.msgs.items()}, default=str)


# -- hole 1 -------------------------------------------------------------------------------------
def test_deeply_nested_payload_is_refused_and_commands_go_on(fleet: Fleet) -> None:
    """Hole 1: a JSON nested 1,100 deep killed the command thread (RecursionError outside the
    handler's try): it gets a bad_json reply, and every tenant's next command is answered."""
    deep = '{"request_id":"@RID@","app":"n1","modules":{"m":{"type":"decoder","args":{"a":' \
        + "[" * 1100 + "1" + "]" * 1100 + "}}}}"
    r = fleet.cmd("acme").send("deploy", deep, timeout=15)
    assert r["ok"] is False and r["error"]["code"] == "bad_json", r
    assert "deeper than" in r["error"]["message"]
    for verb in ("status", "update", "stop"):  # every verb reads the request id first
        r = fleet.cmd("acme").send(verb, '{"request_id":"@RID@","app":' + "[" * 5000 + "]" * 5000 + "}",
                                   timeout=15)
        assert r["ok"] is False and r["error"]["code"] == "bad_json", r
    r = fleet.cmd("acme").send("status", '{"request_id":"@RID@","pad":"' + "x" * (1 << 20) + '"}', timeout=15)
    assert r["ok"] is False and r["error"]["code"] == "bad_request" and "over the limit" in r["error"]["message"], r
    r = fleet.cmd("globex").send("status", {}, timeout=15)  # the thread still runs, for everyone
    assert r["ok"] is True and r["result"]["apps"] == {}
    r = fleet.cmd("acme").send("deploy", app("fine"), timeout=30)
    assert r["ok"] is True, r


# -- hole 2 -------------------------------------------------------------------------------------
def publish_v5(w: Watcher, topic: str, payload: dict, response_topic: str, corr: bytes = b"c1") -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = corr
    w.client.publish(topic, json.dumps(payload), qos=1, properties=props).wait_for_publish(5)


def test_response_topic_cannot_reach_another_tenant(fleet: Fleet) -> None:
    """Hole 2: globex named acme's events topic as its MQTT 5 response topic and the agent,
    with its own broker rights, published globex's text there. Now: refused, nothing is run,
    the refusal goes to globex's own reply topic; echoed input is quoted and bounded."""
    dev, globex, acme = fleet.device, fleet.tenants["globex"], fleet.tenants["acme"]
    victim = f"edgeva/v1/{dev}/acme/events/cameras"
    rid = "r-" + uuid.uuid4().hex[:8]
    evil = {"request_id": rid, "app": "y", "modules": {"m": {"type": "ALARM: intruder at door 3"}}}
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/deploy", evil, victim)
    r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid}", timeout=15)[0]
    assert r["ok"] is False and r["error"]["code"] == "bad_request" and r["error"]["path"] == "response_topic", r
    # A verb that is no verb: the topic is refused before the response topic is looked at, and
    # that refusal (which quotes the topic) must not go to acme's topic either.
    rid_v = "r-" + uuid.uuid4().hex[:8]
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/ALARM-intruder-at-door-3", {"request_id": rid_v}, victim)
    r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid_v}", timeout=15)[0]
    assert r["ok"] is False and r["error"]["path"] == "topic", r
    # The same through a valid deploy: it must not run either.
    rid2 = "r-" + uuid.uuid4().hex[:8]
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/deploy", {**app("g1"), "request_id": rid2},
               f"edgeva/v1/{dev}/globex/reply/+")
    r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid2}", timeout=15)[0]
    assert r["error"]["path"] == "response_topic", r
    # Only its reply topics on this device: not its own events topic (the agent would forge the
    # tenant's results there), not its reply topics of another device (that agent's replies).
    for elsewhere in (f"edgeva/v1/{dev}/globex/events/cameras", f"edgeva/v1/x{dev}/globex/reply/inbox-1"):
        rid3 = "r-" + uuid.uuid4().hex[:8]
        publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/status", {"request_id": rid3}, elsewhere)
        r = globex.wait(f"edgeva/v1/{dev}/globex/reply/{rid3}", timeout=15)[0]
        assert r["ok"] is False and r["error"]["path"] == "response_topic", (elsewhere, r)
    # Its own inbox works, with the correlation data echoed.
    inbox = f"edgeva/v1/{dev}/globex/reply/inbox-{uuid.uuid4().hex[:6]}"
    publish_v5(globex, f"edgeva/v1/{dev}/globex/cmd/status", {}, inbox)
    r = globex.wait(inbox, timeout=15)[0]
    assert r["ok"] is True and r["result"]["apps"] == {}, r  # g1 was not deployed
    # Echoed input is quoted and bounded.
    long_type = "ALARM " + "x" * 120  # under the type's length bound (128): looked up, unknown
    r = fleet.cmd("globex").send("deploy", {"app": "z", "modules": {"m": {"type": long_type}}})
    assert r["error"]["code"] == "unknown_type"
    assert len(r["error"]["message"]) <= 600 and "'ALARM xx" in r["error"]["message"], r
    assert long_type not in r["error"]["message"], r  # quoted, cut to 64 characters
    huge = "ALARM " + "x" * 5000  # over it: refused by the schema, still quoted and bounded
    r = fleet.cmd("globex").send("deploy", {"app": "z", "modules": {"m": {"type": huge}}})
    assert r["error"]["code"] == "bad_request" and len(r["error"]["message"]) <= 600, r
    assert "x" * 200 not in json.dumps(r), r
    time.sleep(1.0)
    assert acme.get(victim) == [], acme.get(victim)
    assert "ALARM" not in everything_received(acme)


# -- hole 7 -------------------------------------------------------------------------------------
BIND = ("--data-bind", "tcp://127.0.0.1:0", "--fleet-token", "fleet-secret-7")


def links(f: Fleet, device: str | None = None) -> dict:
    return f.observer.get(f"edgeva/v1/{device or f.device}/state")[-1].get("links", {})


def forged_part(device: str, ghost: str, token: str | None = None) -> dict:
    part = {"app": f"p-{ghost}", "part_of": {"coordinator": ghost, "hold": False, **({"token": token} if token else {})},
            "modules": {"dec": {**DEC, "outputs": ["pub"], "device": ghost},
                        "pub": {"type": "publish", "args": {}, "device": device}}}
    return part


def test_tenants_cannot_forge_parts_and_unused_links_are_released(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 7: any tenant could send a deploy with ``part_of``, skipping the fleet check: each
    made-up peer got a listener port, threads and a ring, never released. Now a part needs the
    fleet token; a real app spanning two agents works, and its links go when it is removed."""
    f = start_fleet(mosquitto_auth, tmp_path, *BIND)
    other = None
    try:
        for i, token in enumerate((None, "guessed")):
            ghost = f"zz-ghost-{i}"  # sorts after the device: this agent would listen for it
            r = f.cmd("acme").send("deploy", forged_part(f.device, ghost, token), timeout=20)
            assert r["ok"] is False and r["error"]["code"] == "forbidden", r
            assert r["error"]["path"].startswith("part_of")
        time.sleep(0.5)
        assert links(f) == {}, links(f)
        assert f.cmd("acme").send("status", {})["result"]["apps"] == {}
        # A real app across two agents of the fleet: the coordinator's parts carry the token.
        peer = f"{f.device}-b"  # sorts after: f's agent listens for it
        other = AgentProc(f.broker.url, peer, tmp_path / "b", f.observer, "--username", "agent",
                          "--password", f.broker.users["agent"], *BIND)
        spanning = {"app": "span", "modules": {"dec": {**DEC, "outputs": ["pub"]},
                                                "pub": {"type": "publish", "args": {}, "device": peer}}}
        r = f.cmd("acme").send("deploy", spanning, timeout=60)
        assert r["ok"] is True, r
        assert "token" not in json.dumps(r), r  # never echoed to the tenant
        f.observer.wait(f"edgeva/v1/{f.device}/state", lambda ms: peer in ms[-1].get("links", {}), timeout=10)
        f.tenants["acme"].wait(f"edgeva/v1/{peer}/acme/events/span", timeout=20)  # frames cross the link
        st = f.cmd("acme").send("status", {"app": "span"})
        assert "token" not in json.dumps(st), st
        assert "fleet-secret-7" not in everything_received(f.tenants["acme"])
        r = f.cmd("acme").send("remove", {"app": "span"}, timeout=30)
        assert r["ok"] is True, r
        f.observer.wait(f"edgeva/v1/{f.device}/state", lambda ms: ms[-1].get("links") == {}, timeout=10)
    finally:
        if other is not None:
            other.stop()
        stop_fleet(f)


# -- hole 3 -------------------------------------------------------------------------------------
def write_clip(path: Path) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(10):
        out.write(np.full((48, 64, 3), i * 20, np.uint8))
    out.release()
    return path


def test_paths_are_confined_to_media_and_tenant_output_dirs(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 3: annotate's ``output`` created or truncated a file anywhere the agent could write,
    and a decoder ``source`` read any file or URL FFmpeg can reach. Now reads stay in the media
    directories, writes in the tenant's output directory, URLs need an allowed scheme."""
    media, outroot = tmp_path / "media", tmp_path / "out"
    inside = write_clip(media / "clip.avi")
    secret = write_clip(tmp_path / "private" / "clip.avi")  # a real video, outside the media dir
    f = start_fleet(mosquitto_auth, tmp_path, "--media-dir", str(media), "--output-root", str(outroot))
    acme = f.cmd("acme")
    try:
        def refused(dep: dict, where: str, words: str) -> None:
            r = acme.send("deploy", dep, timeout=30)
            assert r["ok"] is False and r["error"]["code"] == "bad_args", r
            assert r["error"]["path"] == where and words in r["error"]["message"], r

        src = "modules.dec.args.source"
        refused(app("a1", {**DEC, "args": {"source": str(secret)}}), src, "outside the media directories")
        refused(app("a2", {**DEC, "args": {"source": str(media / ".." / "private" / "clip.avi")}}), src, "outside")
        refused(app("a3", {**DEC, "args": {"source": "/etc/hostname"}}), src, "outside")
        refused(app("a4", {**DEC, "args": {"source": f"concat:{inside}|{secret}"}}), src, "FFmpeg protocols")
        refused(app("a5", {**DEC, "args": {"source": "http://127.0.0.1:9/x.mp4"}}), src, "scheme 'http'")
        refused(app("a6", {**DEC, "args": {"source": "asset:../../../etc/hostname"}}), src, "bundled clip")
        evil = tmp_path / "elsewhere" / "evil.mp4"
        evil.parent.mkdir()
        for out in (str(evil), str(outroot / "globex" / "x.mp4"), str(outroot / "acme" / ".." / "globex" / "y.mp4")):
            dep = app("w1")
            dep["modules"]["dec"]["outputs"] = ["pub", "ann"]
            dep["modules"]["ann"] = {"type": "annotate", "args": {"output": out}}
            refused(dep, "modules.ann.args.output", "outside this tenant's output directory")
        r = acme.send("deploy", {"app": "m", "modules": {"det": {"type": "detector", "args": {"model": str(secret)}}}})
        assert r["error"]["code"] == "bad_args" and r["error"]["path"] == "modules.det.args.model", r
        import cv2
        import numpy as np

        png = tmp_path / "private" / "person.png"
        cv2.imwrite(str(png), np.zeros((64, 32, 3), np.uint8))
        gallery = [{"name": "ok", "image": "asset:demo_person.png"}, {"name": "x", "image": str(png)}]
        r = acme.send("deploy", {"app": "r", "modules": {"r": {"type": "reid", "args": {"gallery": gallery}}}})
        assert r["error"]["code"] == "bad_args" and r["error"]["path"] == "modules.r.args.gallery[1].image", r
        # What is allowed works: a file in the media dir, a video into the tenant's own dir.
        dep = app("ok", {**DEC, "args": {"source": str(inside), "fps": 10, "loop": True}})
        dep["modules"]["dec"]["outputs"] = ["pub", "ann"]
        mine = outroot / "acme" / "ok.mp4"
        dep["modules"]["ann"] = {"type": "annotate", "args": {"output": str(mine)}}
        r = acme.send("deploy", dep, timeout=30)
        assert r["ok"] is True, r
        f.tenants["acme"].wait(f"edgeva/v1/{f.device}/acme/events/ok", timeout=20)
        # An update cannot move a running module's source out either.
        r = acme.send("update", {"app": "ok", "module": "dec", "args": {"source": str(secret)}})
        assert r["error"]["code"] == "bad_args" and "outside" in r["error"]["message"], r
        assert acme.send("remove", {"app": "ok"}, timeout=30)["ok"]
        assert mine.stat().st_size > 0
        assert not evil.exists() and not (outroot / "globex").exists()
    finally:
        stop_fleet(f)


def test_a_tenant_reads_no_other_tenants_outputs_inside_the_media_dir(tmp_path: Path) -> None:
    """By default the media directory is the working directory and the output root ``./out``
    lies in it: globex must not decode (and so re-publish) acme's annotated video."""
    from edgeva.agent.paths import PathPolicy
    from edgeva.schemas.errors import EdgevaError

    policy = PathPolicy.make(media_dirs=[tmp_path], output_root=tmp_path / "out")
    theirs = write_clip(tmp_path / "out" / "acme" / "ok.avi")
    policy.check("acme", "source", str(theirs), "s")  # its own output: fine
    policy.check("globex", "source", str(write_clip(tmp_path / "clip.avi")), "s")  # media: fine
    for value in (str(theirs), str(tmp_path / "out" / "globex" / ".." / "acme" / "ok.avi")):
        with pytest.raises(EdgevaError, match="only its own outputs") as e:
            policy.check("globex", "source", value, "modules.dec.args.source")
        assert e.value.path == "modules.dec.args.source"


# -- hole 6 -------------------------------------------------------------------------------------
def test_modules_are_shared_within_a_tenant_only(fleet: Fleet) -> None:
    """Hole 6: identity ignored the tenant, so globex's app attached to acme's decoder (and could
    pace it with a ``block`` consumer, fill its consumer slots) and saw acme's app names in
    ``shared_with``, conflicts and metrics. Now sharing stays within a tenant."""
    acme, globex = fleet.cmd("acme"), fleet.cmd("globex")
    a1 = acme.send("deploy", app("a-one"), timeout=30)
    assert a1["ok"], a1
    g1 = globex.send("deploy", app("g-one"), timeout=30)  # the very same graph
    assert g1["ok"], g1
    assert g1["result"]["modules"]["dec"]["instance"] != a1["result"]["modules"]["dec"]["instance"]
    assert g1["result"]["modules"]["dec"]["shared_with"] == []
    a2 = acme.send("deploy", app("a-two"), timeout=30)  # within a tenant: shared as before
    assert a2["result"]["modules"]["dec"]["instance"] == a1["result"]["modules"]["dec"]["instance"]
    assert a2["result"]["modules"]["dec"]["shared_with"] == ["a-one"]
    # globex's module is its own: an update applies (no conflict naming acme's apps)
    r = globex.send("update", {"app": "g-one", "module": "dec", "args": {"fps": 5}}, timeout=30)
    assert r["ok"] is True, r
    r = acme.send("update", {"app": "a-one", "module": "dec", "args": {"fps": 5}}, timeout=30)
    assert r["error"]["code"] == "conflict" and "a-two" in r["error"]["message"], r
    fleet.tenants["globex"].wait(f"edgeva/v1/{fleet.device}/globex/metrics",
                                 lambda ms: any("g-one" in m.get("apps", {}) for m in ms), timeout=15)
    globex.send("status", {})
    globex.send("metrics", {})
    seen = everything_received(fleet.tenants["globex"])
    for name in ("a-one", "a-two", "acme", a1["result"]["modules"]["dec"]["instance"]):
        assert name not in seen, f"globex received {name!r}"


def test_a_stuck_consumer_costs_another_tenants_app_nothing(fleet: Fleet) -> None:
    """A tenant's module that stops reading (SIGSTOP: stuck, not dead) on a camera another
    tenant watches too: the other tenant's app keeps its frame rate and drops nothing; the
    stuck app's drops are its own."""

    acme, globex = fleet.cmd("acme"), fleet.cmd("globex")
    stuck = app("a-stuck")
    stuck["modules"]["pub"]["policy"] = "drop_oldest"  # a live view: it skips rather than pace its decoder
    assert acme.send("deploy", stuck, timeout=30)["ok"]
    assert globex.send("deploy", app("g-live"), timeout=30)["ok"]
    dev, gw = fleet.device, fleet.tenants["globex"]
    g_events = f"edgeva/v1/{dev}/globex/events/g-live"
    gw.wait(g_events, lambda ms: len(ms) >= 10, timeout=30)
    pid = module_pid(fleet.observer, dev, "publish", "acme/a-stuck")
    before, during = rates_around_a_freeze(gw, g_events, pid)
    assert during >= 0.8 * before and during > 5, f"globex's app went from {before:.1f} to {during:.1f} events/s"

    def metrics(tenant: str, name: str) -> dict:
        w = fleet.tenants[tenant]
        ms = w.wait(f"edgeva/v1/{dev}/{tenant}/metrics", lambda ms: name in ms[-1].get("apps", {}), timeout=15)
        return ms[-1]["apps"][name]

    deadline = time.monotonic() + 20
    while metrics("acme", "a-stuck")["dropped"] == 0:  # counted by the next metrics tick
        assert time.monotonic() < deadline, "the stuck consumer's drops were not counted as its app's"
        time.sleep(0.5)
    assert metrics("globex", "g-live")["dropped"] == 0


# -- hole 8 -------------------------------------------------------------------------------------
def test_one_tenants_slow_deploy_does_not_hold_up_another(fleet: Fleet) -> None:
    """Hole 8: one command thread ran every tenant's commands, and a deploy waits for each module
    to be ready: acme's deploy of a camera that does not answer held globex's commands until it
    failed. Now each tenant has its own worker: globex's deploy is answered first."""
    dev, acme_w = fleet.device, fleet.tenants["acme"]
    slow = {"type": "decoder", "args": {"source": "rtsp://127.0.0.1:9/none", "fail_fast_s": 8, "reconnect_s": 0.2}}
    acme_w.client.publish(f"edgeva/v1/{dev}/acme/cmd/deploy", json.dumps({**app("slow", slow), "request_id": "slow1"}),
                          qos=1).wait_for_publish(5)
    time.sleep(0.5)  # acme's deploy is under way
    r = fleet.cmd("globex").send("deploy", app("quick"), timeout=60)
    assert r["ok"] is True, r
    assert acme_w.get(f"edgeva/v1/{dev}/acme/reply/slow1") == [], "globex waited for acme's deploy"
    r = acme_w.wait(f"edgeva/v1/{dev}/acme/reply/slow1", timeout=60)[0]
    assert r["ok"] is False and r["error"]["code"] == "setup_failed", r
    assert fleet.cmd("acme").send("status", {})["result"]["apps"] == {}


def test_per_tenant_limits(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 8: no cap on a tenant's apps, modules or frame/crop sizes. Now each is capped per
    tenant (here --max-apps 2 --max-slot-mb 1); a refusal says which limit and leaves nothing."""
    f = start_fleet(mosquitto_auth, tmp_path, "--max-apps", "2", "--max-slot-mb", "1", "--max-modules", "5")
    acme, globex = f.cmd("acme"), f.cmd("globex")
    try:
        big = {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 1280, "height": 720}}
        r = acme.send("deploy", app("big", big), timeout=30)
        assert r["ok"] is False and r["error"]["code"] == "limit" and r["error"]["path"] == "modules.dec", r
        assert "--max-slot-mb" in r["error"]["message"]
        crops = app("crops")
        crops["modules"]["dec"]["outputs"] = ["det"]
        crops["modules"]["det"] = {"type": "detector", "args": {"backend": "opencv-hog", "crops": True,
                                                                 "crop_size": [512, 1024], "max_crops": 16},
                                   "outputs": ["pub"]}
        r = acme.send("deploy", crops, timeout=60)
        assert r["ok"] is False and r["error"]["code"] == "limit" and r["error"]["path"] == "modules.det", r
        many = {"app": "many", "modules": {f"d{i}": {**DEC, "args": {**DEC["args"], "fps": i + 1}} for i in range(6)}}
        r = acme.send("deploy", many, timeout=30)
        assert r["ok"] is False and r["error"]["code"] == "limit" and "--max-modules" in r["error"]["message"], r
        time.sleep(0.5)
        assert f.observer.get(f"edgeva/v1/{f.device}/state")[-1]["modules"] == {}  # all rolled back
        for name in ("one", "two"):
            assert acme.send("deploy", app(name, {**DEC, "args": {**DEC["args"], "fps": len(name)}}), timeout=30)["ok"]
        r = acme.send("deploy", app("three"), timeout=30)
        assert r["ok"] is False and r["error"]["code"] == "limit" and "--max-apps" in r["error"]["message"], r
        assert globex.send("deploy", app("g-one"), timeout=30)["ok"]  # limits are per tenant
    finally:
        stop_fleet(f)


def _private_shm_works() -> bool:
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                       capture_output=True, check=False)
    return r.returncode == 0


@pytest.mark.skipif(not _private_shm_works(), reason="needs root's unshare -m (a private /dev/shm for one agent)")
def test_shared_memory_is_checked_for_every_ring_not_one_at_a_time(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 8: /dev/shm was checked one segment at a time against its free space, but tmpfs
    segments are sparse: rings made earlier still take their space when written, so several
    rings that each "fit" over-commit it (a SIGBUS later). The agent runs in its own mount
    namespace with a 640 MiB /dev/shm (as in a container with --shm-size), so no other test's
    segments count and this test's cannot starve theirs. A first app's two rings (decoder and publish, each 8 x 4K slots,
    ~190 MiB, written one slot a second) fit; a second app of the same size would fit in what
    is still free, but not with what the first still owes: refused, and the first runs on.
    Once the first is removed, the second deploys."""
    wrap = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=640m tmpfs /dev/shm && exec "$@"', "sh"]
    obs = Watcher(mosquitto_auth.url, username="observer", password=mosquitto_auth.users["observer"])
    device = f"sec-{uuid.uuid4().hex[:6]}"
    agent = AgentProc(mosquitto_auth.url, device, tmp_path / "agent", obs, "--username", "agent", "--password",
                      mosquitto_auth.users["agent"], "--slots", "8", "--max-shm-mb", "4096", wrap=wrap)
    acme = Watcher(mosquitto_auth.url, mqtt.MQTTv5, username="acme", password=mosquitto_auth.users["acme"],
                   topics=("edgeva/v1/+/acme/#",))
    cmd = Commander(acme, device, "acme")

    def cam(fps: float) -> dict:
        return {"type": "decoder", "args": {"source": "synthetic", "fps": fps, "width": 3840, "height": 2160}}

    try:
        r = cmd.send("deploy", app("first", cam(1)), timeout=30)
        assert r["ok"], r
        r = cmd.send("deploy", app("second", cam(2)), timeout=30)
        assert r["ok"] is False and r["error"]["code"] in ("limit", "setup_failed"), r
        assert "shared memory" in r["error"]["message"], r
        n = len(acme.msgs.get(f"edgeva/v1/{device}/acme/events/first", []))
        acme.wait(f"edgeva/v1/{device}/acme/events/first", lambda ms: len(ms) > n, timeout=20)  # runs on
        assert cmd.send("remove", {"app": "first"}, timeout=30)["ok"]
        assert cmd.send("deploy", app("second", cam(2)), timeout=30)["ok"]
        assert cmd.send("remove", {"app": "second"}, timeout=30)["ok"]
    finally:
        agent.stop()
        obs.close()
        acme.close()
