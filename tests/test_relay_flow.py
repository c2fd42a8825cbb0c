"""The ring<->link relays (agent/dataplane/relay.py), fast and exact: real rings, real pynng
links on an ipc address, both ends in this process (issue 25).

What is pinned: the link->ring fast path (no backlog, no pause), the backlog's exact bounds
(messages, 16 MiB, 4 slots' bytes), pause once per episode and resume only when the backlog is
empty, ``reserve_timeout`` drops, a stuck stream never holding up the link's dispatch thread,
``add_stream``, ``close`` (handlers gone, thread gone, ring unlinked, consumers see end of
stream), and for ring->link: order, end of stream, ``retarget``, send timeouts (lossless),
oversized messages, a closed link, ``stop``. The sender of most link->ring tests reads its
flow control only when the test says (``tx.recv(0)``: a link in receive mode hears pauses only
in ``recv``): it is a peer that does not honour pauses until asked, which makes every count
deterministic.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeva.agent.dataplane import relay as relay_mod
from edgeva.agent.dataplane.codec import encode
from edgeva.agent.dataplane.link import Link, Received
from edgeva.agent.dataplane.relay import LinkToRing, RingToLink
from edgeva.agent.dataplane.ring import RingConsumer, RingError, RingProducer, ring_stats
from edgeva.agent.dataplane.segment import SHM_DIR, segment_name, unlink_segment
from edgeva.schemas.message import Message

ROOT = str(Path(__file__).resolve().parents[1])
ENV = 64  # a link envelope for a stream name of up to 32 bytes
TS = 1_700_000_000_000_000_000


def _until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _msg(i: int, nbytes: int = 256) -> Message:
    """Content that differs per frame, so a mix-up or a missing copy shows."""
    a = ((np.arange(nbytes, dtype=np.uint32) * 13 + i) % 251).astype(np.uint8)
    return Message(i, "cam", TS, fields={"i": i}, arrays={"frame": a})


def _check(m: Message, i: int) -> None:
    assert m.frame_id == i and m.fields == {"i": i}
    assert np.array_equal(m.arrays["frame"], _msg(i, m.arrays["frame"].size).arrays["frame"])


def _sized(i: int, total: int) -> Message:
    """A message whose nng message (envelope + encoding) is exactly ``total`` bytes."""
    a = np.full((total - ENV - 64 - 256) // 64 * 64, i % 251, dtype=np.uint8)
    base = len(encode(Message(i, "cam", TS, fields={"p": b""}, arrays={"frame": a})))
    for k in range(max(0, total - ENV - base - 2), total - ENV - base + 1):
        m = Message(i, "cam", TS, fields={"p": b"x" * k}, arrays={"frame": a})
        if ENV + len(encode(m)) == total:
            return m
    raise AssertionError(f"no padding gives {total} B")


@pytest.fixture
def pair() -> Iterator[tuple[Link, Link]]:
    """(tx, rx): a dialer and a listener, connected over ipc."""
    path = f"/tmp/evrelay-{_tag()}.ipc"
    rx = Link.listen(f"ipc://{path}", name="rx")
    tx = Link.dial(f"ipc://{path}", name="tx")
    try:
        assert tx.wait_connected(5) and rx.wait_connected(5)
        yield tx, rx
    finally:
        _close_both(tx, rx)
        if os.path.exists(path):
            os.unlink(path)


def _close_both(tx: Link, rx: Link | None) -> None:
    """Close the dialer, then the listener once it has seen the dialer go: closing a listener
    while nng still reports the peer's pipe going aborted the process (SIGABRT in nng), now and
    then under load."""
    tx.close(drain=0, linger=0)
    if rx is not None:
        _until(lambda: not rx.connected, 3.0)
        rx.close(drain=0, linger=0)


def _deaf(tx: Link) -> Link:
    """From now on ``tx`` reads its peer's flow control only in ``tx.recv``."""
    assert tx.recv(timeout=0) is None
    return tx


def _paused(tx: Link) -> list[str]:
    """What the peer asked ``tx`` to pause, after reading the flow control that arrived."""
    assert tx.recv(timeout=0.05) is None
    return tx.stats()["paused_by_peer"]


@pytest.fixture
def ring_name() -> Iterator[str]:
    name = segment_name("relayflow", _tag())
    yield name
    unlink_segment(name)


def _l2r(rx: Link, stream: str, name: str, **kw) -> LinkToRing:
    return LinkToRing(rx, stream, name, **kw)


def _stats(r: LinkToRing) -> tuple[int, int, int, int, int]:
    s = r.stats()
    return s["published"], s["backlogged"], s["backlog"], s["dropped"], s["too_large"]


def _settles(r: LinkToRing, want: tuple[int, int, int, int, int]) -> None:
    """(published, backlogged, backlog, dropped, too_large) reach ``want``: a consumer can be
    woken by a commit before the relay counts it, so counts are awaited, not sampled."""
    assert _until(lambda: _stats(r) == want, 3.0), _stats(r)


# -- link -> ring ------------------------------------------------------------------------------


def test_free_slots_take_messages_straight_in_no_backlog_no_pause(pair, ring_name) -> None:
    tx, rx = pair
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=8)
    try:
        with RingConsumer.attach(ring_name) as c:  # attached, not reading: 5 < 8 slots
            for i in range(5):
                tx.send("s", _msg(i), timeout=2)
            assert _until(lambda: relay.published == 5)
            _settles(relay, (5, 0, 0, 0, 0))
            assert rx.pauses_sent == 0
            for i in range(5):
                _check(c.get(timeout=1), i)
            assert c.get(timeout=0) is None
    finally:
        relay.close()


def test_a_full_ring_backlogs_pauses_once_and_resumes_only_when_drained(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        for i in range(5):
            tx.send("s", _msg(i), timeout=2)
        assert _until(lambda: relay.backlogged == 3)
        time.sleep(0.3)  # the relay's thread has waited for a slot (RingFull) at least once
        _settles(relay, (2, 3, 3, 0, 0))
        assert rx.pauses_sent == 1  # one pause for the episode, not one per message
        assert _paused(tx) == ["s"] and tx.pauses_received == 1
        _check(c.get(timeout=1), 0)
        _check(c.get(timeout=1), 1)  # frees frame 0's slot: frame 2 goes in
        assert _until(lambda: relay.published == 3)
        time.sleep(0.05)
        assert relay.stats()["backlog"] == 2 and _paused(tx) == ["s"]  # not resumed early
        for i in range(2, 5):
            _check(c.get(timeout=2), i)
        assert _until(lambda: relay.stats()["backlog"] == 0)
        assert _until(lambda: _paused(tx) == [])
        _settles(relay, (5, 3, 0, 0, 0))
        assert rx.pauses_sent == 1
        # caught up: the next messages go straight in again, no new pause
        for i in range(5, 7):
            tx.send("s", _msg(i), timeout=2)
            _check(c.get(timeout=2), i)
        _settles(relay, (7, 3, 0, 0, 0))
        assert rx.pauses_sent == 1
        c.close()
    finally:
        relay.close()


def test_a_paused_sender_waits_and_loses_nothing(pair, ring_name) -> None:
    tx, rx = pair  # honours pauses: its sends wait, as for a full queue
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        for i in range(3):
            tx.send("s", _msg(i), timeout=2)
        assert _until(lambda: tx.stats()["paused_by_peer"] == ["s"])
        sent, t0 = 3, time.monotonic()
        try:
            while time.monotonic() - t0 < 2.0:
                tx.send("s", _msg(sent), timeout=0.3)
                sent += 1
        except TimeoutError:
            pass
        assert sent < 10 and relay.dropped == 0  # held back at the sender, not dropped
        got = []
        while len(got) < sent:
            m = c.get(timeout=2)
            assert m is not None, got
            _check(m, len(got))
            got.append(m.frame_id)
        assert _until(lambda: tx.stats()["paused_by_peer"] == [])
        tx.send("s", _msg(sent), timeout=2)
        _check(c.get(timeout=2), sent)
        assert _until(lambda: relay.published == sent + 1) and relay.dropped == 0
        c.close()
    finally:
        relay.close()


def test_the_backlog_holds_exactly_256_messages(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        n = 2 + relay_mod.BACKLOG_MAX + 3
        for i in range(n):
            tx.send("s", _msg(i, 64), timeout=2)
        assert _until(lambda: relay.published + relay.backlogged + relay.dropped == n)
        _settles(relay, (2, 256, 256, 3, 0))
        got = [c.get(timeout=2).frame_id for _ in range(258)]
        assert got == list(range(258))  # the newest three were dropped, the rest in order
        assert c.get(timeout=0.3) is None
        c.close()
    finally:
        relay.close()


def test_the_backlog_holds_exactly_16_mib(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    size = 128 << 10  # 128 such messages are 16 MiB exactly: fewer than 256, so bytes bind
    relay = _l2r(rx, "s", ring_name, slot_size=256 << 10, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        for i in range(2 + 128 + 2):
            tx.send("s", _sized(i, size), timeout=5)
        assert _until(lambda: relay.published + relay.backlogged + relay.dropped == 132)
        _settles(relay, (2, 128, 128, 2, 0))
        for i in range(130):
            m = c.get(timeout=2)
            assert m is not None and m.frame_id == i and m.arrays["frame"][0] == i % 251
        assert c.get(timeout=0.3) is None
        c.close()
    finally:
        relay.close()


def test_the_backlog_holds_four_slots_worth_when_that_is_more(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    slot = 5 << 20  # 4 slots: 20 MiB; 19 messages of 1 MiB and one of 1 MiB + 1 B go one byte over
    relay = _l2r(rx, "s", ring_name, slot_size=slot, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)  # attached, never reads
        for i in range(2):
            tx.send("s", _msg(i), timeout=2)
        for i in range(2, 21):
            tx.send("s", _sized(i, 1 << 20), timeout=5)
        tx.send("s", _sized(21, (1 << 20) + 1), timeout=5)  # 20 MiB + 1 B: over by one byte
        assert _until(lambda: relay.published + relay.backlogged + relay.dropped == 22)
        _settles(relay, (2, 19, 19, 1, 0))
        c.close()
    finally:
        relay.close()


def test_reserve_timeout_drops_each_message_after_that_long(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2, reserve_timeout=0.4)
    try:
        c = RingConsumer.attach(ring_name)
        for i in range(5):
            tx.send("s", _msg(i), timeout=2)
        assert _until(lambda: relay.backlogged >= 1)
        t0 = time.monotonic()
        assert _until(lambda: relay.dropped == 3, 4.0)
        took = time.monotonic() - t0
        # three messages, each dropped after two 0.2 s waits for a slot
        assert 0.95 <= took <= 1.65, took
        _settles(relay, (2, 3, 0, 3, 0))
        assert [c.get(timeout=1).frame_id for _ in range(2)] == [0, 1]
        assert c.get(timeout=0.1) is None
        c.close()
    finally:
        relay.close()


def test_a_stuck_stream_never_holds_up_the_others(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    live_name = ring_name + ".live"
    stuck = _l2r(rx, "stuck", ring_name, slot_size=4096, nslots=2)
    live = _l2r(rx, "live", live_name, slot_size=4096, nslots=4)
    try:
        sc = RingConsumer.attach(ring_name)  # never reads
        lc = RingConsumer.attach(live_name)
        for i in range(2):
            tx.send("stuck", _msg(i), timeout=2)
        assert _until(lambda: stuck.published == 2)
        t0 = time.monotonic()
        tx.send("stuck", _msg(2), timeout=2)  # the ring is full: backlogged at once
        tx.send("live", _msg(0), timeout=2)
        _check(lc.get(timeout=2), 0)
        assert time.monotonic() - t0 < 0.5
        assert _until(lambda: live.published == 1) and stuck.backlogged == 1
        lc.close()
        sc.close()
    finally:
        stuck.close()
        live.close()
        unlink_segment(live_name)


def test_oversized_messages_are_counted_and_the_stream_goes_on(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        tx.send("s", _msg(0), timeout=2)
        tx.send("s", _msg(1, 8192), timeout=2)  # over the slot: skipped
        tx.send("s", _msg(2), timeout=2)
        tx.send("s", _msg(3), timeout=2)  # the ring is full: backlogged
        tx.send("s", _msg(4, 8192), timeout=2)  # ... and over the slot once its turn comes
        tx.send("s", _msg(5), timeout=2)
        assert _until(lambda: relay.backlogged == 3)
        got = [c.get(timeout=2).frame_id for _ in range(4)]
        assert got == [0, 2, 3, 5]
        assert _until(lambda: relay.stats()["backlog"] == 0)
        _settles(relay, (4, 3, 0, 0, 2))
        c.close()
    finally:
        relay.close()


class _FailOnce:
    """Wraps a bound method: the first call raises (a transient fault), later ones pass."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected fault")
        return self.fn(*a, **kw)


def test_a_failed_write_costs_that_message_only(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        relay.producer.commit = _FailOnce(relay.producer.commit)  # in the dispatch thread
        tx.send("s", _msg(0), timeout=2)
        tx.send("s", _msg(1), timeout=2)
        tx.send("s", _msg(2), timeout=2)
        assert _until(lambda: relay.published == 2)
        tx.send("s", _msg(3), timeout=2)
        tx.send("s", _msg(4), timeout=2)
        assert _until(lambda: relay.backlogged == 2)
        relay.producer.commit = _FailOnce(relay.producer.commit)  # in the relay's thread
        assert [c.get(timeout=2).frame_id for _ in range(3)] == [1, 2, 4]
        tx.send("s", _msg(5), timeout=2)
        _check(c.get(timeout=2), 5)
        assert _until(lambda: relay.published == 4)
        c.close()
    finally:
        relay.close()


def test_failing_flow_control_stops_nothing(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    rx.pause_peer = _FailOnce(_FailOnce(rx.pause_peer))  # the pause, then the resume fail
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    try:
        c = RingConsumer.attach(ring_name)
        for episode in range(2):
            for i in range(3):
                tx.send("s", _msg(10 * episode + i), timeout=2)
            assert _until(lambda e=episode: relay.backlogged == e + 1)
            assert [c.get(timeout=2).frame_id for _ in range(3)] == [10 * episode + i for i in range(3)]
            c.release()
        _settles(relay, (6, 2, 0, 0, 0))
        c.close()
    finally:
        relay.close()


def test_add_stream_receives_both_names_and_close_lets_go_of_both(pair, ring_name) -> None:
    tx, rx = pair
    relay = _l2r(rx, "a", ring_name, slot_size=4096, nslots=8)
    relay.add_stream("b")
    relay.add_stream("a")
    relay.add_stream("b")
    assert relay.streams == ["a", "b"]
    c = RingConsumer.attach(ring_name)
    try:
        for i, s in enumerate(["a", "b", "a", "b"]):
            tx.send(s, _msg(i), timeout=2)
        for i in range(4):
            _check(c.get(timeout=2), i)
    finally:
        relay.close()
    assert not os.path.exists(os.path.join(SHM_DIR, ring_name))  # unlinked by default
    assert c.get(timeout=1) is None and c.eof  # end of stream for its consumers
    c.close()
    tx.send("a", _msg(4), timeout=2)
    tx.send("b", _msg(5), timeout=2)
    assert _until(lambda: rx.unrouted == 2)  # neither name is handled any more
    assert relay.published == 4


def test_close_ends_the_relays_thread_even_while_it_waits_for_a_slot(pair, ring_name) -> None:
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=4096, nslots=2)
    c = RingConsumer.attach(ring_name)
    for i in range(3):
        tx.send("s", _msg(i), timeout=2)
    assert _until(lambda: relay.backlogged == 1)
    time.sleep(0.05)
    relay.close()
    assert [t for t in threading.enumerate() if t.name == "link->ring s"] == []
    assert relay.stats()["backlog"] == 0
    assert [c.get(timeout=1).frame_id for _ in range(2)] == [0, 1]
    assert c.get(timeout=1) is None and c.eof
    c.close()


def test_link_to_ring_defaults_are_8_slots_for_16_consumers(pair, ring_name) -> None:
    relay = _l2r(pair[1], "s", ring_name, slot_size=4096)
    cons = []
    try:
        assert ring_stats(ring_name).nslots == 8
        cons = [RingConsumer.attach(ring_name) for _ in range(16)]
        with pytest.raises(RingError, match="all 16 consumer entries"):
            RingConsumer.attach(ring_name)
    finally:
        for c in cons:
            c.close()
        relay.close()


# -- ring -> link ------------------------------------------------------------------------------


class _Sink:
    """The receiving side of ring->link tests: (stream, frame id) in arrival order."""

    def __init__(self, rx: Link, streams: list[str]) -> None:
        self.got: list[tuple[str, int]] = []
        for s in streams:
            rx.on(s, self._on)

    def _on(self, r: Received) -> None:
        _check(r.message, r.message.frame_id)
        self.got.append((r.stream, r.message.frame_id))


@pytest.fixture
def prod(ring_name) -> Iterator[RingProducer]:
    p = RingProducer.create(ring_name, 64 << 10, nslots=4)
    yield p
    p.close()


def test_ring_to_link_relays_in_order_across_idle_spells_and_ends_at_eof(pair, prod) -> None:
    tx, rx = pair
    sink = _Sink(rx, ["a"])
    relay = RingToLink(prod.name, tx, "a")
    try:
        time.sleep(0.5)  # idle for more than one of its waits for a message
        assert relay.ring_dropped == 0 and not relay.done.is_set()
        for i in range(5):
            prod.publish(_msg(i), timeout=1)
        assert _until(lambda: len(sink.got) >= 5)
        time.sleep(0.1)
        assert sink.got == [("a", i) for i in range(5)]  # in order, none twice
        prod.close()
        assert relay.done.wait(2)
        assert relay.stats() == {"sent": 5, "send_timeouts": 0, "ring_dropped": 0, "too_large": 0,
                                 "arrays": ["frame"], "left_out": [], "keeps": None}
    finally:
        relay.stop()


def test_an_idle_ring_to_link_relay_costs_no_cpu(pair, prod) -> None:
    relay = RingToLink(prod.name, pair[0], "a")
    try:
        time.sleep(0.1)
        c0 = time.process_time()
        time.sleep(0.6)
        assert time.process_time() - c0 < 0.1
    finally:
        relay.stop()


def test_stop_returns_once_the_relay_has_ended(pair, prod) -> None:
    tx, rx = pair
    sink = _Sink(rx, ["a"])
    relay = RingToLink(prod.name, tx, "a")
    prod.publish(_msg(0), timeout=1)
    assert _until(lambda: relay.sent == 1)  # it now waits for the next message
    t0 = time.monotonic()
    relay.stop()
    assert relay.done.is_set()
    assert time.monotonic() - t0 < 0.7  # one wait for a message (0.2 s), not more
    assert _until(lambda: sink.got == [("a", 0)])


def test_retarget_moves_the_next_message_to_the_new_stream(pair, prod) -> None:
    tx, rx = pair
    sink = _Sink(rx, ["a", "b"])
    relay = RingToLink(prod.name, tx, "a")
    try:
        for i in range(2):
            prod.publish(_msg(i), timeout=1)
        assert _until(lambda: relay.sent == 2)
        relay.retarget("b")
        relay.retarget("b")
        for i in range(2, 4):
            prod.publish(_msg(i), timeout=1)
        assert _until(lambda: len(sink.got) >= 4)
        time.sleep(0.1)
        assert sink.got == [("a", 0), ("a", 1), ("b", 2), ("b", 3)]
        assert relay.stream == "b"
    finally:
        relay.stop()


def test_without_a_peer_sends_time_out_and_are_retried_until_one_comes(prod) -> None:
    path = f"/tmp/evrelay-{_tag()}.ipc"
    tx = Link.dial(f"ipc://{path}", name="tx")
    rx = None
    relay = RingToLink(prod.name, tx, "a", depth=1)
    try:
        for i in range(3):  # the link's sender retries one, one is queued (depth 1), one waits
            prod.publish(_msg(i), timeout=1)
        assert _until(lambda: relay.send_timeouts >= 1, 3.0)
        n0 = relay.send_timeouts
        time.sleep(1.0)
        assert 1 <= relay.send_timeouts - n0 <= 3, relay.stats()  # one every 0.5 s
        assert relay.sent == 2 and not relay.done.is_set()
        rx = Link.listen(f"ipc://{path}", name="rx")
        sink = _Sink(rx, ["a"])
        assert _until(lambda: len(sink.got) == 3)
        assert sink.got == [("a", 0), ("a", 1), ("a", 2)]
        assert _until(lambda: relay.sent == 3)
    finally:
        relay.stop()
        _close_both(tx, rx)
        if os.path.exists(path):
            os.unlink(path)


def test_a_message_too_large_for_the_link_is_skipped_and_counted(ring_name) -> None:
    path = f"/tmp/evrelay-{_tag()}.ipc"
    rx = Link.listen(f"ipc://{path}", name="rx", max_message_size=64 << 10)
    tx = Link.dial(f"ipc://{path}", name="tx", max_message_size=64 << 10)
    p = RingProducer.create(ring_name, 256 << 10, nslots=4)
    relay = None
    try:
        sink = _Sink(rx, ["a"])
        assert tx.wait_connected(5)
        relay = RingToLink(ring_name, tx, "a")
        p.publish(_msg(0), timeout=1)
        p.publish(_msg(1, 100 << 10), timeout=1)
        p.publish(_msg(2), timeout=1)
        assert _until(lambda: len(sink.got) == 2)
        assert sink.got == [("a", 0), ("a", 2)]
        want = {"sent": 2, "send_timeouts": 0, "ring_dropped": 0, "too_large": 1, "arrays": ["frame"],
                "left_out": [], "keeps": None}
        assert _until(lambda: relay.stats() == want), relay.stats()  # counted after the send
    finally:
        if relay is not None:
            relay.stop()
        p.close()
        _close_both(tx, rx)
        if os.path.exists(path):
            os.unlink(path)


def test_a_closed_link_ends_the_relay_quietly(pair, prod, caplog) -> None:
    tx, _rx = pair
    relay = RingToLink(prod.name, tx, "a")
    with caplog.at_level(logging.INFO, logger="edgeva.relay"):
        tx.close(drain=0, linger=0)
        prod.publish(_msg(0), timeout=1)
        assert relay.done.wait(2)
    assert [r for r in caplog.records if r.name == "edgeva.relay"] == []
    assert relay.sent == 0
    relay.stop()


def test_an_unexpected_failure_ends_the_relay_and_says_so(pair, prod, caplog) -> None:
    tx, _rx = pair

    def broken(*_a, **_kw) -> None:
        raise RuntimeError("injected fault")

    tx.send = broken  # type: ignore[method-assign]
    relay = RingToLink(prod.name, tx, "a")
    with caplog.at_level(logging.ERROR, logger="edgeva.relay"):
        prod.publish(_msg(0), timeout=1)
        assert relay.done.wait(2)
        time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.name == "edgeva.relay"] == ["relay ring->link a failed"]
    relay.stop()


# -- process exit ------------------------------------------------------------------------------

_LEFT_RUNNING = """
import sys, time
sys.path.insert(0, {root!r})
from edgeva.agent.dataplane.link import Link
from edgeva.agent.dataplane.relay import LinkToRing, RingToLink
from edgeva.agent.dataplane.ring import RingProducer
rx = Link.listen("ipc://{path}", name="rx")
tx = Link.dial("ipc://{path}", name="tx")
assert tx.wait_connected(5)
prod = RingProducer.create({src!r}, 4096)
a = RingToLink({src!r}, tx, "s")
b = LinkToRing(rx, "s", {dst!r}, 4096)
# The links go (nng may abort a process that exits with its sockets open); the relays' threads
# stay: one waits for the ring, one for a backlog.
tx.close(drain=0, linger=0)
end = time.monotonic() + 3
while rx.connected and time.monotonic() < end:  # see _close_both
    time.sleep(0.01)
rx.close(drain=0, linger=0)
assert a._thread.is_alive() and b._thread.is_alive()
print("running", flush=True)
"""


def test_relays_left_running_never_keep_the_process_from_exiting() -> None:
    tag = _tag()
    src, dst = segment_name("relayflow", tag, "src"), segment_name("relayflow", tag, "dst")
    path = f"/tmp/evrelay-{tag}.ipc"
    code = _LEFT_RUNNING.format(root=ROOT, path=path, src=src, dst=dst)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "running\n"
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for name in (src, dst):
            unlink_segment(name)
        if os.path.exists(path):
            os.unlink(path)


def test_order_holds_while_the_backlog_drains_into_a_busy_ring(pair, ring_name) -> None:
    """New messages arrive while the relay's thread moves the backlog into a ring that its
    consumer empties: none may overtake the backlog, none may be lost."""
    tx, rx = _deaf(pair[0]), pair[1]
    relay = _l2r(rx, "s", ring_name, slot_size=320 << 10, nslots=2)
    got: list[int] = []
    c = RingConsumer.attach(ring_name)

    def consume() -> None:
        while len(got) < 40:
            m = c.get(timeout=3)
            if m is None:
                return
            got.append(m.frame_id)
            time.sleep(0.001)

    t = threading.Thread(target=consume)
    try:
        for i in range(3):
            tx.send("s", _msg(i, 300 << 10), timeout=5)
        assert _until(lambda: relay.backlogged >= 1)
        t.start()
        for i in range(3, 40):
            tx.send("s", _msg(i, 300 << 10), timeout=5)
        t.join(10)
        assert got == list(range(40))
        assert _until(lambda: relay.published == 40) and relay.dropped == 0
    finally:
        t.join(10)
        c.close()
        relay.close()
