"""nng links between agents: ordering, multiplexing, reconnect, limits, TLS, ring relays.

Peers run in separate processes (``spawn``) on loopback, as two agents would. The netns test
(``-m root``) shapes a veth pair between two network namespaces.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeva.agent.dataplane.link import Link, LinkMessageTooLarge, LinkTimeout, LinkTLS
from edgeva.agent.dataplane.segment import segment_name, unlink_segment
from edgeva.schemas.message import Message
from tests.load import budget

CTX = mp.get_context("spawn")
SHAPE = (48, 64, 3)
ROOT = str(Path(__file__).resolve().parents[1])


def frame(i: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Content that differs per frame id and per byte, so corruption or mix-ups show."""
    n = int(np.prod(shape))
    return ((np.arange(n, dtype=np.uint32) * 7 + i) % 256).astype(np.uint8).reshape(shape)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- child processes -----------------------------------------------------------------------


def _receiver(addr: str, q, streams: list[str], n: int, tls: LinkTLS | None, secs: float) -> None:
    """Listen, collect frame ids per stream (checking content), report when ``n`` arrived."""
    link = Link.listen(addr, tls=tls, name="rx")
    got: dict[str, list[int]] = {s: [] for s in streams}
    bad: list[str] = []
    lock = threading.Lock()
    total = threading.Event()

    def handler(r) -> None:
        m = r.message
        if m.arrays and not np.array_equal(m.arrays["frame"], frame(m.frame_id, m.arrays["frame"].shape)):
            bad.append(f"{r.stream}:{m.frame_id}")
        with lock:
            got[r.stream].append(m.frame_id)
            if sum(map(len, got.values())) >= n:
                total.set()

    for s in streams:
        link.on(s, handler)
    q.put(("addr", link.address))
    total.wait(budget(secs))
    st = link.stats()
    q.put(("done", got, bad, st))
    time.sleep(0.2)
    link.close()


def _counter(addr: str, q, secs: float) -> None:
    """Listen on a fixed address and report the count every 10 messages (restart test)."""
    link = Link.listen(addr, name="rx")
    q.put(("up", os.getpid()))
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        r = link.recv(0.2)
        if r is not None:
            n += 1
            if n % 10 == 0:
                q.put(("n", n))


def _collector(addr: str, q, secs: float) -> None:
    """Listen on a fixed address; report the count of ``live`` every 10 messages and every
    ``gap`` message's id (restart test)."""
    link = Link.listen(addr, name="rx")
    q.put(("up", os.getpid()))
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        r = link.recv(0.2)
        if r is None:
            continue
        if r.stream == "gap":
            q.put(("gap", r.message.frame_id))
        else:
            n += 1
            if n % 10 == 0:
                q.put(("n", n))
        r.lease.release()


def _ring_producer(ring: str, n: int, q, go) -> None:
    """Create ring ``ring``, wait for the relay to attach, publish n frames, end the stream."""
    from edgeva.agent.dataplane.ring import RingProducer

    prod = RingProducer.create(ring, int(np.prod(SHAPE)) + 4096, nslots=4)
    q.put(("ring", ring))
    go.wait(10)
    for i in range(n):
        prod.publish(Message(i, "cam", fields={"i": i}, arrays={"frame": frame(i)}), timeout=10)
    prod.close(unlink=False)  # consumers see end of stream; the test unlinks
    q.put(("published", n))


def _remote_agent(ring: str, n: int, q) -> None:
    """The peer agent: link listener -> LinkToRing -> a ring consumer that checks everything."""
    from edgeva.agent.dataplane.relay import LinkToRing
    from edgeva.agent.dataplane.ring import RingConsumer

    link = Link.listen("tcp://127.0.0.1:0", name="remote")
    relay = LinkToRing(link, "cam", ring, slot_size=int(np.prod(SHAPE)) + 4096, nslots=4)
    cons = RingConsumer.attach(ring, policy="block")  # before the peer sends: sees everything
    q.put(("addr", link.address))
    ids, bad = [], []
    end = time.monotonic() + 12
    while len(ids) < n and time.monotonic() < end:
        m = cons.get(timeout=0.5)
        if m is None:
            continue
        ids.append(m.frame_id)
        if m.fields.get("i") != m.frame_id or not np.array_equal(m.arrays["frame"], frame(m.frame_id)):
            bad.append(m.frame_id)
    cons.close()
    settle = time.monotonic() + 2  # the relay counts a message just after committing it
    while relay.stats()["published"] < len(ids) and time.monotonic() < settle:
        time.sleep(0.01)
    q.put(("done", ids, bad, relay.stats()))
    time.sleep(0.2)
    relay.close()
    link.close()


def _expect(q, kind: str, timeout: float | None = None):
    """The next item of ``kind`` from a child; 10 s, more on a loaded machine (a spawned child
    imports numpy and pynng first)."""
    end = time.monotonic() + (budget(10.0) if timeout is None else timeout)
    while True:
        item = q.get(timeout=max(0.01, end - time.monotonic()))
        if item[0] == kind:
            return item


def _start(target, *args) -> mp.Process:
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _stop(*procs: mp.Process) -> None:
    for p in procs:
        p.join(timeout=3)
        if p.is_alive():
            p.kill()
            p.join(timeout=3)


# -- tests ---------------------------------------------------------------------------------


def test_block_stream_complete_and_in_order() -> None:
    n = 300
    q = CTX.Queue()
    p = _start(_receiver, "tcp://127.0.0.1:0", q, ["cam"], n, None, 10.0)
    try:
        addr = _expect(q, "addr")[1]
        with Link.dial(addr, name="tx", depth=2) as link:
            assert link.wait_connected(5)
            for i in range(n):
                link.send("cam", Message(i, "cam", arrays={"frame": frame(i)}), timeout=5)
            _, got, bad, rx = _expect(q, "done")
            # The sender counts a message after nng's send returns, so the receiver can be
            # done first: wait for the count, then read it once.
            deadline = time.monotonic() + 5
            while link.messages_sent < n and time.monotonic() < deadline:  # metrics() drains samples
                time.sleep(0.01)
            m = link.metrics()
        assert got["cam"] == list(range(n))
        assert bad == []
        assert rx["lost"] == 0 and rx["messages_received"] == n
        assert m.messages_sent == n and m.dropped == 0 and m.serialise_ms.p50 is not None
    finally:
        _stop(p)


def test_two_streams_multiplexed_stay_separate_and_ordered() -> None:
    n = 200
    q = CTX.Queue()
    p = _start(_receiver, "tcp://127.0.0.1:0", q, ["a", "b"], 2 * n, None, 10.0)
    try:
        addr = _expect(q, "addr")[1]
        with Link.dial(addr, name="tx") as link:
            assert link.wait_connected(5)

            def push(stream: str, base: int) -> None:  # one thread per stream
                for i in range(n):
                    fid = base + i
                    arrays = {"frame": frame(fid)} if stream == "a" else {}
                    link.send(stream, Message(fid, stream, arrays=arrays, fields={"s": stream}))

            ts = [threading.Thread(target=push, args=("a", 0)), threading.Thread(target=push, args=("b", 10_000))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            _, got, bad, _ = _expect(q, "done")
        assert got["a"] == list(range(n))
        assert got["b"] == list(range(10_000, 10_000 + n))
        assert bad == []
    finally:
        _stop(p)


def test_drop_oldest_without_peer_every_message_is_delivered_or_counted() -> None:
    """No peer yet: a drop_oldest stream keeps its newest messages and counts the rest. Every
    message sent is either handed to nng or counted as dropped (sender side, exact); once a
    peer listens, what nng took arrives: the newest, in order (sent = delivered + dropped)."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    link = Link.dial(addr, name="tx", policy="drop_oldest", depth=4)
    p = None
    try:
        k = 50
        for i in range(k):
            link.send("gap", Message(i, "cam", arrays={"frame": frame(i)}))
        assert link.stats()["dropped_by_stream"]["gap"] >= k - 4 - 1  # depth 4 (+1 in flight)
        q = CTX.Queue()
        p = _start(_collector, addr, q, 60.0)
        _expect(q, "up", 60)
        gap: list[int] = []
        deadline = time.monotonic() + 60
        while k - 1 not in gap:  # the newest is always kept; in order, so all are in by then
            item = q.get(timeout=max(0.01, deadline - time.monotonic()))
            if item[0] == "gap":
                gap.append(item[1])
        # the sender thread counts a message once nng_sendmsg returns, which may be just after
        # the peer already has it: wait for the count, do not race it
        deadline = time.monotonic() + 10
        while (st := link.stats())["messages_sent"] + st["dropped_by_stream"]["gap"] < k:
            assert time.monotonic() < deadline, st
            time.sleep(0.01)
        delivered, dropped = len(gap), st["dropped_by_stream"]["gap"]
        assert st["messages_sent"] + dropped == k, st  # nothing discarded uncounted
        assert gap == list(range(k - delivered, k))  # the newest, in order, no repeats
        assert delivered + dropped == k, (delivered, dropped)  # sent = delivered + dropped
    finally:
        link.close(drain=0)
        if p is not None:
            p.kill()
            p.join(3)


def test_peer_killed_and_restarted_link_resumes_and_counts_drops() -> None:
    addr = f"tcp://127.0.0.1:{free_port()}"
    q1 = CTX.Queue()
    p1 = _start(_counter, addr, q1, 30.0)
    p2 = None
    link = Link.dial(addr, name="tx", policy="drop_oldest", depth=4)
    stop, errors = threading.Event(), []

    def pump() -> None:
        i = 0
        while not stop.is_set():
            try:
                link.send("live", Message(i, "cam", arrays={"frame": frame(i)}))
            except Exception as e:  # noqa: BLE001 - any error fails the test below
                errors.append(repr(e))
                return
            i += 1
            time.sleep(0.003)

    t = threading.Thread(target=pump, daemon=True)
    try:
        _expect(q1, "up")
        assert link.wait_connected(5)
        t.start()
        _expect(q1, "n", 5)
        os.kill(p1.pid, signal.SIGKILL)
        p1.join(5)
        deadline = time.monotonic() + 10
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.connected
        deadline = time.monotonic() + 10  # sending into the void: drop_oldest counts drops
        while link.stats()["dropped"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.stats()["dropped"] > 0
        assert link.state == "connecting"
        q2 = CTX.Queue()
        p2 = _start(_counter, addr, q2, 30.0)
        _expect(q2, "up", 30)
        assert _expect(q2, "n", 30)[1] >= 10  # resumed by itself
        assert link.connected and link.stats()["connects"] >= 2
        assert errors == []
    finally:
        stop.set()
        t.join(2) if t.is_alive() else None
        link.close(drain=0)
        for p in (p1, p2):
            if p is not None:
                p.kill()
                p.join(3)


BIG = ((720, 1280, 3), (480, 1280, 3), (720, 1000, 3))  # sizes change: refills grow and shrink


def _send_big(n: int, secs: float = 20.0) -> tuple[list[int], list[str], dict]:
    """Send ``n`` big frames back to back to a checking receiver; (ids, bad, sender stats)."""
    frames = [frame(i, BIG[i % 3]) for i in range(n)]  # made first: sends go back to back
    q = CTX.Queue()
    p = _start(_receiver, "tcp://127.0.0.1:0", q, ["cam"], n, None, secs)
    try:
        addr = _expect(q, "addr")[1]
        with Link.dial(addr, name="tx", depth=2) as link:
            assert link.wait_connected(5)
            for i, f in enumerate(frames):
                link.send("cam", Message(i, "cam", arrays={"frame": f}), timeout=10)
            _, got, bad, _ = _expect(q, "done", secs)
            return got["cam"], bad, link.stats()
    finally:
        _stop(p)


def test_big_messages_are_refilled_never_while_nng_writes_them() -> None:
    """Sent messages come back to the link's pool once nng has written them. The receiver is
    slower than the sender (it rebuilds each expected frame), so nng is still writing one
    message while the sender fills the next: a buffer refilled too early reaches the peer with
    another frame's bytes, which the receiver checks."""
    n = 30
    got, bad, st = _send_big(n)
    assert got == list(range(n)) and bad == []
    assert st["messages_reused"] >= n // 3, st  # the pool is what sends them


def test_without_nng_refcount_calls_every_message_is_allocated(monkeypatch) -> None:
    from edgeva.agent.dataplane import msgpool

    monkeypatch.setattr(msgpool, "_refs", ())  # as if pynng's extension lacked the symbols
    n = 30
    got, bad, st = _send_big(n)
    assert got == list(range(n)) and bad == []
    assert st["messages_reused"] == 0


def test_block_sender_times_out_without_peer() -> None:
    link = Link.dial(f"tcp://127.0.0.1:{free_port()}", name="tx", depth=2)
    try:
        t0 = time.monotonic()
        with pytest.raises(LinkTimeout, match="no peer connected"):
            for i in range(10):
                link.send("cam", Message(i), timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 5  # the first full send times out (0.3 s), not later
        assert link.stats()["send_timeouts"] == 1
    finally:
        link.close(drain=0)


def test_oversized_message_refused_on_send_side() -> None:
    q = CTX.Queue()
    p = _start(_receiver, "tcp://127.0.0.1:0", q, ["cam"], 1, None, 8.0)
    try:
        addr = _expect(q, "addr")[1]
        with Link.dial(addr, name="tx", max_message_size=1 << 20) as link:
            assert link.wait_connected(5)
            big = np.zeros((720, 1280, 3), np.uint8)  # 2.7 MB > 1 MiB
            with pytest.raises(LinkMessageTooLarge, match="max_message_size"):
                link.send("cam", Message(0, arrays={"frame": big}))
            assert link.stats()["messages_sent"] == 0
            link.send("cam", Message(1, arrays={"frame": frame(1)}))  # the link is still fine
            _, got, bad, _ = _expect(q, "done")
        assert got["cam"] == [1] and bad == []
    finally:
        _stop(p)


# -- TLS -----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, LinkTLS]:
    """CA + server + client certs, and a client cert from another CA, with the openssl CLI."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "evil"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN={ca}", cwd=d)
    for name, ca, cn in (("server", "ca", "agent-a"), ("client", "ca", "agent-b"), ("bad", "evil", "agent-b")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    p = {k: str(d / k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key", "bad.crt", "bad.key")}
    return {
        "server": LinkTLS(p["ca.crt"], p["server.crt"], p["server.key"]),
        "client": LinkTLS(p["ca.crt"], p["client.crt"], p["client.key"], server_name="agent-a"),
        "bad": LinkTLS(p["ca.crt"], p["bad.crt"], p["bad.key"], server_name="agent-a"),
    }


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_mutual_auth_and_wrong_ca_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    n = 20
    q = CTX.Queue()
    p = _start(_receiver, "tls+tcp://127.0.0.1:0", q, ["cam"], n, pki["server"], 12.0)
    try:
        addr = _expect(q, "addr")[1]
        assert addr.startswith("tls+tcp://127.0.0.1:")
        # A peer whose certificate comes from another CA: never connects, and it shows.
        bad = Link.dial(addr, name="bad", tls=pki["bad"])
        try:
            assert not bad.wait_connected(1.5)
            with pytest.raises(LinkTimeout):  # block stream: queue fills, then a clear error
                for i in range(10):
                    bad.send("cam", Message(900 + i, arrays={"frame": frame(900 + i)}), timeout=0.2)
            st = bad.stats()
            assert st["auth_failures"] > 0 and st["state"] == "auth_failed"
            assert bad.metrics().connected is False
        finally:
            bad.close(drain=0)
        with Link.dial(addr, name="good", tls=pki["client"]) as good:
            assert good.wait_connected(5)
            for i in range(n):
                good.send("cam", Message(i, arrays={"frame": frame(i)}))
            _, got, badframes, rx = _expect(q, "done")
        assert got["cam"] == list(range(n))  # nothing from the bad peer
        assert badframes == [] and rx["auth_failures"] > 0
    finally:
        _stop(p)


def test_tls_needs_tls_address() -> None:
    with pytest.raises(Exception, match="tls"):
        Link.dial("tcp://127.0.0.1:1", tls=LinkTLS("a", "b", "c"))


# -- relay ---------------------------------------------------------------------------------


def test_ring_link_ring_relay_end_to_end() -> None:
    from edgeva.agent.dataplane.relay import RingToLink

    n = 150
    tag = f"t{os.getpid()}-{time.monotonic_ns() % 10**9}"
    src_ring, dst_ring = segment_name("linktest", tag, "src"), segment_name("linktest", tag, "dst")
    qa, qb = CTX.Queue(), CTX.Queue()
    go = CTX.Event()
    remote = _start(_remote_agent, dst_ring, n, qa)
    producer = _start(_ring_producer, src_ring, n, qb, go)
    relay = link = None
    try:
        addr = _expect(qa, "addr")[1]
        _expect(qb, "ring")
        link = Link.dial(addr, name="local")
        assert link.wait_connected(5)
        relay = RingToLink(src_ring, link, "cam", policy="block")
        go.set()
        _, ids, bad, rstats = _expect(qa, "done", 14)
        assert ids == list(range(n))
        assert bad == []
        assert {k: rstats[k] for k in ("published", "dropped", "too_large", "backlog")} == {
            "published": n, "dropped": 0, "too_large": 0, "backlog": 0}
        assert relay.done.wait(5) and relay.sent == n
    finally:
        if relay is not None:
            relay.stop()
        if link is not None:
            link.close()
        _stop(remote, producer)
        unlink_segment(src_ring)
        unlink_segment(dst_ring)


# -- shaped network (root) -----------------------------------------------------------------

_NETNS_RX = """
import json, sys, time
sys.path.insert(0, {root!r})
from edgeva.agent.dataplane.link import Link
link = Link.listen("tcp://10.231.0.1:7600", name="rx")
print("ready", flush=True)
n = nbytes = 0; t_first = None
end = time.monotonic() + {secs}
while time.monotonic() < end:  # until the sender is done: 5 s without a message after the first
    r = link.recv(5.0)
    if r is None:
        if t_first is not None:
            break
        continue
    if t_first is None:
        t_first = time.monotonic(); continue  # start the clock at the first message
    n += 1; nbytes += r.lease.nbytes; r.lease.release()
    t_last = time.monotonic()
print(json.dumps({{"n": n, "bits_per_s": nbytes * 8 / (t_last - t_first)}}), flush=True)
"""

_NETNS_TX = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from edgeva.agent.dataplane.link import Link
from edgeva.schemas.message import Message
link = Link.dial("tcp://10.231.0.1:7600", name="tx", depth=4)
assert link.wait_connected(30)
img = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
end = time.monotonic() + {secs}
i = 0
while time.monotonic() < end:
    link.send("cam", Message(i, arrays={{"frame": img}}), timeout=5); i += 1
link.close()
"""


def _netns_ok() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


@pytest.mark.root
@pytest.mark.skipif(not _netns_ok(), reason="needs root, iproute2 (ip netns) and tc")
def test_link_fills_a_shaped_1gbit_veth_between_namespaces() -> None:
    """Root only (skipped otherwise): two network namespaces joined by a veth pair shaped to
    1 Gbit/s with tbf; a link receiver in one, a sender in the other pushing 720p frames for
    ~3 s; goodput must reach 85% of the shaped rate (or 75% of an unshaped baseline taken in
    the same run, where the machine cannot push 1 Gbit/s at all). Traffic stays on
    10.231.0.0/24 inside the namespaces; both namespaces are deleted in a finally."""
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"evl-a{tag}", f"evl-b{tag}"
    va, vb = f"evla{tag}", f"evlb{tag}"
    rate = 1e9

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)

    rx = None
    try:
        sh("ip", "netns", "add", ns_a)
        sh("ip", "netns", "add", ns_b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", ns_a)
        sh("ip", "link", "set", vb, "netns", ns_b)
        sh("ip", "-n", ns_a, "addr", "add", "10.231.0.1/24", "dev", va)
        sh("ip", "-n", ns_b, "addr", "add", "10.231.0.2/24", "dev", vb)
        for ns, dev in ((ns_a, va), (ns_b, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        py = sys.executable

        def goodput() -> dict:
            nonlocal rx
            rx = subprocess.Popen(["ip", "netns", "exec", ns_a, py, "-c", _NETNS_RX.format(root=ROOT, secs=60)],
                                  stdout=subprocess.PIPE, text=True)
            assert rx.stdout.readline().strip() == "ready"
            subprocess.run(["ip", "netns", "exec", ns_b, py, "-c", _NETNS_TX.format(root=ROOT, secs=3.0)],
                           check=True, timeout=60)
            out, _ = rx.communicate(timeout=60)
            return json.loads(out.strip().splitlines()[-1])

        # Baseline in the same run: what this machine pushes through the veth unshaped (a
        # loaded or slow machine may not reach 1 Gbit/s at all).
        base = goodput()
        # Shape the sender's egress: the data direction.
        sh("ip", "netns", "exec", ns_b, "tc", "qdisc", "add", "dev", vb, "root", "tbf",
           "rate", "1gbit", "burst", "256kb", "latency", "20ms")
        res = goodput()
        print("netns goodput unshaped", base, "shaped", res)
        assert res["n"] > 10
        # The link fills what the path carries: 85% of the shaped rate, or, where this machine
        # cannot push that even unshaped, 75% of what it pushed unshaped.
        assert res["bits_per_s"] >= min(0.85 * rate, 0.75 * base["bits_per_s"]), (base, res)
        assert res["bits_per_s"] <= 1.1 * rate, (base, res)  # and the shaping took hold
    finally:
        if rx is not None and rx.poll() is None:
            rx.kill()
        for ns in (ns_a, ns_b):  # deleting a namespace removes its veth end (and the pair)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)
