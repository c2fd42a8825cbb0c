"""The ring's accounting per policy, without the runner (issue 25): pending depth, drops,
consumed counts, free slots and hand-offs, exactly, step by step. Real shared memory; the
producer and consumers live in this process (a ring object belongs to one thread at a time, so
each end here is used by one thread), which makes every count deterministic. A ``drop_oldest``
depth off by one once passed ``test_ring.py`` and ``test_ring_properties.py`` and was caught
only by the end-to-end ``test_overload.py``."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from edgeva.agent.dataplane.ring import (
    C_WAITING,
    C_WORDS,
    H_PWAIT,
    RingConsumer,
    RingError,
    RingFull,
    RingProducer,
    ring_stats,
)
from edgeva.agent.dataplane.segment import segment_name
from edgeva.schemas.message import Message

NSLOTS = 6


@pytest.fixture
def prod():
    p = RingProducer.create(segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8]), 4096, nslots=NSLOTS)
    yield p
    p.close()


def _pub(prod: RingProducer, n: int) -> list[int]:
    return [prod.publish(Message(prod.published), timeout=0) for _ in range(n)]


def _stats(prod: RingProducer, cons: RingConsumer):
    st = ring_stats(prod.name)
    return st, next(c for c in st.consumers if c.index == cons.index)


@pytest.mark.parametrize("depth", range(1, NSLOTS))
def test_drop_oldest_keeps_exactly_depth_pending_and_counts_every_drop(prod, depth: int) -> None:
    with RingConsumer.attach(prod.name, policy="drop_oldest", depth=depth) as c:
        for n in range(1, 3 * NSLOTS):
            _pub(prod, 1)
            assert c.pending == min(n, depth), (n, depth)
            assert c.dropped == max(0, n - depth)
            assert c.consumed == 0
            st, cs = _stats(prod, c)
            assert (cs.pending, cs.dropped, cs.policy) == (c.pending, c.dropped, "drop_oldest")
            # a slot per pending message, the others free: skipped messages are not pinned
            assert st.free_slots == NSLOTS - c.pending
        total = prod.published
        got = [c.get(timeout=0).frame_id for _ in range(depth)]
        assert got == list(range(total - depth, total))  # the newest, in order
        assert c.get(timeout=0) is None
        assert c.consumed == depth and c.dropped == total - depth and c.pending == 0
        assert c.consumed + c.dropped == total  # every message either read or counted


def test_drop_oldest_makes_room_when_the_producer_needs_a_slot(prod) -> None:
    # depth nslots-1 plus the one it holds: every slot is this consumer's; the producer takes
    # the oldest pending one (counted), never the held one.
    with RingConsumer.attach(prod.name, policy="drop_oldest") as c:
        _pub(prod, 1)
        held = c.get(timeout=0)
        assert held.frame_id == 0 and c.consumed == 1
        _pub(prod, NSLOTS - 1)
        assert ring_stats(prod.name).free_slots == 0 and c.dropped == 0 and c.pending == NSLOTS - 1
        _pub(prod, 1)  # no free slot: frame 1 is skipped for it
        assert c.dropped == 1 and c.pending == NSLOTS - 1 and held.frame_id == 0
        assert [c.get(timeout=0).frame_id for _ in range(NSLOTS - 1)] == list(range(2, NSLOTS + 1))
        assert c.consumed == NSLOTS and c.consumed + c.dropped == prod.published


def test_drop_for_space_skips_the_oldest_for_every_consumer_wanting_it(prod) -> None:
    with RingConsumer.attach(prod.name, policy="drop_oldest") as lossy, \
            RingConsumer.attach(prod.name, policy="drop_oldest") as holder:
        _pub(prod, 1)
        assert holder.get(timeout=0).frame_id == 0  # holder pins frame 0's slot
        _pub(prod, NSLOTS - 1)  # frames 1..5: lossy is past its depth, frame 0 skipped for it
        assert (lossy.dropped, lossy.pending) == (1, NSLOTS - 1)
        assert (holder.dropped, holder.pending) == (0, NSLOTS - 1)
        assert ring_stats(prod.name).free_slots == 0
        _pub(prod, 1)  # frame 6 needs a slot: frame 1, wanted by both, is skipped for both
        assert (lossy.dropped, lossy.pending) == (2, NSLOTS - 1)
        assert (holder.dropped, holder.pending) == (1, NSLOTS - 1)
        assert holder.get(timeout=0).frame_id == 2 and lossy.get(timeout=0).frame_id == 2
        for c in (lossy, holder):
            assert c.consumed + c.dropped + c.pending == prod.published


def test_block_never_drops_and_the_producer_waits_for_it(prod) -> None:
    with RingConsumer.attach(prod.name, policy="block") as c:
        _pub(prod, NSLOTS)
        assert c.pending == NSLOTS and ring_stats(prod.name).free_slots == 0
        with pytest.raises(RingFull):
            _pub(prod, 1)
        assert c.dropped == 0 and c.pending == NSLOTS and prod.published == NSLOTS
        assert c.get(timeout=0).frame_id == 0  # holds slot 0: still nothing free
        assert ring_stats(prod.name).free_slots == 0
        with pytest.raises(RingFull):
            _pub(prod, 1)
        assert c.get(timeout=0).frame_id == 1  # releases frame 0's slot
        assert ring_stats(prod.name).free_slots == 1
        _pub(prod, 1)
        got = [c.get(timeout=0).frame_id for _ in range(NSLOTS - 1)]
        assert got == list(range(2, NSLOTS + 1))
        assert c.consumed == NSLOTS + 1 and c.dropped == 0 and c.pending == 0
        c.release()
        assert ring_stats(prod.name).free_slots == NSLOTS


def test_block_and_drop_oldest_side_by_side(prod) -> None:
    with RingConsumer.attach(prod.name, policy="block") as slow, \
            RingConsumer.attach(prod.name, policy="drop_oldest", depth=2) as live:
        _pub(prod, 4)
        assert (slow.pending, slow.dropped) == (4, 0)
        assert (live.pending, live.dropped) == (2, 2)
        # the block consumer pins the slots: the drop_oldest one's skips freed none of them
        assert ring_stats(prod.name).free_slots == NSLOTS - 4
        assert [live.get(timeout=0).frame_id for _ in range(2)] == [2, 3]
        assert [slow.get(timeout=0).frame_id for _ in range(4)] == [0, 1, 2, 3]
        assert live.consumed == 2 and slow.consumed == 4


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_a_waiting_consumer_is_handed_the_message_and_counts_it_once(prod, policy: str) -> None:
    with RingConsumer.attach(prod.name, policy=policy, depth=2) as c:
        got: list = []
        t = threading.Thread(target=lambda: got.append(c.get(timeout=10)))
        t.start()
        # wait until it sleeps on its socket (its waiting flag is set under the lock)
        for _ in range(500):
            if prod._w[c._b + C_WAITING]:
                break
            threading.Event().wait(0.01)
        else:
            pytest.fail("consumer never waited")
        _pub(prod, 1)
        # handed off under the producer's lock: counted consumed, nothing pending
        assert c.consumed == 1 and c.pending == 0 and c.dropped == 0
        t.join(10)
        assert got and got[0].frame_id == 0
        _pub(prod, 1)
        assert c.get(timeout=0).frame_id == 1 and c.consumed == 2 and c.pending == 0
        assert c.get(timeout=0) is None and c.consumed == 2


def test_stats_report_each_consumer_under_its_own_index(prod) -> None:
    with RingConsumer.attach(prod.name, policy="block") as a, \
            RingConsumer.attach(prod.name, policy="drop_oldest", depth=1) as b, \
            RingConsumer.attach(prod.name, policy="drop_oldest", depth=3) as c:
        assert (a.index, b.index, c.index) == (0, 1, 2)
        _pub(prod, 4)
        assert b.get(timeout=0).frame_id == 3
        assert [c.get(timeout=0).frame_id for _ in range(2)] == [1, 2]
        st = ring_stats(prod.name)
        got = {s.index: (s.pid, s.policy, s.pending, s.consumed, s.dropped) for s in st.consumers}
        assert got == {
            0: (os.getpid(), "block", 4, 0, 0),
            1: (os.getpid(), "drop_oldest", 0, 1, 3),
            2: (os.getpid(), "drop_oldest", 1, 2, 1),
        }
        for cons in (a, b, c):
            assert (cons.pending, cons.consumed, cons.dropped) == got[cons.index][2:]
        # frames 0..3 pinned by a (pending), b holds 3, c holds 2: two slots free
        assert st.published == 4 and st.free_slots == NSLOTS - 4
        b.close()  # detaching index 1 leaves 0 and 2 as they were
        assert {s.index for s in ring_stats(prod.name).consumers} == {0, 2}
        _pub(prod, 1)
        assert (a.pending, c.pending, c.dropped) == (5, 2, 1)


BIG = 70_000  # over SMALL_MESSAGE: published through reserve/commit, written outside the lock


def test_big_messages_go_through_reserve_and_commit_slot_by_slot() -> None:
    import numpy as np

    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, BIG + 4096, nslots=3) as prod, \
            RingConsumer.attach(name, policy="block", slot_size=BIG + 4096) as c, \
            RingConsumer.attach(name, policy="block") as d:
        for i in range(3):
            prod.publish(Message(i, arrays={"a": np.full(BIG, i + 1, np.uint8)}), timeout=0)
        assert ring_stats(name).free_slots == 0
        for i in range(3):
            m = c.get(timeout=0)
            assert m.frame_id == i and int(m.arrays["a"][0]) == i + 1 and m.arrays["a"].size == BIG
        c.release()
        assert ring_stats(name).free_slots == 0  # d still has all three pending
        assert [d.get(timeout=0).frame_id for _ in range(3)] == [0, 1, 2]
        d.release()
        assert ring_stats(name).free_slots == 3
        w = prod.reserve(timeout=0)  # reserved: not free, not visible
        assert ring_stats(name).free_slots == 2 and c.get(timeout=0) is None
        prod.abort()
        assert ring_stats(name).free_slots == 3
        w = prod.reserve(timeout=0)
        w.alloc("a", (4,))[:] = 9
        assert prod.commit(w, Message(7)) == 3
        m = d.get(timeout=0)
        assert m.frame_id == 7 and m.arrays["a"].tolist() == [9, 9, 9, 9]


def test_a_consumer_may_name_the_slot_size_the_producer_asked_for(prod) -> None:
    # slots are rounded up to 64 B: 4096 stays, 4000 asked is 4032 made
    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 4000) as p2:
        RingConsumer.attach(name, slot_size=4000).close()
        RingConsumer.attach(name, slot_size=4032).close()
        assert p2.slot_size == 4032
    RingConsumer.attach(prod.name, slot_size=4096).close()


def _attach_and_wait(name: str, ready) -> None:
    RingConsumer.attach(name, policy="block")
    ready.set()
    time.sleep(60)  # until SIGKILLed


def test_the_producer_reaps_a_dead_consumer_by_its_own_entry(prod) -> None:
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("spawn")
    with RingConsumer.attach(prod.name, policy="drop_oldest", depth=2) as live:
        ready = ctx.Event()
        child = ctx.Process(target=_attach_and_wait, args=(prod.name, ready))
        child.start()
        try:
            assert ready.wait(30)
            assert {s.index: s.pid for s in ring_stats(prod.name).consumers} == {0: os.getpid(), 1: child.pid}
            assert prod.reap_dead() == 0  # both alive
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            assert prod.reap_dead() == 1
            assert [s.index for s in ring_stats(prod.name).consumers] == [live.index]
            _pub(prod, NSLOTS + 2)  # nothing pinned by the dead one
            assert live.pending == 2 and live.dropped == NSLOTS
        finally:
            if child.is_alive():
                child.kill()
            child.join(10)


# -- edges of the bookkeeping (kills `make mutants` survivors of agent/dataplane/ring.py) ----------
def test_reserve_and_abort_mark_the_slot_they_took(prod) -> None:
    with RingConsumer.attach(prod.name, policy="block") as c:
        _pub(prod, 1)  # slot 0 pinned by c's pending message
        w = prod.reserve(timeout=0)  # slot 1
        assert ring_stats(prod.name).free_slots == NSLOTS - 2
        with pytest.raises(RingError, match="reserve\\(\\) twice"):
            prod.reserve(timeout=0)
        prod.abort()
        assert ring_stats(prod.name).free_slots == NSLOTS - 1
        w = prod.reserve(timeout=0)
        prod.commit(w, Message(1))
        assert [c.get(timeout=0).frame_id for _ in range(2)] == [0, 1]
    w = prod.reserve(timeout=0)  # slot 0 this time: reserving twice is still refused
    with pytest.raises(RingError, match="reserve\\(\\) twice"):
        prod.reserve(timeout=0)
    prod.abort()


def test_closing_a_consumer_that_holds_slot_0_frees_it(prod) -> None:
    c = RingConsumer.attach(prod.name, policy="block")
    _pub(prod, 2)
    assert c.get(timeout=0).frame_id == 0  # holds slot 0, frame 1 pending
    c.close()
    assert ring_stats(prod.name).free_slots == NSLOTS and ring_stats(prod.name).consumers == []


@pytest.mark.parametrize("index", [0, 1])
def test_end_of_stream_wakes_a_waiting_consumer_at_once(index: int) -> None:
    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    prod = RingProducer.create(name, 4096, nslots=4)
    other = RingConsumer.attach(name) if index else None
    with RingConsumer.attach(name, policy="drop_oldest") as c:
        assert c.index == index
        got: list = []
        t = threading.Thread(target=lambda: got.append((c.get(timeout=20), time.monotonic())))
        t.start()
        for _ in range(500):
            if prod._w[c._b + C_WAITING]:
                break
            time.sleep(0.01)
        t0 = time.monotonic()
        prod.close()
        t.join(20)
        assert got and got[0][0] is None and c.eof and got[0][1] - t0 < 5.0, "not woken by the close"
    if other is not None:
        other.close()


def test_get_with_a_timeout_returns_after_it(prod) -> None:
    with RingConsumer.attach(prod.name) as c:
        t0 = time.monotonic()
        assert c.get(timeout=0.3) is None
        assert 0.25 <= time.monotonic() - t0 < 3.0


def test_the_smallest_ring_and_the_deepest_consumer() -> None:
    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 128, nslots=2, max_consumers=1) as p:
        assert p.slot_size == 128
        with pytest.raises(RingError, match="depth must be 1..1"):
            RingConsumer.attach(name, policy="drop_oldest", depth=2)
        with RingConsumer.attach(name, policy="drop_oldest", depth=1) as c:
            with pytest.raises(RingError, match="all 1 consumer entries in use"):
                RingConsumer.attach(name)
            _pub(p, 3)
            assert c.pending == 1 and c.dropped == 2


def test_a_message_filling_its_slot_to_the_last_byte_is_read() -> None:
    from edgeva.agent.dataplane.codec import encode

    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 4096, nslots=2) as p, RingConsumer.attach(name) as c:
        pad = next(k for k in range(4096) if len(encode(Message(1, fields={"pad": "x" * k}))) == 4096)
        p.publish(Message(1, fields={"pad": "x" * pad}), timeout=0)
        m = c.get(timeout=0)
        assert m.frame_id == 1 and len(m.fields["pad"]) == pad


def test_a_segment_shorter_than_its_header_says_is_refused(prod) -> None:
    import mmap

    from edgeva.agent.dataplane.ring import MAGIC, VERSION, producer_pid
    from edgeva.agent.dataplane.segment import create_segment

    with pytest.raises(RingError, match="its header says"):
        os.truncate(f"/dev/shm/{prod.name}", os.path.getsize(f"/dev/shm/{prod.name}") - mmap.PAGESIZE)
        RingConsumer.attach(prod.name)
    for size, words in ((64, [MAGIC, VERSION, 2, 128, 1, os.getpid()]), (128, [MAGIC, VERSION, 2, 128, 1, os.getpid()])):
        seg = create_segment(segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8]), size)
        try:
            w = seg.buf.cast("q")
            for i, v in enumerate(words):
                w[i] = v
            del w
            name = seg.name.lstrip("/")
            with pytest.raises(RingError, match="not an edgeva ring" if size < 128 else "its header says"):
                RingConsumer.attach(name)
            if size < 128:
                assert producer_pid(name) == 0  # too short to hold a pid
        finally:
            seg.close()
            seg.unlink()


def test_a_corrupt_hand_off_slot_is_an_error_not_a_read_out_of_the_ring(prod) -> None:
    from edgeva.agent.dataplane.ring import C_HELD

    with RingConsumer.attach(prod.name) as c:
        prod._w[c._b + C_HELD] = NSLOTS  # one past the last slot, as a stray write would leave it
        with pytest.raises(RingError, match="slot table corrupt"):
            c.get(timeout=0)


@pytest.mark.parametrize("how", ["get", "release", "close"])
def test_a_blocked_producer_is_woken_as_soon_as_a_slot_frees(how: str) -> None:
    # The producer's own wait polls every second for dead consumers: a wake-up must come well
    # before that from the consumer that freed the slot.
    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 4096, nslots=2) as p:
        c = RingConsumer.attach(name, policy="block")
        _pub(p, 2)
        assert c.get(timeout=0).frame_id == 0  # holds slot 0, frame 1 pending: ring full
        done: list[float] = []
        t = threading.Thread(target=lambda: (p.publish(Message(2), timeout=10), done.append(time.monotonic())))
        t.start()
        for _ in range(500):  # until the producer waits (its flag is set under the lock)
            if p._w[H_PWAIT]:
                break
            time.sleep(0.01)
        time.sleep(0.05)
        t0 = time.monotonic()
        if how == "get":
            assert c.get(timeout=0).frame_id == 1  # releases slot 0
        elif how == "release":
            c.release()
        else:
            c.close()
        t.join(10)
        assert done and done[0] - t0 < 0.5, f"woken after {done[0] - t0 if done else None} s"
        if how != "close":
            c.close()


def test_a_forged_wake_up_neither_ends_a_get_early_nor_makes_it_spin(prod) -> None:
    import socket

    from edgeva.agent.dataplane.ring import C_TOKEN, _sock_addr

    with RingConsumer.attach(prod.name) as c:
        addr = _sock_addr(prod.name, f"c{c.index}", prod._w[c._b + C_TOKEN])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        threading.Timer(0.2, lambda: s.sendto(b"look", addr)).start()
        t0, cpu0 = time.monotonic(), time.process_time()
        assert c.get(timeout=0.8) is None
        assert time.monotonic() - t0 >= 0.75, "a note with nothing behind it ended the wait"
        # the note was drained: the next wait sleeps instead of finding it again and again
        cpu0 = time.process_time()
        assert c.get(timeout=0.5) is None
        assert time.process_time() - cpu0 < 0.2
        s.close()


def test_closing_the_producer_removes_the_ring_once(prod) -> None:
    path = f"/dev/shm/{prod.name}"
    assert os.path.exists(path)
    prod.close()
    assert not os.path.exists(path)
    prod.close()  # twice: nothing more happens


def test_a_consumer_closed_while_its_arrays_live_closes_only_its_own_descriptor() -> None:
    import gc

    import numpy as np

    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 8192) as p:
        c = RingConsumer.attach(name)
        p.publish(Message(1, arrays={"a": np.arange(16, dtype=np.uint8)}), timeout=0)
        view = c.get(timeout=0).arrays["a"]
        c.close()  # the view still maps the segment: unmapped later
        assert view.tolist() == list(range(16))
        del view, c
        gc.collect()
        os.fstat(0)  # stdin, stdout, stderr still open (a stray close(0 or 1) would end them)
        os.fstat(1)
        os.fstat(2)


def test_bad_sizes_and_misuse_are_refused_and_leave_the_ring_usable(prod) -> None:
    import numpy as np

    from edgeva.agent.dataplane.codec import MessageTooLarge
    from edgeva.agent.dataplane.ring import producer_pid

    for kw in ({"nslots": 1}, {"slot_size": 127}, {"max_consumers": 0}):
        args = {"slot_size": 4096, "nslots": 4, "max_consumers": 4, **kw}
        with pytest.raises(RingError, match="need nslots >= 2, slot_size >= 128, max_consumers >= 1"):
            RingProducer.create(segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8]), **args)
    assert producer_pid(segment_name(f"acct{os.getpid()}", "nosuchring")) is None
    with pytest.raises(RingError, match="commit\\(\\) without a matching reserve"):
        prod.commit(prod._writers[0], Message(0))
    with RingConsumer.attach(prod.name) as c:
        # a big array that does not fit (the reserve path) and a header that does not fit
        with pytest.raises(MessageTooLarge):
            prod.publish(Message(0, arrays={"a": np.zeros(70_000, np.uint8)}), timeout=0)
        w = prod.reserve(timeout=0)
        with pytest.raises(MessageTooLarge):
            prod.commit(w, Message(0, fields={"pad": "x" * 5000}))
        assert ring_stats(prod.name).free_slots == NSLOTS  # both slots given back
        _pub(prod, 1)
        assert c.get(timeout=0).frame_id == 0 and prod.published == 1


def _wait_in_get(name: str, ready) -> None:
    c = RingConsumer.attach(name)
    ready.set()
    c.get(timeout=60)


def test_a_consumer_killed_while_it_waits_costs_the_producer_nothing(prod) -> None:
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_wait_in_get, args=(prod.name, ready))
    child.start()
    try:
        assert ready.wait(30)
        for _ in range(500):  # until it sleeps in get
            if any(prod._w[prod._co + c * C_WORDS + C_WAITING] for c in range(4)):
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        _pub(prod, 1)  # its wake-up socket is gone: the note is dropped, not raised
        assert prod.reap_dead() == 1 and ring_stats(prod.name).consumers == []
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


def test_a_ring_made_with_the_defaults_takes_16_consumers() -> None:
    name = segment_name(f"acct{os.getpid()}", uuid.uuid4().hex[:8])
    with RingProducer.create(name, 4096) as p:  # the runner's output rings use these defaults
        cons = [RingConsumer.attach(name) for _ in range(16)]
        try:
            with pytest.raises(RingError, match="all 16 consumer entries in use"):
                RingConsumer.attach(name)
            assert ring_stats(name).nslots == 8 and p.max_consumers == 16
        finally:
            for c in cons:
                c.close()
