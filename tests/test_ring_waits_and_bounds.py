"""The ring's waits, wake-ups, limits and error paths, exactly (issue 25): a consumer that
waits is woken at once by a publish, a commit or a close, and not before; timeouts end waits on
time, whatever notes arrive; waiting never spins; create/attach refuse exactly what is out of
bounds; every failed reserve/commit/publish/attach leaves the ring usable; the sweep goes on past
what it leaves alone. Real shared memory and sockets; other threads or a child process play the
other end where a wait needs one.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeva.agent.dataplane.codec import MessageTooLarge
from edgeva.agent.dataplane.ring import (
    C_TOKEN,
    S_LEN,
    S_WORDS,
    RingConsumer,
    RingError,
    RingFull,
    RingProducer,
    _sock_addr,
    producer_pid,
    ring_stats,
    sweep_segments,
)
from edgeva.agent.dataplane.segment import SHM_DIR, segment_name, unlink_segment
from edgeva.schemas.message import Message
from tests.load import budget

ROOT = str(Path(__file__).resolve().parents[1])


def _tag() -> str:
    return f"{os.getpid()}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def name() -> Iterator[str]:
    n = segment_name("ringwait", _tag())
    yield n
    unlink_segment(n)


@pytest.fixture
def prod(name) -> Iterator[RingProducer]:
    p = RingProducer.create(name, 4096, nslots=4)
    yield p
    p.close()


def _later(delay: float, fn: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _in_thread(fn: Callable[[], object], timeout: float) -> tuple[bool, object]:
    """Run ``fn`` in a daemon thread: (finished within ``timeout``, its result or exception)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # the caller asserts on it
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), (out[0] if out else None)


def _note_to(c: RingConsumer) -> None:
    """A wake-up note to ``c``'s socket, as anyone on the host can send one."""
    addr = _sock_addr(c.name, f"c{c.index}", c._w[c._b + C_TOKEN])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"forged", addr)


# -- waits and wake-ups ------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1.0, None])
def test_a_waiting_get_is_woken_at_once_by_a_publish(prod, timeout) -> None:
    with RingConsumer.attach(prod.name) as c:
        t0 = time.monotonic()  # before the publisher's sleep starts: the wait lasts at least 0.1 s
        t = _later(0.1, lambda: prod.publish(Message(7), timeout=1))
        m = c.get(timeout=timeout)
        took = time.monotonic() - t0
        t.join()
        assert m is not None and m.frame_id == 7
        assert 0.1 <= took < 0.1 + budget(0.5), took  # woken by the publish, not by its timeout
        assert c.consumed == 1 and c.pending == 0


def test_a_waiting_get_is_woken_at_once_by_a_commit(name) -> None:
    with RingProducer.create(name, 256 << 10, nslots=2) as p, RingConsumer.attach(name) as c:
        big = np.arange(100_000, dtype=np.uint8)  # over SMALL_MESSAGE: reserve/commit

        def produce() -> None:
            p.publish(Message(1, arrays={"a": big}), timeout=1)

        t = _later(0.1, produce)
        t0 = time.monotonic()
        m = c.get(timeout=2.0)
        took = time.monotonic() - t0
        t.join()
        assert m is not None and np.array_equal(m.arrays["a"], big)
        assert took < 0.8, took


def test_close_wakes_a_waiting_consumer_with_end_of_stream(name) -> None:
    p = RingProducer.create(name, 4096, nslots=2)
    with RingConsumer.attach(name) as c:
        t = _later(0.1, p.close)
        t0 = time.monotonic()
        assert c.get(timeout=3.0) is None
        took = time.monotonic() - t0
        t.join()
        assert c.eof and took < 0.8, took


def test_a_timed_get_on_an_empty_ring_returns_none_on_time(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        t0 = time.monotonic()
        done, got = _in_thread(lambda: c.get(timeout=0.15), 3.0)
        took = time.monotonic() - t0
        assert done and got is None and not c.eof
        assert 0.14 <= took < 1.0, took


def test_a_stale_note_neither_ends_a_wait_early_nor_makes_it_spin(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        _note_to(c)  # pending before the wait starts: the first look finds nothing
        t = _later(0.8, lambda: prod.publish(Message(3), timeout=1))
        cpu0, t0 = time.thread_time(), time.monotonic()
        m = c.get(timeout=3.0)
        cpu, took = time.thread_time() - cpu0, time.monotonic() - t0
        t.join()
        assert m is not None and m.frame_id == 3 and took >= 0.7
        assert cpu < 0.1, cpu  # waited in select, not in a loop


def test_a_flood_of_notes_never_breaks_a_timed_wait(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        addr = _sock_addr(c.name, f"c{c.index}", c._w[c._b + C_TOKEN])
        stop = threading.Event()

        def flood() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                while not stop.is_set():
                    try:
                        s.sendto(b"!", addr)
                    except BlockingIOError:
                        time.sleep(0)

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        try:
            for _ in range(3):
                done, got = _in_thread(lambda: c.get(timeout=0.1), 3.0)
                assert done and got is None, got
        finally:
            stop.set()
            t.join()


def test_a_hand_off_goes_only_to_a_consumer_that_waits(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        t = _later(0.1, lambda: prod.publish(Message(0), timeout=1))
        assert c.get(timeout=2).frame_id == 0  # handed off while it waited
        t.join()
        c.release()
        prod.publish(Message(1), timeout=1)  # it does not wait now: the message stays pending
        assert (c.consumed, c.pending) == (1, 1)
        st = ring_stats(prod.name)
        assert (st.consumers[0].consumed, st.consumers[0].pending, st.free_slots) == (1, 1, 3)
        assert c.get(timeout=0).frame_id == 1 and c.consumed == 2


def test_reserve_without_timeout_waits_until_a_slot_frees(name) -> None:
    with RingProducer.create(name, 4096, nslots=2) as p, RingConsumer.attach(name) as c:
        for i in range(2):
            p.publish(Message(i), timeout=0)
        with pytest.raises(RingFull):
            p.reserve(timeout=0.05)
        t = _later(0.3, lambda: c.get(timeout=0))  # frame 0: its slot stays held ...
        t.join()
        t = _later(0.1, lambda: c.get(timeout=0))  # ... frame 1: frame 0's slot is free
        t0 = time.monotonic()
        done, w = _in_thread(lambda: p.reserve(), 3.0)
        took = time.monotonic() - t0
        t.join()
        assert done and not isinstance(w, BaseException), w
        assert took < 0.8, took
        p.abort()


# -- limits ------------------------------------------------------------------------------------


def test_create_refuses_exactly_what_is_out_of_bounds(name) -> None:
    for kw in ({"nslots": 1}, {"slot_size": 127}, {"max_consumers": 0}):
        args = {"slot_size": 128, "nslots": 2, "max_consumers": 1} | kw
        with pytest.raises(RingError, match="need nslots >= 2"):
            RingProducer.create(name, **args)
    with RingProducer.create(name, 128, nslots=2, max_consumers=1) as p:
        assert (p.nslots, p.slot_size, p.max_consumers) == (2, 128, 1)
    for asked, got in ((129, 192), (192, 192), (4000, 4032)):
        with RingProducer.create(name, asked, nslots=2) as p:
            assert p.slot_size == got == ring_stats(name).slot_size


def test_create_defaults_to_8_slots_for_16_consumers(name) -> None:
    cons: list[RingConsumer] = []
    with RingProducer.create(name, 4096) as p:
        assert p.nslots == 8
        try:
            cons = [RingConsumer.attach(name) for _ in range(16)]
            with pytest.raises(RingError, match="all 16 consumer entries in use"):
                RingConsumer.attach(name)
        finally:
            for c in cons:
                c.close()


def test_attach_refuses_exactly_what_is_out_of_bounds(name) -> None:
    with RingProducer.create(name, 3969, nslots=4):  # slots of 4032 B
        for depth in (0, 4):
            with pytest.raises(RingError, match="depth must be 1..3"):
                RingConsumer.attach(name, policy="drop_oldest", depth=depth)
        for depth in (1, 3):
            RingConsumer.attach(name, policy="drop_oldest", depth=depth).close()
        for slot in (3969, 4000, 4032):  # what the producer asked, rounded the same way
            RingConsumer.attach(name, slot_size=slot).close()
        for slot in (3968, 4033):
            with pytest.raises(RingError, match="4032 B slots"):
                RingConsumer.attach(name, slot_size=slot)


def test_a_truncated_segment_is_refused(name) -> None:
    p = RingProducer.create(name, 4096, nslots=4)
    full = os.path.getsize(os.path.join(SHM_DIR, name))
    p.close(unlink=False)
    os.truncate(os.path.join(SHM_DIR, name), full - 64)  # its last slot cut short
    with pytest.raises(RingError, match=f"segment is {full - 64} B, its header says {full} B"):
        RingConsumer.attach(name)


def test_a_corrupt_length_in_the_slot_table_is_a_ring_error(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        for bad in (-1, prod.slot_size + 1):
            prod.publish(Message(1), timeout=0)
            s = prod._slot_of(prod.published - 1)
            prod._w[prod._so + s * S_WORDS + S_LEN] = bad
            with pytest.raises(RingError, match="slot table corrupt"):
                c.get(timeout=0)


# -- failures leave the ring usable ------------------------------------------------------------


def test_reserve_twice_and_mismatched_commits_are_refused(name) -> None:
    with RingProducer.create(name, 4096, nslots=2) as p, RingProducer.create(name + ".x", 4096) as other:
        w = p.reserve(timeout=0)
        with pytest.raises(RingError, match="reserve\\(\\) twice"):
            p.reserve(timeout=0)
        with pytest.raises(RingError, match="without a matching reserve"):
            p.commit(other.reserve(timeout=0), Message(0))  # another ring's writer
        other.abort()
        assert p.commit(w, Message(0)) == 0
        with RingConsumer.attach(name) as c:
            p.publish(Message(1), timeout=0)
            assert c.get(timeout=0).frame_id == 1  # holds slot 0: the next reserve gets slot 1
            w = p.reserve(timeout=0)
            assert p.commit(w, Message(2)) == 2
            with pytest.raises(RingError, match="without a matching reserve"):
                p.commit(w, Message(3))  # the same writer again, nothing reserved
            assert p.published == 3
            assert [c.get(timeout=0).frame_id, c.get(timeout=0)] == [2, None]


def test_publish_during_an_open_reservation_never_takes_a_held_slot(name) -> None:
    with RingProducer.create(name, 4096, nslots=2) as p, RingConsumer.attach(name) as c:
        p.publish(Message(0), timeout=0)
        held = c.get(timeout=0)  # slot 0, nothing pending
        p.reserve(timeout=0)  # slot 1: no slot is free now
        with pytest.raises(RingError, match="reserve\\(\\) twice"):
            p.publish(Message(1), timeout=0)
        assert held.frame_id == 0 and p.published == 1 and c.pending == 0
        p.abort()


def test_a_commit_that_does_not_fit_gives_the_slot_back(prod) -> None:
    w = prod.reserve(timeout=0)
    with pytest.raises(MessageTooLarge):
        prod.commit(w, Message(0, fields={"x": "a" * 5000}))  # the header is over the slot
    assert ring_stats(prod.name).free_slots == 4
    w = prod.reserve(timeout=0)  # not "reserve() twice"
    assert prod.commit(w, Message(1)) == 0


def test_a_big_publish_that_does_not_fit_gives_the_slot_back(name) -> None:
    with RingProducer.create(name, 128 << 10, nslots=2) as p:
        a = np.zeros(100 << 10, dtype=np.uint8)
        with pytest.raises(MessageTooLarge):
            p.publish(Message(0, arrays={"a": a, "b": a}), timeout=0)
        assert ring_stats(name).free_slots == 2
        assert p.publish(Message(1, arrays={"a": a}), timeout=0) == 0  # reserve/commit again


def test_a_failed_attach_leaves_the_ring_unlocked(name) -> None:
    p = RingProducer.create(name, 4096, nslots=2, max_consumers=1)
    c = RingConsumer.attach(name)
    with pytest.raises(RingError, match="all 1 consumer entries in use") as failed:
        RingConsumer.attach(name)
    # The exception is still referenced (as by a caller that logs it): whatever the failed
    # attach opened is alive, and it must hold no lock on the ring.
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(p.publish(Message(5), timeout=0)), daemon=True)
    t.start()
    t.join(2.0)
    if t.is_alive():  # the lock is held for good: closing c or p would block too
        pytest.fail("publish blocked on the lock of a failed attach")
    del failed
    assert out == [0] and c.get(timeout=0).frame_id == 5
    c.close()
    p.close()


_WAITER = """
import sys
sys.path.insert(0, {root!r})
from edgeva.agent.dataplane.ring import RingConsumer
c = RingConsumer.attach({name!r})
print("attached", flush=True)
c.get()
"""


def test_a_waiting_consumer_killed_costs_the_producer_nothing(prod) -> None:
    code = _WAITER.format(root=ROOT, name=prod.name)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "attached\n"
        time.sleep(0.3)  # in get(), flagged waiting
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert prod.publish(Message(0), timeout=0) == 0  # its wake-up is refused: not an error
    assert prod.reap_dead() == 1 and ring_stats(prod.name).free_slots == 4


def test_closing_under_held_views_closes_no_other_descriptor(prod) -> None:
    refill = None
    try:
        os.fstat(0)
    except OSError:
        refill = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor: 0
    try:
        c = RingConsumer.attach(prod.name)
        prod.publish(Message(0, arrays={"a": np.full(16, 3, dtype=np.uint8)}), timeout=0)
        m = c.get(timeout=0)
        c.close()  # m's arrays still view the slot: the mapping stays until they go
        del c
        gc.collect()
        os.fstat(0)  # descriptor 0 (not the ring's) is still open
        assert int(m.arrays["a"].sum()) == 48
    finally:
        try:
            os.fstat(0)
        except OSError:
            os.open(os.devnull, os.O_RDONLY)
        if refill is not None:
            os.close(refill)


# -- reading segments by name ------------------------------------------------------------------


def _shm_file(name: str, size: int, pid: int = 0) -> None:
    data = bytearray(size)
    if size >= 48:
        struct.pack_into("<q", data, 5 * 8, pid)  # H_PID
    with open(os.path.join(SHM_DIR, name), "wb") as f:
        f.write(data)


def test_producer_pid_reads_only_a_whole_header() -> None:
    tag = _tag()
    names = {size: segment_name("ringwait", tag, str(size)) for size in (8, 120, 128)}
    try:
        for size, n in names.items():
            _shm_file(n, size, pid=4242)
        assert producer_pid(names[128]) == 4242
        assert producer_pid(names[120]) == 0
        assert producer_pid(names[8]) == 0
        assert producer_pid(segment_name("ringwait", tag, "none")) is None
    finally:
        for n in names.values():
            unlink_segment(n)


def test_the_sweep_goes_on_past_entries_it_leaves_alone() -> None:
    prefix = f"sw{_tag()}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    empty, huge, link, ring = (segment_name(prefix, x) for x in ("a-empty", "b-huge", "c-link", "d-dead"))
    _shm_file(empty, 0)  # mmap refuses an empty file (ValueError)
    with open(os.path.join(SHM_DIR, huge), "wb") as f:
        f.truncate(1 << 50)  # no address space for it (OSError)
    os.symlink("/etc/hostname", os.path.join(SHM_DIR, link))  # not a regular file of ours
    _shm_file(ring, 128, pid=dead_pid)
    try:
        assert sweep_segments(prefix) == [ring]
        assert not os.path.exists(os.path.join(SHM_DIR, ring))
        assert os.path.exists(os.path.join(SHM_DIR, empty)) and os.path.islink(os.path.join(SHM_DIR, link))
    finally:
        for n in (empty, huge, link, ring):
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except FileNotFoundError:
                pass
