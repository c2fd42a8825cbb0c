"""The ring's accounting per policy, without the runner (issue 25): pending depth, drops,
consumed counts, free slots and hand-offs, exactly, step by step. Real shared memory; the
producer and consumers live in this process (a ring object belongs to one thread at a time, so
each end here is used by one thread), which makes every count deterministic. A ``drop_oldest``
depth off by one once passed ``test_ring.py`` and ``test_ring_properties.py`` and was caught
only by the end-to-end ``test_overload.py``."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from agent.dataplane.ring import C_WAITING, RingConsumer, RingFull, RingProducer, ring_stats
from agent.dataplane.segment import segment_name
from schemas.message import Message

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
