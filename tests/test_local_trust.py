"""Local trust (issue 20, holes 3 and 13): what another local user can do to the data plane.

Hole 3: a ring's wake-up sockets are abstract-namespace unix sockets, listed for every user in
``/proc/net/unix`` and open to anyone's datagrams. A consumer used to take a datagram's content
as a hand-off (seq, slot, length): six forged ones crashed a consumer with ``IndexError`` (or
replayed a stale slot), and the agent's ring->link relay thread died the same way. Here a
process dropped to another uid floods every such socket of a live ring with forged hand-offs
(valid-looking, out of range) and garbage while a real producer process publishes; the consumer
(a process of its own, then the agent-side relay) must see every frame once, in order, intact.

Hole 13: a file named like one of the agent's segments, created in /dev/shm by another user,
made the startup sweep raise (``PermissionError`` for a non-root agent; an empty one stopped
even a root agent) and the agent exited; a root agent removed another user's file. Now the
sweep reads and removes only this user's regular files.

Root only (they switch uids); CI runs as root.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pwd
import struct
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgeva.agent.dataplane.link import Link
from edgeva.agent.dataplane.relay import RingToLink
from edgeva.agent.dataplane.ring import H_PID, RingConsumer, RingProducer, sweep_segments
from edgeva.agent.dataplane.segment import SHM_DIR, create_segment, segment_name, unlink_segment
from edgeva.schemas.message import Message

CTX = mp.get_context("spawn")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
pytestmark = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (switches to other uids)")]

N = 150  # frames per run
NSLOTS = 4


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


OTHER_UID = _nobody()[0] - 7  # a second non-root uid, distinct from nobody (needs no passwd entry)


def _become(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    assert os.geteuid() == uid


def _payload(i: int) -> np.ndarray:
    return ((np.arange(256, dtype=np.uint32) * 13 + i) % 251).astype(np.uint8)


# -- child processes -------------------------------------------------------------------------


def _produce(name: str, go, q) -> None:
    """Create ring ``name``; once ``go`` is set, publish N frames (paced, so that consumers
    wait between them: that is when a forged note would be taken), then end the stream."""
    prod = RingProducer.create(name, slot_size=4096, nslots=NSLOTS)
    q.put("created")
    go.wait(30)
    for i in range(N):
        prod.publish(Message(i, source="cam", arrays={"v": _payload(i)}, fields={"i": i}))
        time.sleep(0.004)
    prod.close()


def _consume(name: str, q) -> None:
    """Read ring ``name`` to its end; report the frame ids and any frame whose content is wrong."""
    try:
        cons = RingConsumer.attach(name, policy="block")
        q.put("attached")
        ids, wrong = [], []
        while True:
            m = cons.get(timeout=20)
            if m is None:
                break
            ids.append(m.frame_id)
            if m.fields.get("i") != m.frame_id or not np.array_equal(m.arrays["v"], _payload(m.frame_id)):
                wrong.append(m.frame_id)
        q.put(("done", ids, wrong, cons.eof))
        cons.close()
    except BaseException as e:  # the failure under test: report it, not a silent exit
        q.put(("error", f"{type(e).__name__}: {e}"))


def _forge(name: str, uid: int, gid: int, stop, q) -> None:
    """As another uid: find ring ``name``'s wake-up sockets in /proc/net/unix (as any user
    can) and send them forged hand-offs and garbage until ``stop``."""
    import socket

    _become(uid, gid)
    notes = [struct.pack("<qqq", seq, slot, n) for seq in (1 << 40, 10**12) for slot, n in
             ((0, 64), (NSLOTS - 1, 4096), (1, 0), (100, 64), (-1, 10), (2, -5), (1 << 40, 8))]
    rng = np.random.default_rng(3)
    notes += [rng.bytes(k) for k in (0, 1, 7, 23, 25, 64, 200)]
    want = f"@edgeva/{name}/"
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)
    sent, armed = 0, False
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        with open("/proc/net/unix") as f:
            addrs = {line.split()[-1] for line in f if want in line}
        consumers = [a for a in addrs if "/c" in a[len(want) - 1:]]
        if consumers and not armed:
            armed = True
            q.put(("armed", sorted(addrs)))
        for a in addrs:
            raw = b"\0" + a[1:].encode()
            for note in notes:
                try:
                    tx.sendto(note, raw)
                    sent += 1
                except OSError:  # queue full or socket gone: keep going
                    pass
        time.sleep(0.001)
    q.put(("sent", sent))


def _sweep_as(prefix: str, uid: int, gid: int, q) -> None:
    _become(uid, gid)
    try:
        q.put(("ok", sweep_segments(prefix)))
    except BaseException as e:
        q.put(("error", f"{type(e).__name__}: {e}"))


def _make_files(paths: list[tuple[str, int]], link: tuple[str, str] | None, uid: int, gid: int) -> None:
    """As another uid: create 0600 files of the given sizes (and a symbolic link)."""
    _become(uid, gid)
    for path, size in paths:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
    if link:
        os.symlink(link[1], link[0])


# -- helpers -----------------------------------------------------------------------------------


def _get(q, timeout: float = 30):
    return q.get(timeout=timeout)


def _expect(q, what: str, timeout: float = 30):
    got = _get(q, timeout)
    assert got == what or (isinstance(got, tuple) and got[0] == what), f"expected {what!r}, got {got!r}"
    return got


class _Attack:
    """Producer process + forging process (as nobody) around ring ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.go, self.stop = CTX.Event(), CTX.Event()
        self.pq, self.fq = CTX.Queue(), CTX.Queue()
        self.prod = CTX.Process(target=_produce, args=(name, self.go, self.pq), daemon=True)
        self.prod.start()
        _expect(self.pq, "created")

    def arm(self) -> None:
        """Start forging; returns once the forger has found a consumer's socket."""
        uid, gid = _nobody()
        self.forger = CTX.Process(target=_forge, args=(self.name, uid, gid, self.stop, self.fq), daemon=True)
        self.forger.start()
        _expect(self.fq, "armed")
        self.go.set()

    def finish(self) -> int:
        """Stop forging; returns how many datagrams the forger got sent."""
        self.stop.set()
        sent = _expect(self.fq, "sent", 15)[1]
        for p in (self.prod, self.forger):
            p.join(10)
            if p.is_alive():
                p.kill()
        unlink_segment(self.name)
        return sent


def _ring_name(what: str) -> str:
    return segment_name(f"lt{uuid.uuid4().hex[:8]}", what)


# -- hole 3 ------------------------------------------------------------------------------------


def test_forged_wakeups_from_another_uid_cost_a_consumer_nothing() -> None:
    name = _ring_name("out")
    atk = _Attack(name)
    cq = CTX.Queue()
    cons = CTX.Process(target=_consume, args=(name, cq), daemon=True)
    cons.start()
    try:
        _expect(cq, "attached")
        atk.arm()
        got = _get(cq, 60)
        sent = atk.finish()
        assert got[0] == "done", f"the consumer failed under forged wake-ups: {got[1]}"
        _, ids, wrong, eof = got
        assert ids == list(range(N)), f"frames out of order, lost or replayed: {ids[:20]}... ({len(ids)})"
        assert not wrong and eof
        assert sent > 1000, f"the forger sent only {sent} datagrams: the test proves nothing"
    finally:
        atk.stop.set()
        cons.join(10)
        if cons.is_alive():
            cons.kill()


def test_forged_wakeups_from_another_uid_cost_the_agents_relay_nothing() -> None:
    """The agent's ring->link relay consumes a local ring in a thread of the agent: forged
    notes to its socket used to kill that thread (and every frame of that stream after)."""
    name = _ring_name("relay")
    atk = _Attack(name)
    rx = Link.listen("tcp://127.0.0.1:0", name="rx")
    tx = Link.dial(rx.address, name="tx")
    relay = None
    try:
        assert tx.wait_connected(10)
        relay = RingToLink(name, tx, "cam")
        atk.arm()
        ids, wrong = [], []
        deadline = time.monotonic() + 60
        while len(ids) < N and time.monotonic() < deadline:
            r = rx.recv(timeout=1.0)
            if r is None:
                if relay.done.is_set() and len(ids) < N:
                    break  # the relay ended before the stream did
                continue
            m = r.message
            ids.append(m.frame_id)
            if not np.array_equal(m.arrays["v"], _payload(m.frame_id)):
                wrong.append(m.frame_id)
            r.lease.release()
        sent = atk.finish()
        assert ids == list(range(N)), f"relay delivered {len(ids)} frames: {ids[:10]}...; relay sent {relay.sent}, alive {not relay.done.is_set()}"
        assert not wrong
        assert relay.done.wait(10)  # ended at the ring's end of stream, not before
        assert sent > 1000, f"the forger sent only {sent} datagrams: the test proves nothing"
    finally:
        atk.stop.set()
        if relay is not None:
            relay.stop()
        tx.close()
        rx.close()


# -- hole 13 -----------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _foreign_files(prefix: str) -> tuple[list[Path], Path]:
    """Another uid's entries named like ``prefix``'s segments: an empty file, one that reads as
    a ring whose producer is dead (pid 0), and a symbolic link to a file of ours."""
    shm = Path(SHM_DIR)
    empty, dead, link = (shm / segment_name(prefix, w) for w in ("squat-empty", "squat-dead", "squat-link"))
    target = shm / segment_name(prefix + "-target", "x")
    target.write_bytes(b"\0" * 4096)
    p = CTX.Process(target=_make_files, args=([(str(empty), 0), (str(dead), 4096)], (str(link), str(target)),
                                              OTHER_UID, OTHER_UID))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert empty.stat().st_uid == OTHER_UID and dead.stat().st_mode & 0o777 == 0o600
    return [empty, dead, link], target


def test_sweep_reads_and_removes_only_this_users_segments() -> None:
    prefix = f"sw{uuid.uuid4().hex[:8]}"
    foreign, target = _foreign_files(prefix)
    own = segment_name(prefix, "crashed")
    shm = create_segment(own, 4096)
    shm.buf.cast("q")[H_PID] = _dead_pid()
    shm.close()
    try:
        # As root (CI, a root agent): no raise; only our crashed ring goes.
        assert sweep_segments(prefix) == [own]
        assert all(os.path.lexists(p) for p in foreign) and target.exists()
        # As a non-root agent's uid: another user's 0600 file must not raise PermissionError.
        uid, gid = _nobody()
        q = CTX.Queue()
        p = CTX.Process(target=_sweep_as, args=(prefix, uid, gid, q))
        p.start()
        got = _get(q)
        p.join(10)
        assert got == ("ok", []), got
        assert all(os.path.lexists(p) for p in foreign)
    finally:
        for f in [*foreign, target]:
            if os.path.lexists(f):
                f.unlink()
        unlink_segment(own)


@pytest.mark.slow
def test_agent_starts_with_another_users_segment_in_dev_shm(mosquitto, tmp_path) -> None:
    """A real agent whose prefix another user squats in /dev/shm comes online and leaves the
    squatter's files alone (it used to exit: ``ValueError: cannot mmap an empty file``)."""
    from tests.agent_harness import AgentProc, Watcher

    device = f"lt-{uuid.uuid4().hex[:6]}"
    foreign, target = _foreign_files(device)
    w = Watcher(mosquitto.url)
    agent = None
    try:
        agent = AgentProc(mosquitto.url, device, tmp_path / "agent", w, timeout=30)
        assert agent.proc.poll() is None
        assert all(os.path.lexists(p) for p in foreign) and target.exists()
        assert "left alone 3 entries" in agent.log.read_text()
    finally:
        if agent is not None:
            agent.stop()
        w.close()
        for f in [*foreign, target]:
            if os.path.lexists(f):
                f.unlink()
