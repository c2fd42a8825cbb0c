"""The link's exact behaviour against a raw pynng peer, in one process, in about a second each.

A raw ``pynng.Pair0`` socket stands in for the peer agent (real nng sockets over ipc://): it
reads the bytes a ``Link`` writes and writes envelopes a test builds by hand, so that framing
(envelope fields, padding, sizes, seq, sent_ns), receive accounting (lost, bad, epochs), flow
control (pause/resume per stream, coalesced requests), queue policies (``block`` capacity and
timeouts, ``drop_oldest`` drops) and encode limits are checked to the byte and to the count.
The slower multi-process tests in test_link.py cover the same paths end to end.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pynng
import pytest

from edgeva.agent.dataplane import link as L
from edgeva.agent.dataplane.codec import ARRAYS_OFFSET, CodecError, encode
from edgeva.agent.dataplane.link import (
    Link,
    LinkClosed,
    LinkError,
    LinkMessageTooLarge,
    LinkTimeout,
)
from edgeva.schemas.message import Message

_n = itertools.count()


def _addr() -> str:
    return f"ipc:///tmp/evl-{os.getpid()}-{next(_n)}.sock"


def _wait(pred, timeout: float = 3.0, what=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.005)


def _within(fn, secs: float = 3.0):
    """fn() run in a thread: its result, or a failure (not a hang) when it takes over ``secs``."""
    out: list = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            err.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(secs)
    assert not th.is_alive(), f"{fn} did not return within {secs} s"
    if err:
        raise err[0]
    return out[0]


def _peer(addr: str, listen: bool = True) -> pynng.Pair0:
    s = pynng.Pair0(recv_timeout=2000, send_timeout=2000)
    if listen:
        s.listen(addr)
    else:
        s.dial(addr, block=True)
    return s


def _msg(i: int, nbytes: int = 48, **fields) -> Message:
    a = ((np.arange(nbytes, dtype=np.uint32) * 7 + i) % 251).astype(np.uint8)
    return Message(frame_id=i, source="s", ts_ns=123, fields=dict(fields), arrays={"a": a})


def _env(name: bytes, flags: int = 0, epoch: int = 7, seq: int = 0, sent: int | None = None) -> bytes:
    units = (L.ENV.size + len(name) + 63) // 64
    b = bytearray(units * 64)
    L.ENV.pack_into(b, 0, L.ENV_MAGIC, units, len(name), flags, epoch, 0, seq,
                    time.time_ns() if sent is None else sent)
    b[L.ENV.size : L.ENV.size + len(name)] = name
    return bytes(b)


def _frame(name: str, msg: Message, **kw) -> bytes:
    return _env(name.encode(), **kw) + encode(msg)


def _same(a: Message, b: Message) -> bool:
    return (a.frame_id, a.source, a.ts_ns, a.fields) == (b.frame_id, b.source, b.ts_ns, b.fields) and \
        a.arrays.keys() == b.arrays.keys() and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def _drain(peer: pynng.Pair0, quiet_ms: int = 150) -> list[bytes]:
    """Everything the peer receives until it has been quiet for ``quiet_ms``."""
    peer.recv_timeout = quiet_ms
    out = []
    try:
        while True:
            out.append(peer.recv())
    except pynng.Timeout:
        pass
    peer.recv_timeout = 2000
    return out


def _ids(frames: list[bytes]) -> list[int]:
    return [L.parse(memoryview(f))[4].frame_id for f in frames]


# -- framing -----------------------------------------------------------------------------------


def test_envelope_fields_padding_seq_and_sizes_on_the_wire() -> None:
    addr = _addr()
    peer = _peer(addr)
    link = Link.dial(addr, name="tx")
    try:
        assert link.wait_connected(3)
        sent, lengths = [], []
        # 1 B name: one 64 B unit; 32 B: exactly one unit; 33 B: two; 200 B (the most): four.
        names = ["a", "n" * 32, "m" * 33, "z" * L.MAX_NAME]
        cases = [(nm, _msg(i, 48 if i % 2 == 0 else 5000, k=i)) for i, nm in enumerate(names)]
        cases.append(("big", _msg(9, 200_000, k="big")))  # past the small-message buffer
        for seq, (name, m) in enumerate(cases):
            t0 = time.time_ns()
            link.send(name, m)
            raw = peer.recv()
            t1 = time.time_ns()
            magic, units, nlen, flags, epoch, r, wseq, wsent = L.ENV.unpack_from(raw, 0)
            assert (magic, nlen, flags, r) == (L.ENV_MAGIC, len(name), 0, 0)
            assert units == -(-(32 + len(name)) // 64), (name, units)
            assert raw[32 : 32 + nlen] == name.encode() and not any(raw[32 + nlen : units * 64])
            assert wseq == seq and t0 <= wsent <= t1
            assert epoch == link._epoch
            assert raw[units * 64 :] == encode(m)  # the codec's bytes, nothing more
            assert len(raw) == units * 64 + len(encode(m))
            sname, sepoch, sseq, ssent, got = L.parse(memoryview(raw))
            assert (sname, sepoch, sseq, ssent) == (name.encode(), epoch, seq, wsent)
            assert _same(got, m)
            sent.append(m)
            lengths.append(len(raw))
        st = link.stats()
        assert st["messages_sent"] == len(cases) and st["bytes_sent"] == sum(lengths)
        assert st["queued"] == 0 and st["dropped"] == 0
    finally:
        link.close()
        peer.close()


def test_big_messages_are_refilled_small_ones_use_the_stream_buffer() -> None:
    addr = _addr()
    peer = _peer(addr)
    link = Link.dial(addr, name="tx")
    try:
        assert link.wait_connected(3)
        for i in range(6):  # small: the per-stream scratch buffer, never the pool
            link.send("s", _msg(i, 1000))
            assert _same(L.parse(memoryview(peer.recv()))[4], _msg(i, 1000))
        assert link.stats()["messages_reused"] == 0
        for i in range(20):
            link.send("b", _msg(i, 100_000))
            assert _same(L.parse(memoryview(peer.recv()))[4], _msg(i, 100_000))
            time.sleep(0.005)  # nng lets go of the written buffer
        assert link.stats()["messages_reused"] >= 12, link.stats()  # a handful of buffers, refilled
    finally:
        link.close()
        peer.close()


def test_an_idle_link_sends_in_the_callers_thread() -> None:
    addr = _addr()
    link = Link.dial(addr, name="tx")
    peer = None
    try:
        link.send("s", _msg(0))  # no peer: the sender thread takes it, and retries
        _wait(lambda: link.stats()["queued"] == 0)
        peer = _peer(addr)
        assert link.wait_connected(3)
        assert _ids(_drain(peer)) == [0]
        for i in range(1, 21):
            link.send("s", _msg(i))
            # nothing queued, nothing in flight: nng took it before send returned
            assert link.messages_sent == i + 1, i
            assert L.parse(memoryview(peer.recv()))[4].frame_id == i
            time.sleep(0.005)
    finally:
        link.close()
        if peer is not None:
            peer.close()


def test_parse_envelope_refuses_every_malformed_envelope_and_nothing_else() -> None:
    def ok(b: bytes):
        return L.parse_envelope(memoryview(b))

    def bad(b: bytes) -> None:
        with pytest.raises(CodecError):
            ok(b)

    for n in (1, 31, 32, 33, 95, 96, 200):
        name = bytes([97 + n % 26]) * n
        e = _env(name, flags=3, epoch=5, seq=11, sent=-4)
        assert len(e) == -(-(32 + n) // 64) * 64
        assert ok(e) == (name, 3, 5, 11, -4, len(e) // 64)
        assert ok(e + b"xyz")[0] == name  # a body may follow
        bad(e[:-1])  # one byte short of its own envelope
        units = len(e) // 64
        for wrong in (units - 1, units + 1):  # the unit count must be the exact one
            b = bytearray(e + bytes(128))
            b[4] = wrong
            bad(bytes(b))
    bad(b"")
    bad(bytes(31))
    bad(b"EVL2" + _env(b"a")[4:])
    e = bytearray(_env(b"a"))
    e[5] = 0  # an empty name
    bad(bytes(e))
    big = bytearray(_env(b"q" * 200) + bytes(64))
    big[5] = 201  # one over MAX_NAME, with a unit count that would fit it
    big[4] = (32 + 201 + 63) // 64
    bad(bytes(big))
    bad(_env(b"\xff\xfe"))  # not UTF-8
    e = _env(b"ok")
    assert ok(e)[0] == b"ok"
    m = _msg(3, 100, x=1)
    raw, epoch, seq, sent, got = L.parse(memoryview(_frame("cam", m, epoch=9, seq=4, sent=17)))
    assert (raw, epoch, seq, sent) == (b"cam", 9, 4, 17) and _same(got, m)
    m2 = _msg(4, 10)
    assert _same(L.parse(memoryview(_frame("q" * 40, m2)))[4], m2)  # a two-unit envelope


# -- receiving ---------------------------------------------------------------------------------


def test_receive_accounting_lost_epochs_bad_and_network_time() -> None:
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        got: list[tuple[int, int]] = []

        def rx(n: int) -> None:
            for _ in range(n):
                r = _within(lambda: link.recv(2.0), 4.0)
                assert r is not None
                got.append((r.message.frame_id, r.lease.seq))
                assert _same(r.message, _msg(r.message.frame_id))
                r.lease.release()
                assert not r.lease.held

        # first message: seq 5 starts the count (nothing lost); then 6, 9 (7, 8 lost), 10
        for seq in (5, 6, 9, 10):
            peer.send(_frame("s", _msg(seq), epoch=1, seq=seq))
        rx(4)
        assert link.stats()["lost"] == 2
        # garbage between good ones: counted bad, recv goes on to the next good one
        peer.send(b"junk")
        peer.send(_env(b"s", epoch=1, seq=11) + b"not a frame")
        peer.send(_frame("s", _msg(12), epoch=1, seq=12))
        rx(1)
        st = link.stats()
        assert st["bad"] == 2 and st["lost"] == 3, st  # seq 11 was refused: never seen
        # the peer restarted (new epoch): its seq restarts, nothing counted lost
        peer.send(_frame("s", _msg(0), epoch=2, seq=0))
        peer.send(_frame("s", _msg(2), epoch=2, seq=2))
        peer.send(_frame("s", _msg(3), epoch=2, seq=3))
        rx(3)
        assert got == [(5, 5), (6, 6), (9, 9), (10, 10), (12, 12), (0, 0), (2, 2), (3, 3)]
        st = link.stats()
        assert st["lost"] == 4 and st["bad"] == 2 and st["messages_received"] == 8, st
        assert link.metrics(reset=True).network_ms.p50 < 1000
        # sent_ns is the peer's clock: network time is receive minus send, in ms
        for k in range(5):
            peer.send(_frame("s", _msg(20 + k), epoch=2, seq=4 + k, sent=time.time_ns() - 300_000_000))
        rx(5)
        m = link.metrics(reset=True)
        assert 300 <= m.network_ms.p50 < 1300, m
        assert 0 <= m.deserialise_ms.p95 < 500, m
        assert m.messages_received == 13 and m.bad == 2
    finally:
        link.close()
        peer.close()


def test_recv_timeouts_none_waits_negative_returns_and_closed_raises() -> None:
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        t0 = time.monotonic()
        assert _within(lambda: link.recv(0.15)) is None
        assert 0.1 <= time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        assert _within(lambda: link.recv(-1)) is None and _within(lambda: link.recv(0)) is None
        assert time.monotonic() - t0 < 0.5
        out: list = []

        def later(m: Message, delay: float) -> None:
            time.sleep(delay)
            peer.send(_frame("s", m, epoch=3, seq=m.frame_id))

        threading.Thread(target=later, args=(_msg(1), 0.3), daemon=True).start()
        r = link.recv(2.0)  # a timeout in seconds: it arrives well within it
        assert r is not None and r.message.frame_id == 1
        th = threading.Thread(target=lambda: out.append(link.recv()), daemon=True)
        th.start()  # no timeout: waits as long as it takes
        threading.Thread(target=later, args=(_msg(2), 0.3), daemon=True).start()
        th.join(3)
        assert not th.is_alive() and out[0] is not None and out[0].message.frame_id == 2
        out.clear()
        th = threading.Thread(target=lambda: out.append(pytest.raises(LinkClosed, link.recv)), daemon=True)
        th.start()
        time.sleep(0.1)
        link.close()
        th.join(3)
        assert not th.is_alive() and out, "a blocked recv ends with LinkClosed at close"
        with pytest.raises(LinkClosed):
            link.recv(0.1)
    finally:
        link.close()
        peer.close()


def test_dispatch_unrouted_failing_handlers_and_a_switch_from_recv(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    died: list = []  # threads of the link that end with an exception
    monkeypatch.setattr(threading, "excepthook", lambda a: died.append((a.thread, a.exc_type)))
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        # recv first, then handlers: the dispatcher starts then
        peer.send(_frame("s", _msg(0), epoch=4, seq=0))
        r = link.recv(2.0)
        assert r is not None
        link.open_stream("out")  # a sender in recv mode starts no dispatcher of its own
        got: list[int] = []
        done = threading.Event()

        def h(r) -> None:
            got.append(r.message.frame_id)
            if r.message.frame_id == 2:
                raise RuntimeError("a handler bug")
            if r.message.frame_id == 5:
                done.set()

        link.on("s", h)
        with pytest.raises(LinkError):
            link.recv(0.1)  # handlers own the receive side
        time.sleep(0.35)  # idle for longer than a receive slice
        for i, name in ((1, "s"), (2, "s"), (3, "nobody"), (4, "s"), (5, "s")):
            peer.send(_frame(name, _msg(i), epoch=4, seq=i))
        assert done.wait(3), got
        st = link.stats()
        assert got == [1, 2, 4, 5] and st["unrouted"] == 1 and st["bad"] == 0, (got, st)
        assert st["messages_received"] == 6
        failed = [r for r in caplog.records if "handler of stream" in r.getMessage()]
        assert len(failed) == 1 and failed[0].exc_info  # with its traceback
        assert failed[0].exc_info[0] is RuntimeError
        link.off("s")
        peer.send(_frame("s", _msg(6), epoch=4, seq=6))
        _wait(lambda: link.stats()["unrouted"] == 2, what=link.stats)
        assert got == [1, 2, 4, 5]
        link.close()  # the dispatcher, blocked in a receive, ends: nothing counted bad
        assert link.stats()["bad"] == 0 and link.state == "closed"
    finally:
        link.close()
        peer.close()
    for _ in range(6):  # (a dispatcher may see the close between two receives: try a few)
        lone = Link.listen(_addr(), name="lone")
        lone.on("s", lambda r: None)
        time.sleep(0.02)
        lone.close()
        assert lone.stats()["bad"] == 0
    assert not died, died  # the dispatchers ended cleanly at close


def test_a_sender_only_link_reads_with_recv_without_losing_any() -> None:
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        link.open_stream("out")  # starts the flow-control dispatcher
        time.sleep(0.05)
        assert link.recv(0.5) is None  # recv takes the receive side over
        for i in range(30):
            peer.send(_frame("s", _msg(i), epoch=5, seq=i))
        ids = []
        for _ in range(30):
            r = link.recv(2.0)
            assert r is not None
            ids.append(r.message.frame_id)
        assert ids == list(range(30)) and link.stats()["unrouted"] == 0
        # and back to handlers: a new dispatcher starts (the sender-only one has ended)
        got: list[int] = []
        link.on("s", lambda r: got.append(r.message.frame_id))
        peer.send(_frame("s", _msg(30), epoch=5, seq=30))
        _wait(lambda: got == [30], what=lambda: (got, link.stats()))
    finally:
        link.close()
        peer.close()


def test_stream_names_remembered_are_bounded() -> None:
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        n = L._MAX_NAMES + 20
        out: list = []
        th = threading.Thread(target=lambda: out.append(link.recv(5.0)), daemon=True)
        th.start()  # flow-control messages are read (and consumed) inside recv
        for i in range(n):
            peer.send(_env(f"n{i}".encode(), flags=L.FLAG_RESUME, epoch=6, seq=i))
        peer.send(_frame("last", _msg(1), epoch=6, seq=n))
        th.join(5)
        r = out[0]
        assert r is not None and r.stream == "last" and r.message.frame_id == 1
        assert len(link._names) == L._MAX_NAMES
        st = link.stats()
        assert st["bad"] == 0 and st["lost"] == 0 and st["pauses_received"] == 0
    finally:
        link.close()
        peer.close()


# -- flow control -------------------------------------------------------------------------------


def test_pause_resume_per_stream_block_waits_drop_oldest_drops() -> None:
    addr = _addr()
    peer = _peer(addr)
    link = Link.dial(addr, name="tx", send_timeout=5.0)
    try:
        assert link.wait_connected(3)
        link.open_stream("a", "block", 1)
        link.open_stream("b", "block", 1)
        link.open_stream("c", "drop_oldest", 2)
        seq = itertools.count()
        peer.send(_env(b"a", flags=L.FLAG_PAUSE, epoch=1, seq=next(seq)))
        peer.send(_env(b"c", flags=L.FLAG_PAUSE, epoch=1, seq=next(seq)))
        peer.send(_env(b"unknown", flags=L.FLAG_PAUSE, epoch=1, seq=next(seq)))  # changes nothing
        _wait(lambda: link.stats()["paused_by_peer"] == ["a", "c"], what=link.stats)
        st = link.stats()
        assert st["pauses_received"] == 2 and st["bad"] == 0, st
        t0 = time.monotonic()

        def paused() -> None:
            with pytest.raises(LinkTimeout, match="paused by the peer"):
                link.send("a", _msg(0), timeout=0.3)  # waits as on a full queue

        _within(paused)
        took = time.monotonic() - t0
        assert 0.25 <= took < 1.2, took
        link.send("b", _msg(1))  # other streams go on
        for i in range(3):
            link.send("c", _msg(10 + i))  # a paused live stream drops new messages
        assert _ids(_drain(peer)) == [1]
        st = link.stats()
        assert st["send_timeouts"] == 1 and st["dropped"] == 3, st
        assert st["dropped_by_stream"] == {"a": 0, "b": 0, "c": 3}
        # resume "a" while a send waits on it: the send goes through
        res: list = []
        th = threading.Thread(target=lambda: res.append(link.send("a", _msg(2), timeout=3.0)), daemon=True)
        th.start()
        time.sleep(0.15)
        peer.send(_env(b"a", flags=L.FLAG_RESUME, epoch=1, seq=next(seq)))
        th.join(2)
        assert not th.is_alive() and res == [None]
        assert _ids(_drain(peer)) == [2]
        assert link.stats()["paused_by_peer"] == ["c"] and link.stats()["pauses_received"] == 2
        # the peer restarts (new epoch): its pauses are void
        peer.send(_env(b"a", flags=L.FLAG_PAUSE, epoch=1, seq=next(seq)))
        _wait(lambda: link.stats()["paused_by_peer"] == ["a", "c"], what=link.stats)
        peer.send(_env(b"zz", flags=L.FLAG_RESUME, epoch=2, seq=0))
        _wait(lambda: link.stats()["paused_by_peer"] == [], what=link.stats)
        link.send("a", _msg(3), timeout=0.5)
        link.send("c", _msg(4))
        assert sorted(_ids(_drain(peer))) == [3, 4]
        assert link.stats()["send_timeouts"] == 1 and link.stats()["dropped"] == 3
    finally:
        link.close()
        peer.close()


@pytest.mark.parametrize("first_epoch", [0, 1])
def test_a_restarted_peer_clears_pauses_whatever_its_epochs(first_epoch: int) -> None:
    addr = _addr()
    peer = _peer(addr)
    link = Link.dial(addr, name="tx")
    try:
        assert link.wait_connected(3)
        link.open_stream("a", "block", 1)
        peer.send(_env(b"a", flags=L.FLAG_PAUSE, epoch=first_epoch, seq=0))
        _wait(lambda: link.stats()["paused_by_peer"] == ["a"], what=link.stats)
        peer.send(_env(b"a", flags=0, epoch=first_epoch + 1, seq=0) + encode(_msg(0)))
        _wait(lambda: link.stats()["paused_by_peer"] == [], what=link.stats)
    finally:
        link.close()
        peer.close()


def test_a_reconnect_clears_pauses_and_frees_a_waiting_sender() -> None:
    addr = _addr()
    link = Link.listen(addr, name="tx")
    peer = _peer(addr, listen=False)
    try:
        assert link.wait_connected(3)
        link.open_stream("a", "block", 1)
        peer.send(_env(b"a", flags=L.FLAG_PAUSE, epoch=1, seq=0))
        _wait(lambda: link.stats()["paused_by_peer"] == ["a"], what=link.stats)
        res: list = []
        th = threading.Thread(target=lambda: res.append(link.send("a", _msg(1), timeout=4.0)), daemon=True)
        th.start()
        time.sleep(0.1)
        peer.close()
        _wait(lambda: not link.connected)
        peer = _peer(addr, listen=False)
        t0 = time.monotonic()
        th.join(3)
        assert not th.is_alive() and res == [None]
        assert time.monotonic() - t0 < 1.0  # a paused sender re-checks in short slices
        assert _ids(_drain(peer)) == [1]
    finally:
        link.close()
        peer.close()


def test_pause_peer_sends_one_bodiless_request_and_the_newest_wins() -> None:
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = None
    try:
        link.on("s", lambda r: None)
        # no peer yet: requests wait; of several for one stream only the newest is sent
        link.pause_peer("s", True)
        _wait(lambda: link.stats()["queued"] == 0)  # the sender thread holds the first one
        link.pause_peer("s", True)
        link.pause_peer("s", True)  # the same request is still queued
        assert link.stats()["queued"] == 1
        link.pause_peer("s", False)  # supersedes the queued pause
        assert link.stats()["queued"] == 1
        link.pause_peer("s", True)  # and this one the queued resume
        assert link.stats()["queued"] == 1
        peer = _peer(addr, listen=False)
        got = _drain(peer, 300)
        flags = [L.parse_envelope(memoryview(b))[1] for b in got]
        assert flags == [L.FLAG_PAUSE, L.FLAG_PAUSE], flags
        for b in got:
            assert len(b) == 64 and L.parse_envelope(memoryview(b))[0] == b"s"
        link.pause_peer("s", False)
        link.pause_peer("s", True)
        got = _drain(peer)
        assert [L.parse_envelope(memoryview(b))[1] for b in got] == [L.FLAG_RESUME, L.FLAG_PAUSE]
        seqs = [L.parse_envelope(memoryview(b))[3] for b in got]
        assert seqs == [2, 3]
        st = link.stats()
        assert st["pauses_sent"] == 4 and st["messages_sent"] == 4, st
    finally:
        link.close()
        if peer is not None:
            peer.close()


# -- queue policies -------------------------------------------------------------------------------


def test_block_stream_holds_depth_plus_the_one_in_flight_then_times_out() -> None:
    addr = _addr()
    link = Link.dial(addr, name="tx", send_timeout=0.3)  # no peer listens yet
    peer = None
    try:
        link.open_stream("a", "block", 2)
        link.send("a", _msg(0), timeout=0.5)
        _wait(lambda: link.stats()["queued"] == 0)  # the sender thread holds it, retrying
        link.send("a", _msg(1), timeout=0.5)
        link.send("a", _msg(2), timeout=0.5)
        assert link.stats()["queued"] == 2
        # (upper bounds leave load some room, under the mutants' timeout + 1 s)
        for timeout, lo, hi in ((0.3, 0.25, 1.2), (None, 0.25, 1.2), (0.6, 0.55, 1.5)):
            t0 = time.monotonic()

            def full(timeout=timeout) -> None:
                with pytest.raises(LinkTimeout, match="no peer connected"):
                    link.send("a", _msg(99), timeout=timeout)

            _within(full)  # a wait that never ends fails here
            took = time.monotonic() - t0
            assert lo <= took < hi, (timeout, took)
        assert link.stats()["send_timeouts"] == 3 and link.stats()["dropped"] == 0
        time.sleep(0.25)  # the sender's failed tries drop nothing of a block stream
        # a waiting send goes through once the peer takes the queue
        res: list = []
        th = threading.Thread(target=lambda: res.append(link.send("a", _msg(3), timeout=3.0)), daemon=True)
        th.start()
        time.sleep(0.1)
        peer = _peer(addr)
        th.join(3)
        assert not th.is_alive() and res == [None]
        link.send("a", _msg(4))
        assert _ids(_drain(peer)) == [0, 1, 2, 3, 4]
        st = link.stats()
        assert st["messages_sent"] == 5 and st["queued"] == 0 and st["send_timeouts"] == 3, st
    finally:
        link.close()
        if peer is not None:
            peer.close()


def test_drop_oldest_without_peer_keeps_the_newest_and_counts_every_drop() -> None:
    addr = _addr()
    link = Link.dial(addr, name="tx")
    peer = None
    try:
        link.open_stream("d", "drop_oldest", 2)
        link.open_stream("e", "drop_oldest", 3)
        link.send("e", _msg(100))  # another stream's message stays queued, never dropped
        _wait(lambda: link.stats()["queued"] == 0)
        link.send("e", _msg(101))
        for i in range(8):
            link.send("d", _msg(i))
            assert link.stats()["queued"] <= 1 + 2
        st = link.stats()
        assert st["dropped_by_stream"]["d"] == 6 and st["dropped_by_stream"]["e"] == 0, st
        # the sender's tries of e's first fail: the queued newer one of "e" makes it stale
        time.sleep(0.45)
        peer = _peer(addr)
        assert link.wait_connected(3)
        got = _ids(_drain(peer, 300))
        st = link.stats()
        d = [i for i in got if i < 100]
        e = [i for i in got if i >= 100]
        assert e == [101] and d == [6, 7], got  # each stream's newest, in order
        assert st["dropped"] == st["dropped_by_stream"]["d"] + st["dropped_by_stream"]["e"]
        assert len(d) + st["dropped_by_stream"]["d"] == 8
        assert len(e) + st["dropped_by_stream"]["e"] == 2
        assert st["messages_sent"] == len(got) and st["queued"] == 0
        # a single message with no newer one is never stale: it waits for the peer
        peer.close()
        _wait(lambda: not link.connected)
        link.send("d", _msg(50))
        time.sleep(0.35)
        peer = _peer(addr)
        assert link.wait_connected(3)
        assert _ids(_drain(peer, 300)) == [50]
    finally:
        link.close()
        if peer is not None:
            peer.close()


def test_close_waits_for_the_message_in_flight_and_no_longer() -> None:
    addr = _addr()
    link = Link.dial(addr, name="tx")
    peer = None
    try:
        link.send("a", _msg(0))
        _wait(lambda: link.stats()["queued"] == 0)
        peer = _peer(addr)
        assert link.wait_connected(3)
        assert _ids(_drain(peer)) == [0]
        t0 = time.monotonic()
        link.close(drain=3.0)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(LinkClosed):
            link.send("a", _msg(1))
        link.pause_peer("a", True)  # a no-op once closed
    finally:
        link.close()
        if peer is not None:
            peer.close()
    link = Link.dial(_addr(), name="nobody")
    link.send("a", _msg(0))  # in flight, no peer
    _wait(lambda: link.stats()["queued"] == 0)  # the sender thread holds it, retrying
    t0 = time.monotonic()
    link.close(drain=3.0)  # not connected: nothing to drain, the sender stops within a slice
    assert time.monotonic() - t0 < 1.0


def test_an_idle_link_costs_no_cpu() -> None:
    """Waiting threads block in nng or on a condition: none of them spins. Two links, one with a
    message it keeps retrying (no peer), one connected with a dispatcher and nothing to do."""
    lonely = Link.dial(_addr(), name="lonely")
    addr = _addr()
    link = Link.listen(addr, name="rx")
    peer = _peer(addr, listen=False)
    try:
        lonely.send("a", _msg(0))
        link.on("s", lambda r: None)
        assert link.wait_connected(3)
        time.sleep(0.1)
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(0.6)
        cpu = time.process_time() - c0
        assert cpu < 0.15 * (time.monotonic() - t0), f"{cpu:.2f} s of CPU while idle"
    finally:
        lonely.close(drain=0)
        link.close()
        peer.close()


def test_close_drains_the_queue_and_the_message_in_flight_to_a_slow_peer() -> None:
    addr = _addr()
    peer = _peer(addr)
    link = Link.dial(addr, name="tx", depth=2)
    try:
        assert link.wait_connected(3)
        n = 5
        for i in range(n):  # 2 MB each: the peer does not read, so they pile up in nng and here
            link.send("a", _msg(i, 2_000_000), timeout=3.0)
        assert link.stats()["queued"] >= 1
        got: list[int] = []

        def read() -> None:
            time.sleep(0.3)
            got.extend(_ids(_drain(peer, 500)))

        th = threading.Thread(target=read, daemon=True)
        th.start()
        link.close(drain=3.0)
        th.join(5)
        assert got == list(range(n)), got
    finally:
        link.close()
        peer.close()


# -- encoding limits ---------------------------------------------------------------------------


def test_size_limits_are_exact_and_a_refused_message_stops_nothing() -> None:
    addr = _addr()
    peer = _peer(addr)
    cap = 8192
    link = Link.dial(addr, name="tx", max_message_size=cap)
    try:
        assert link.wait_connected(3)
        env = 64  # a one-unit envelope
        # need = envelope + codec prefix + array bytes: one over the cap is refused as such
        with pytest.raises(LinkMessageTooLarge, match=f"needs at least {cap + 1} B"):
            link.send("s", _msg(0, cap + 1 - env - ARRAYS_OFFSET))
        # under the cap by the array bytes, over it with the header: still refused, cleanly
        # (the stream's buffer grows to the cap, then gives up: within a deadline, not a hang)
        def over() -> Exception | None:
            try:
                link.send("s", _msg(1, cap - env - ARRAYS_OFFSET - 8))
            except LinkMessageTooLarge as e:
                return e
            return None

        assert _within(over) is not None
        with pytest.raises(LinkMessageTooLarge):  # a header over the codec's limit
            link.send("s", Message(frame_id=2, fields={"x": "y" * 70_000}))
        # what fits goes, through a buffer grown from its first size
        for i, n in enumerate((10, 6000, cap - env - ARRAYS_OFFSET - 200, 10)):
            link.send("s", _msg(10 + i, n))
        assert _ids(_drain(peer)) == [10, 11, 12, 13]
        st = link.stats()
        assert st["messages_sent"] == 4 and st["dropped"] == 0
        m = link.metrics(reset=True)
        assert 0 <= m.serialise_ms.p95 < 500, m
    finally:
        link.close()
        peer.close()
    big = Link.dial(_addr(), name="tx2", max_message_size=1 << 20)
    try:
        with pytest.raises(LinkMessageTooLarge):  # the big path: the arrays fit, the whole does not
            big.send("s", _msg(0, (1 << 20) - 64 - ARRAYS_OFFSET - 8))
        with pytest.raises(LinkMessageTooLarge):
            big.send("s", _msg(1, (1 << 20) - 64 - ARRAYS_OFFSET - 8))
        with pytest.raises(CodecError):  # not a dtype the wire carries: an error, nothing leaks
            big.send("s", Message(arrays={"o": np.array([object()] * 70_000)}))
    finally:
        big.close()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(k, ctypes.c_size_t) for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use_mb() -> float:
    """Bytes malloc has handed out and not had back (glibc's mallinfo2): a leak shows here even
    when freed memory stays resident (the link raises malloc's trim threshold)."""
    f = ctypes.CDLL("libc.so.6").mallinfo2
    f.restype = _MallInfo2
    m = f()
    return (m.uordblks + m.hblkhd) / (1 << 20)


def test_a_refused_message_frees_its_buffer() -> None:
    """Each way a message can be refused after it was encoded (queue full, too large once
    encoded, fields the wire cannot carry) must free its nng buffer: MBs a time add up."""
    link = Link.dial(_addr(), name="tx", max_message_size=4 << 20, depth=1)  # no peer
    try:
        mb2 = 2 << 20
        link.send("a", _msg(0, mb2))  # in flight: the sender thread retries it
        _wait(lambda: link.stats()["queued"] == 0)
        link.send("a", _msg(1, mb2), timeout=0)  # queued: the stream is full now
        cases = [
            (LinkTimeout, lambda i: link.send("a", _msg(i, mb2), timeout=0)),
            (LinkMessageTooLarge, lambda i: link.send("b", _msg(i, (4 << 20) - 64 - ARRAYS_OFFSET - 8))),
            (CodecError, lambda i: link.send("c", Message(arrays={  # a dtype the wire refuses
                "a": np.full(mb2, i, np.uint8), "o": np.array([object()] * 8)}))),
        ]
        for exc, send in cases:
            for i in range(2):  # warm: malloc's heap grows to what one refusal needs
                with pytest.raises(exc):
                    send(i)
            base = _heap_in_use_mb()
            for i in range(8):
                with pytest.raises(exc):
                    send(i)
            grew = _heap_in_use_mb() - base
            assert grew < 6, f"{exc.__name__}: {grew:.0f} MB more in use after 8 refused 2-4 MB messages"
    finally:
        link.close(drain=0)


def test_window_percentiles_and_reset() -> None:
    w = L._Window(size=256)
    assert w.take(reset=False) == L.P2()
    for i in range(101):
        w.add(i + 0.12345)
    p = w.take(reset=False)
    assert (p.p50, p.p95) == (50.123, 95.123)
    assert w.take(reset=True) == p  # not reset before: the same samples
    assert w.take(reset=False) == L.P2()
    w.add(7.0)
    assert w.take(reset=True) == L.P2(p50=7.0, p95=7.0)


# -- TLS peers that never verify -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_failed_handshakes_are_logged_once_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_link import make_pki

    pki = make_pki(tmp_path)
    server = Link.listen("tls+tcp://127.0.0.1:0", name="srv", tls=pki["server"])
    bad = Link.dial(server.address, name="bad", tls=pki["bad"])
    try:
        caplog.set_level(logging.WARNING, logger="edgeva.link")

        def logged() -> list[int]:
            return [r.args[1] for r in caplog.records if "TLS handshake" in r.getMessage()]

        _wait(lambda: bad.stats()["auth_failures"] >= 1 and logged(), 5, bad.stats)
        first = bad.stats()["auth_failures"]
        _wait(lambda: bad.stats()["auth_failures"] > first and len(logged()) >= 2, 5, bad.stats)
        counts = logged()
        total = bad.stats()["auth_failures"]
        # each line says how many failed since the last one: they add up to what nng counted
        assert all(c >= 1 for c in counts) and sum(counts) <= total, (counts, total)
        assert sum(counts) >= first, (counts, first)
        assert bad.state == "auth_failed" and not bad.connected
    finally:
        bad.close(drain=0)
        server.close()
