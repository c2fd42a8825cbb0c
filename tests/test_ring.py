"""Shared-memory ring with real processes and real shared memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import time
import uuid

import numpy as np
import pytest

from edgeva.agent.dataplane.codec import MessageTooLarge
from edgeva.agent.dataplane.ring import (
    RingConsumer,
    RingError,
    RingFull,
    RingProducer,
    ring_stats,
    sweep_segments,
)
from edgeva.agent.dataplane.segment import SegmentError, create_segment, list_segments, segment_name
from edgeva.schemas.message import Message

CTX = mp.get_context("spawn")
SHAPE = (48, 64, 3)


def _name(tag: str) -> str:
    return segment_name(f"test{os.getpid()}", f"{tag}-{uuid.uuid4().hex[:8]}")


def _frame(i: int) -> np.ndarray:
    return np.full(SHAPE, i % 251, np.uint8)


def _produce(name: str, n: int, ready, start, period: float = 0.0, nslots: int = 4,
             pause_at: int | None = None, paused=None, resume=None) -> None:
    """Child: create the ring, wait for consumers, publish n frames whose pixels encode the id.
    With ``pause_at``: after that many frames, set ``paused`` and wait for ``resume``."""
    prod = RingProducer.create(name, 16384, nslots=nslots)
    ready.set()
    start.wait(30)
    for i in range(n):
        if i == pause_at:
            paused.set()
            resume.wait(60)
        w = prod.reserve(timeout=30)
        w.alloc("frame", SHAPE)[:] = i % 251
        prod.commit(w, Message(i, "cam", fields={"i": i}))
        if period:
            time.sleep(period)
    prod.close()


def _consume(name: str, out, ready, policy: str = "block", delay: float = 0.0, depth=None, limit=None) -> None:
    """Child: read until end of stream; report ids seen, content errors and drop count."""
    cons = RingConsumer.attach(name, policy=policy, depth=depth)
    ready.set()
    seen, bad = [], 0
    while limit is None or len(seen) < limit:
        m = cons.get(timeout=30)
        if m is None:
            break
        fid = m.frame_id
        if m.fields["i"] != fid or not (m.arrays["frame"] == fid % 251).all():
            bad += 1
        seen.append(fid)
        if delay:
            time.sleep(delay)
    out.put({"seen": seen, "bad": bad, "dropped": cons.dropped, "consumed": cons.consumed})
    cons.close()


def _start_producer(name, n, **kw):
    ready, start = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_produce, args=(name, n, ready, start), kwargs=kw)
    p.start()
    assert ready.wait(30), "producer did not start"
    return p, start


def _start_consumer(name, out, **kw):
    ready = CTX.Event()
    c = CTX.Process(target=_consume, args=(name, out, ready), kwargs=kw)
    c.start()
    assert ready.wait(30), "consumer did not attach"
    return c


def test_block_consumers_lose_and_reorder_nothing():
    name, n = _name("block"), 1500
    prod, start = _start_producer(name, n)
    out = CTX.Queue()
    cons = [_start_consumer(name, out) for _ in range(2)]
    start.set()
    results = [out.get(timeout=60) for _ in cons]
    for p in (prod, *cons):
        p.join(30)
        assert p.exitcode == 0
    for r in results:
        assert r["seen"] == list(range(n))
        assert r["bad"] == 0 and r["dropped"] == 0


def test_drop_oldest_counts_drops_exactly_and_spares_the_others():
    name, n = _name("drop"), 300
    prod, start = _start_producer(name, n, period=0.001, nslots=6)
    out = CTX.Queue()
    fast = _start_consumer(name, out)
    slow = _start_consumer(name, out, policy="drop_oldest", delay=0.01, depth=2)
    start.set()
    results = sorted((out.get(timeout=60) for _ in range(2)), key=lambda r: r["dropped"])
    for p in (prod, fast, slow):
        p.join(30)
        assert p.exitcode == 0
    lossless, lossy = results
    assert lossless["seen"] == list(range(n)) and lossless["bad"] == 0
    assert lossy["dropped"] > 0 and lossy["bad"] == 0
    assert lossy["seen"] == sorted(set(lossy["seen"]))  # in order, no repeats
    assert lossy["consumed"] + lossy["dropped"] == n  # every message either seen or counted
    assert len(lossy["seen"]) == lossy["consumed"]


def test_attach_and_detach_mid_stream():
    name, n, half = _name("attach"), 600, 150
    paused, resume = CTX.Event(), CTX.Event()
    prod, start = _start_producer(name, n, period=0.002, pause_at=half, paused=paused, resume=resume)
    out = CTX.Queue()
    steady = _start_consumer(name, out)
    start.set()
    # Mid-stream for sure, however slow the machine: the producer holds at frame `half`
    # until the late consumer has attached.
    assert paused.wait(60), "producer never reached mid-stream"
    late = _start_consumer(name, out, limit=50)  # attaches mid-stream, leaves after 50
    resume.set()
    results = sorted((out.get(timeout=60) for _ in range(2)), key=lambda r: len(r["seen"]))
    for p in (prod, steady, late):
        p.join(30)
        assert p.exitcode == 0
    partial, full = results
    assert full["seen"] == list(range(n))
    first = partial["seen"][0]
    assert 0 < first <= half and partial["seen"] == list(range(first, first + 50))


def _produce_forever(name: str, ready) -> None:
    prod = RingProducer.create(name, 16384, nslots=4)
    ready.set()
    i = 0
    while True:
        prod.publish(Message(i, "cam", arrays={"frame": _frame(i)}), timeout=60)
        i += 1
        time.sleep(0.001)


def test_sigkilled_producer_leaves_nothing_after_sweep():
    prefix = f"crash{os.getpid()}"
    name = segment_name(prefix, "dead")
    ready = CTX.Event()
    p = CTX.Process(target=_produce_forever, args=(name, ready))
    p.start()
    assert ready.wait(30)
    cons = RingConsumer.attach(name)
    assert cons.get(timeout=10) is not None
    alive_prefix = f"{prefix}live"  # a prefix of its own: the sweep below touches nothing else
    with RingProducer.create(segment_name(alive_prefix, "alive"), 4096) as alive:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert list_segments(prefix) == [name]  # the crash left its segment
        assert not cons.producer_alive()
        assert sweep_segments(prefix) == [name]
        assert list_segments(prefix) == []
        # A live ring is never swept: the alive ring's own prefix only (never the whole host's
        # /dev/shm, which other tests and agents share).
        assert list_segments(alive_prefix) == [alive.name]
        assert sweep_segments(alive_prefix) == []
        assert list_segments(alive_prefix) == [alive.name]
    cons.close()


def _attach_and_hang(name: str, ready) -> None:
    RingConsumer.attach(name)
    ready.set()
    time.sleep(600)


def test_producer_reaps_a_sigkilled_block_consumer():
    name = _name("reap")
    with RingProducer.create(name, 4096, nslots=2) as prod:
        ready = CTX.Event()
        c = CTX.Process(target=_attach_and_hang, args=(name, ready))
        c.start()
        assert ready.wait(30)
        prod.publish(Message(0))
        prod.publish(Message(1))
        with pytest.raises(RingFull):
            prod.reserve(timeout=0.05)  # the block consumer pins both slots
        os.kill(c.pid, signal.SIGKILL)
        c.join(10)
        prod.publish(Message(2), timeout=5)  # reaped: slots come back
        assert ring_stats(name).consumers == []


def test_oversized_message_is_a_clear_error_and_the_ring_goes_on():
    name = _name("big")
    with RingProducer.create(name, 8192, nslots=2) as prod:
        cons = RingConsumer.attach(name)
        with pytest.raises(MessageTooLarge, match="does not fit"):
            prod.publish(Message(0, arrays={"frame": np.zeros((100, 100), np.uint8)}))
        with pytest.raises(MessageTooLarge, match="needs"):
            prod.publish(Message(0, fields={"blob": b"x" * 9000}))
        prod.publish(Message(1, arrays={"frame": np.ones((10, 10), np.uint8)}))
        m = cons.get(timeout=1)
        assert m.frame_id == 1 and m.arrays["frame"].sum() == 100
        assert ring_stats(name).free_slots == 1
        del m
        cons.close()


def test_bad_attach_says_what_is_wrong():
    with pytest.raises(RingError, match="no shared memory named .*producer running"):
        RingConsumer.attach(_name("missing"))
    name = _name("size")
    with RingProducer.create(name, 8192) as prod:
        with pytest.raises(RingError, match="8192 B slots, the consumer expects 4096 B"):
            RingConsumer.attach(prod.name, slot_size=4096)
        with pytest.raises(RingError, match="depth"):
            RingConsumer.attach(prod.name, policy="drop_oldest", depth=99)
        with pytest.raises(RingError, match="unknown policy"):
            RingConsumer.attach(prod.name, policy="lossy")
        with pytest.raises(SegmentError, match="already exists"):
            RingProducer.create(name, 8192)
    foreign = create_segment(_name("foreign"), 4096)
    try:
        with pytest.raises(RingError, match="not an edgeva ring"):
            RingConsumer.attach(foreign.name.lstrip("/"))
    finally:
        foreign.close()
        foreign.unlink()


def test_segment_is_private_to_its_user():
    with RingProducer.create(_name("perm"), 4096) as prod:
        mode = stat.S_IMODE(os.stat(f"/dev/shm/{prod.name}").st_mode)
        assert mode == 0o600


def test_consumer_views_are_zero_copy_and_read_only():
    with RingProducer.create(_name("view"), 65536) as prod:
        cons = RingConsumer.attach(prod.name)
        w = prod.reserve()
        frame = w.alloc("frame", (32, 32, 3))
        frame[:] = 7
        prod.commit(w, Message(5))
        m = cons.get(timeout=1)
        got = m.arrays["frame"]
        assert not got.flags.writeable and not got.flags.owndata
        frame[0, 0, 0] = 9  # same memory: the consumer sees the producer's bytes
        assert got[0, 0, 0] == 9
        del m, got, frame, w
        cons.close()


def test_end_of_stream_after_producer_close():
    prod = RingProducer.create(_name("eof"), 4096)
    cons = RingConsumer.attach(prod.name)
    prod.publish(Message(1))
    prod.close()
    assert cons.get(timeout=1).frame_id == 1  # what was published is still delivered
    assert cons.get(timeout=1) is None and cons.eof
    cons.close()


def _consume_with_timeouts(name: str, n: int, out, ready) -> None:
    """Child: many tiny timeouts, so hand-offs race with time-outs; report what was seen."""
    cons = RingConsumer.attach(name)
    ready.set()
    seen = []
    while len(seen) < n:
        m = cons.get(timeout=0.0005 * (len(seen) % 4))
        if m is not None:
            seen.append(m.frame_id)
    out.put(seen)
    cons.close()


def test_hand_offs_racing_timeouts_lose_and_repeat_nothing():
    name, n = _name("race"), 3000
    with RingProducer.create(name, 4096, nslots=4) as prod:
        out, ready = CTX.Queue(), CTX.Event()
        c = CTX.Process(target=_consume_with_timeouts, args=(name, n, out, ready))
        c.start()
        assert ready.wait(30)
        for i in range(n):
            prod.publish(Message(i), timeout=30)
            if i % 7 == 0:
                time.sleep(0.0003)
        assert out.get(timeout=60) == list(range(n))
        c.join(10)


def test_too_little_shared_memory_is_a_clear_error_not_a_bus_error(monkeypatch):
    import edgeva.agent.dataplane.segment as seg

    real = os.statvfs

    def small(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 100, 100, *tuple(st)[5:]))

    monkeypatch.setattr(seg.os, "statvfs", small)  # /dev/shm with 400 KiB free
    name = _name("nospace")
    with pytest.raises(SegmentError, match=r"not enough shared memory .* needs 8\.\d MiB, /dev/shm has 0\.4 MiB free.*--shm-size"):
        RingProducer.create(name, 1 << 20, nslots=8)
    assert name not in list_segments()  # nothing half-made left behind
