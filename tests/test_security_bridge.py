"""Hostile tenants and devices against the agent's MQTT side (issue 20): real agent processes
behind mosquitto with the ACL edgeva ships (docs/mosquitto/acl), tenants ``acme`` and
``globex`` that can only touch their own topics, and broker user ``agent`` for the agents.

The broker here sets no ``message_size_limit`` (the shipped configs do: it is the first line of
defence): the agent must hold on its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pynng
import pytest

from edgeva.agent.bridge import MAX_COMMAND_BYTES, MAX_INBOUND_PACKET, TENANT_QUEUE_BYTES
from edgeva.control.broker import free_port
from edgeva.control.mosquitto import Mosquitto
from tests.agent_harness import AgentProc, Commander, Watcher
from tests.brokers import TENANT_ACL, Broker, _run_mosquitto
from tests.test_multidevice import desired

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 10, "width": 64, "height": 48}}
USERS = {"agent": "agent-secret", "acme": "acme-secret", "globex": "globex-secret", "observer": "observer-secret"}
FLEET = ("--data-bind", "tcp://127.0.0.1:0", "--fleet-token", "test-fleet")
MIB = 1 << 20


def app(name: str, dec: dict | None = None) -> dict:
    return {"app": name, "modules": {"dec": {**(dec or DEC), "outputs": ["pub"]},
                                     "pub": {"type": "publish", "args": {}}}}


def split_app(name: str, src: str, dst: str) -> dict:
    return {"app": name, "modules": {
        "dec": {**DEC, "device": src, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}, "device": dst, "policy": "drop_oldest"},
    }}


def _users_file(workdir: Path) -> Path:
    passwd = workdir / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([tool, "-b", *(["-c"] if i == 0 else []), str(passwd), user, password], check=True,
                       capture_output=True)
    passwd.chmod(0o600)
    return passwd


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto with passwords and the shipped tenant ACL, and no ``message_size_limit``
    (mosquitto's own ceiling, 256 MiB), whatever the shipped configs set."""
    workdir = tmp_path_factory.mktemp("mosquitto-nolimit")
    acl = workdir / "acl"
    acl.write_text(TENANT_ACL)
    acl.chmod(0o600)
    yield from _run_mosquitto(workdir, f"allow_anonymous false\npassword_file {_users_file(workdir)}\n"
                                       f"acl_file {acl}\n", dict(USERS))


def tenant(b: Broker, name: str) -> Watcher:
    return Watcher(b.url, mqtt.MQTTv5, username=name, password=b.users[name], topics=(f"edgeva/v1/+/{name}/#",))


def observer(b: Broker) -> Watcher:
    return Watcher(b.url, username="observer", password=b.users["observer"])


def _wait_progress(w: Watcher, prefix: str, last: str, stall_s: float = 60.0) -> None:
    """Until topic ``last`` has a message. It fails when no new topic under ``prefix`` has had
    one for ``stall_s`` (a stuck agent), not after a fixed total: a loaded core answers slower."""
    def count() -> int:
        with w.cond:
            return sum(1 for t in w.msgs if t.startswith(prefix))
    seen, t_new = count(), time.monotonic()
    while last not in w.msgs:
        time.sleep(0.2)
        now = count()
        if now > seen:
            seen, t_new = now, time.monotonic()
        assert time.monotonic() - t_new < stall_s, f"{seen} replies under {prefix} but not {last}, none new for {stall_s:.0f} s"


def agent(b: Broker, w: Watcher, device: str, root: Path, *extra: str) -> AgentProc:
    return AgentProc(b.url, device, root / device, w, "--username", "agent", "--password", b.users["agent"], *extra)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


# -- hole 6 -------------------------------------------------------------------------------------
def test_oversized_commands_are_sized_before_they_are_queued(broker: Broker, tmp_path: Path) -> None:
    """Hole 6: every command was queued whole (256 per tenant) before the 1 MiB check; 24
    commands of 24 MiB took the agent from 84 to 729 MB. Now a command is sized in the MQTT
    callback (only its head waits, for the refusal's request id), a tenant's queue is bounded
    in bytes too, and under MQTT 5 the agent tells the broker the largest packet it takes
    (``MAX_INBOUND_PACKET``): bigger ones are dropped by the broker and never read. Here
    acme's worker is busy with a slow deploy while acme sends 24 commands of 9 MiB and 24
    of 4 MiB: the agent's peak RSS grows by less than 64 MiB, every 4 MiB one gets its
    ``bad_request``, and globex is answered meanwhile; of 24 commands of just under 1 MiB, no
    more than 8 MiB wait, the others are dropped. (More than 20 oversized ones: sent at
    QoS 1 to a QoS 1 subscriber, each would stay in mosquitto's in-flight window for the
    agent, and 20 stall every later message: the agent subscribes at QoS 0.)"""
    BIG = 24  # noqa: N806 (more than mosquitto's 20 in flight)
    MIDS = 24  # noqa: N806 (3 times what a tenant's queue holds in bytes)
    obs, acme, globex = observer(broker), tenant(broker, "acme"), tenant(broker, "globex")
    device = f"big-{uuid.uuid4().hex[:6]}"
    a = agent(broker, obs, device, tmp_path)
    try:
        assert Commander(globex, device, "globex").send("status", {})["ok"]
        pid = a.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
        before = proc_status(pid)["VmRSS"]
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                try:
                    peak[0] = max(peak[0], proc_status(pid).get("VmRSS", 0))
                except OSError:  # the agent is gone (the test failed and stopped it)
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        slow = {"type": "decoder", "args": {"source": "rtsp://127.0.0.1:9/none", "fail_fast_s": 8, "reconnect_s": 0.2}}
        acme.client.publish(f"edgeva/v1/{device}/acme/cmd/deploy",
                            json.dumps({**app("slow", slow), "request_id": "slow1"}), qos=1).wait_for_publish(5)
        time.sleep(0.3)  # acme's worker is busy: before, everything after waited whole in its queue
        sizes = [9 * MIB] * BIG + [4 * MIB] * 24
        assert 4 * MIB < MAX_INBOUND_PACKET < 9 * MIB and 4 * MIB > MAX_COMMAND_BYTES
        pad = b"a" * (9 * MIB)
        for i, size in enumerate(sizes):
            head = b'{"request_id":"big-%d","app":"x","pad":"' % i
            acme.client.publish(f"edgeva/v1/{device}/acme/cmd/stop", head + pad[: size - len(head) - 2] + b'"}',
                                qos=1).wait_for_publish(30)
        # Commands of an allowed size wait whole, but no more than TENANT_QUEUE_BYTES of them.
        mid = MAX_COMMAND_BYTES - 64
        for i in range(MIDS):
            head = b'{"request_id":"mid-%d","app":"x","pad":"' % i
            acme.client.publish(f"edgeva/v1/{device}/acme/cmd/stop", head + pad[: mid - len(head) - 2] + b'"}',
                                qos=1).wait_for_publish(30)
        busy = acme.get(f"edgeva/v1/{device}/acme/reply/slow1") == []
        globex_t0 = time.monotonic()
        assert Commander(globex, device, "globex").send("status", {}, timeout=10)["ok"]
        globex_s = time.monotonic() - globex_t0
        for i in range(BIG, len(sizes)):  # every command that reached the agent is refused, by its id
            r = acme.wait(f"edgeva/v1/{device}/acme/reply/big-{i}", timeout=60)[0]
            assert r["ok"] is False and r["error"]["code"] == "bad_request" and "over the limit" in r["error"]["message"]
        done.set()
        sampler.join()
        st = proc_status(pid)
        growth = max(peak[0], st["VmHWM"]) - before
        print(f"agent RSS before {before / MIB:.0f} MiB, peak +{growth / MIB:.1f} MiB (VmHWM {st['VmHWM'] / MIB:.0f} "
              f"MiB, now {st['VmRSS'] / MIB:.0f} MiB); globex answered in {globex_s:.2f} s")
        assert growth < 64 * MIB, f"the agent grew by {growth / MIB:.0f} MiB while acme flooded it"
        for i in range(BIG):  # over MAX_INBOUND_PACKET: the broker never sent them to the agent
            assert acme.get(f"edgeva/v1/{device}/acme/reply/big-{i}") == []
        r = acme.wait(f"edgeva/v1/{device}/acme/reply/slow1", timeout=60)[0]
        assert r["error"]["code"] == "setup_failed", r
        assert Commander(acme, device, "acme").send("status", {})["ok"]  # acme's commands go on
        answered = sum(1 for i in range(MIDS) if acme.get(f"edgeva/v1/{device}/acme/reply/mid-{i}"))
        assert busy, "acme's slow deploy ended before its flood was sent: its queue never filled"
        assert 0 < answered <= TENANT_QUEUE_BYTES // mid, f"{answered} commands of 1 MiB waited in acme's queue"
    finally:
        a.stop()
        for w in (obs, acme, globex):
            w.close()


# -- hole 7 -------------------------------------------------------------------------------------
def test_a_state_speaks_only_for_the_device_of_its_topic(broker: Broker, tmp_path: Path) -> None:
    """Hole 7: a state was filed under the device its payload named, not its topic's: an
    account that may publish one device's state (``cam-evil``) announced a link address for
    ``cam-a``, cam-b redialled there and the attacker received cam-b's frames. Now a state
    (and device metrics) counts only for the device of its topic: the forged one is ignored,
    cam-b's link stays with cam-a and the app flows on."""
    uid = uuid.uuid4().hex[:6]
    obs = observer(broker)
    acme = tenant(broker, "acme")
    cam_a, cam_b, evil = f"a-{uid}", f"b-{uid}", f"evil-{uid}"  # a sorts first: a listens, b dials
    agents = [agent(broker, obs, d, tmp_path, *FLEET) for d in (cam_a, cam_b)]
    port = free_port()
    trap = pynng.Pair0(listen=f"tcp://127.0.0.1:{port}", recv_timeout=200)
    forger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"evil-{uid}")
    forger.username_pw_set("agent", broker.users["agent"])  # the one user allowed to publish states
    try:
        r = Commander(acme, cam_a, "acme").send("deploy", split_app("frames", cam_b, cam_a), timeout=60)
        assert r["ok"], r
        ev = f"edgeva/v1/{cam_a}/acme/events/frames"
        acme.wait(ev, lambda ms: len(ms) >= 5, timeout=30)
        forger.connect(broker.host, broker.port)
        forger.loop_start()
        forged = {"device": cam_a, "status": "online", "ts": time.time(), "data_addr": f"tcp://127.0.0.1:{port}",
                  "links": {cam_b: f"tcp://127.0.0.1:{port}"}}
        forger.publish(f"edgeva/v1/{evil}/state", json.dumps(forged), qos=1, retain=True).wait_for_publish(5)
        got = None
        deadline = time.monotonic() + 4  # cam-b redialled within a second when it believed it
        while got is None and time.monotonic() < deadline:
            try:
                got = trap.recv()
            except pynng.Timeout:
                pass
        assert got is None, f"cam-b sent the attacker a frame of {len(got)} B"
        n = len(acme.get(ev))
        acme.wait(ev, lambda ms: len(ms) >= n + 10, timeout=20)  # cam-b's frames still reach cam-a
        assert "names device" in agents[1].log.read_text()  # refused, and said so
    finally:
        forger.publish(f"edgeva/v1/{evil}/state", b"", qos=1, retain=True).wait_for_publish(5)
        forger.loop_stop()
        forger.disconnect()
        trap.close()
        for a in agents:
            a.stop()
        for w in (obs, acme):
            w.close()


# -- an update straight to a part ---------------------------------------------------------------
def test_an_update_sent_to_a_part_reaches_its_coordinator_whatever_its_request_id(broker: Broker,
                                                                                  tmp_path: Path) -> None:
    """A part applied an ``update`` itself, without its coordinator, when the request id looked
    like the coordinator's own (``<coordinator>.<hex>``): a tenant chooses request ids, so it
    could leave the parts of its app with different graphs (and stream names). Now every
    update of a part goes to its coordinator, which changes the part's module with a deploy
    carrying the fleet token. Here cam-b coordinates, cam-a runs the decoder; the update goes
    straight to cam-a with id ``<cam-b>.forged``: cam-b answers it, both record fps 25."""
    uid = uuid.uuid4().hex[:6]
    obs, acme = observer(broker), tenant(broker, "acme")
    cam_a, cam_b = f"a-{uid}", f"b-{uid}"
    agents = {d: agent(broker, obs, d, tmp_path, *FLEET) for d in (cam_a, cam_b)}
    try:
        r = Commander(acme, cam_b, "acme").send("deploy", split_app("via", cam_a, cam_b), timeout=60)
        assert r["ok"], r
        ev = f"edgeva/v1/{cam_b}/acme/events/via"
        acme.wait(ev, lambda ms: len(ms) >= 5, timeout=30)
        rid = f"{cam_b}.forged1"
        acme.client.publish(f"edgeva/v1/{cam_a}/acme/cmd/update",
                            json.dumps({"request_id": rid, "app": "via", "module": "dec", "args": {"fps": 25}}), qos=1)
        r = acme.wait(f"edgeva/v1/{cam_a}/acme/reply/{rid}", timeout=90)[0]
        assert r["ok"], r
        assert r["result"].get("coordinator") == cam_b, f"cam-a applied the update without its coordinator: {r}"
        assert r["result"]["device"] == cam_a and r["result"]["applied_live"] is not None, r
        for d in (cam_a, cam_b):
            st = Commander(acme, d, "acme").send("status", {"app": "via"})
            assert st["ok"], st
        for d, a in agents.items():
            assert desired(a)["via"]["deployment"]["modules"]["dec"]["args"]["fps"] == 25, d
        n = len(acme.get(ev))
        ids = [e["frame_id"] for e in acme.wait(ev, lambda ms: len(ms) >= n + 10, timeout=30)[n:]]
        assert ids == sorted(ids), ids  # the renamed stream flows in order
    finally:
        for a in agents.values():
            a.stop()
        for w in (obs, acme):
            w.close()


# -- per-tenant reply caches and outboxes -------------------------------------------------------
def test_one_tenants_commands_do_not_push_out_anothers_cached_reply(broker: Broker, tmp_path: Path) -> None:
    """The reply cache (a repeated request id is answered, not applied again) was one for all
    tenants, 512 replies: globex's commands pushed acme's out, and acme's retry was applied
    again. Now each tenant has its own cache: after 600 of globex's commands, acme's retried
    deploy still gets its first reply and changes nothing."""
    obs, acme, globex = observer(broker), tenant(broker, "acme"), tenant(broker, "globex")
    device = f"rc-{uuid.uuid4().hex[:6]}"
    a = agent(broker, obs, device, tmp_path)
    try:
        topic = f"edgeva/v1/{device}/acme/reply/once-1"
        body = json.dumps({"request_id": "once-1", **app("once")})
        acme.client.publish(f"edgeva/v1/{device}/acme/cmd/deploy", body, qos=1)
        first = acme.wait(topic, timeout=60)[0]
        assert first["ok"], first
        assert Commander(acme, device, "acme").send("remove", {"app": "once"})["ok"]
        assert Commander(globex, device, "globex").send("deploy", app("g"), timeout=60)["ok"]
        # each an ok reply the cache keeps; in batches of 100, under the tenant's queue of 256
        # (a loaded agent would drop the rest of one burst of 600, and then cache fewer)
        for batch in range(6):
            for i in range(batch * 100, batch * 100 + 100):
                globex.client.publish(f"edgeva/v1/{device}/globex/cmd/start",
                                      json.dumps({"request_id": f"g-{i}", "app": "g"}), qos=1)
            _wait_progress(globex, f"edgeva/v1/{device}/globex/reply/g-",
                           f"edgeva/v1/{device}/globex/reply/g-{batch * 100 + 99}")
        assert sum(1 for t in globex.msgs if t.startswith(f"edgeva/v1/{device}/globex/reply/g-")) == 600
        acme.client.publish(f"edgeva/v1/{device}/acme/cmd/deploy", body, qos=1)  # acme's client retries
        assert acme.wait(topic, lambda ms: len(ms) >= 2, timeout=60)[1] == first
        apps = Commander(acme, device, "acme").send("status", {})["result"]["apps"]
        assert "once" not in apps, "acme's retried deploy was applied again"
    finally:
        a.stop()
        for w in (obs, acme, globex):
            w.close()


def test_one_tenants_events_do_not_push_out_anothers_while_the_broker_is_away(tmp_path: Path) -> None:
    """The offline event buffer was one for all tenants (2000 events): a tenant whose apps
    publish fast pushed out every other tenant's events of the outage. Now each tenant has its
    own buffer: acme's app (400 events/s) overflows its own during a 7 s outage, globex's
    (5/s) loses none."""
    b = Mosquitto(tmp_path / "broker").start()
    w = a = None
    try:
        w = Watcher(b.url)
        w.client.reconnect_delay_set(min_delay=1, max_delay=1)
        w.client.on_connect = lambda c, *_: c.subscribe("edgeva/v1/#", qos=1)
        device = f"ob-{uuid.uuid4().hex[:6]}"
        a = AgentProc(b.url, device, tmp_path / "agent", w, "--event-rate", "1000")
        fast = {"type": "decoder", "args": {"source": "synthetic", "fps": 400, "width": 32, "height": 24}}
        assert Commander(w, device, "acme").send("deploy", app("fast", fast), timeout=60)["ok"]
        slow = {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 32, "height": 24}}
        assert Commander(w, device, "globex").send("deploy", app("slow", slow), timeout=60)["ok"]
        ev_g, ev_a = f"edgeva/v1/{device}/globex/events/slow", f"edgeva/v1/{device}/acme/events/fast"
        w.wait(ev_g, lambda ms: len(ms) >= 3)
        w.wait(ev_a, lambda ms: len(ms) >= 50)
        b.stop(kill=True)
        time.sleep(7)  # acme: ~2,800 events, more than a buffer holds; globex: ~50
        b.start()
        ids = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ids = [e["frame_id"] for e in w.get(ev_g)]
            if ids and max(ids) - ids[0] > 60 and set(range(ids[0], max(ids) + 1)) <= set(ids):
                break
            time.sleep(0.5)
        missing = sorted(set(range(ids[0], max(ids) + 1)) - set(ids))
        assert not missing, f"globex lost {len(missing)} events of the outage: {missing[:10]}..."
        acme_ids = [e["frame_id"] for e in w.get(ev_a)]
        assert len(set(range(acme_ids[0], max(acme_ids) + 1)) - set(acme_ids)) > 0  # acme's own overflowed
    finally:
        if a is not None:
            a.stop()
        if w is not None:
            w.close()
        b.stop()
