"""Shared-memory ring: one producer, any number of consumers, zero-copy fan-out.

One ring per module output. The segment holds a small control block and ``nslots`` slots; a slot
holds one encoded message (``agent.dataplane.codec``). Every published message is referenced by
each consumer attached at that time until that consumer releases it (or, under ``drop_oldest``,
skips it); a slot is reused only when no consumer references it, so a slow consumer can never
see its slot overwritten while it reads, and fan-out costs no copy.

Concurrency. Bookkeeping (cursors, reference counts, the seq->slot index) is changed only under
an exclusive ``flock`` on the segment's file: the kernel lock orders memory on every CPU (plain
loads and stores from Python give no such guarantee on ARM), dies with its holder, and costs two
syscalls. Payload bytes are written and read outside the lock: a slot reserved by the producer is
invisible to consumers until committed, and a committed slot is not reused while referenced.

Waiting never spins. A consumer with nothing to read sets its ``waiting`` flag under the lock and
blocks on its own abstract-namespace unix datagram socket; the producer wakes the flagged
consumers after a commit. The producer waits the same way when ``block`` consumers hold every
slot. Abstract sockets need no files, so a crash leaves nothing behind but the segment, which
``sweep_segments`` removes once its producer is dead.

Wake-up notes carry nothing the receiver trusts. Abstract socket names are listed in
``/proc/net/unix`` for every local user and have no permission bits, so anyone on the host can
send to them: a note only means "look now". The receiver drains its socket and re-reads what
changed (seq, slot, length) from the shared control block under the lock; a forged or garbage
datagram costs at most one spurious look.

Policies, per consumer: ``block`` (lossless: the producer waits for it) and ``drop_oldest`` (live
sources: when it has ``depth`` messages pending, or when the producer needs its slot, its oldest
pending message is skipped and counted in ``dropped``; the producer and other consumers go on).

A ring object belongs to one thread at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from edgeva.agent.dataplane.codec import FrameWriter, decode
from edgeva.agent.dataplane.segment import (
    SHM_DIR,
    SegmentError,
    create_segment,
    list_segments,
    open_segment,
    own_segment,
    pid_alive,
    unlink_segment,
)
from edgeva.schemas.message import Message

log = logging.getLogger("edgeva.ring")

Policy = Literal["block", "drop_oldest"]
_POLICIES: dict[str, int] = {"block": 0, "drop_oldest": 1}

MAGIC = int.from_bytes(b"EVARING1", "little")
VERSION = 1
PAGE = 4096
_NOTE = b"!"  # a wake-up note's only content: "look now" (see the module docstring)
_NOTE_BUF = 64  # receive buffer of a wake-up socket: whatever a sender puts in a datagram is dropped
SMALL_MESSAGE = 65536  # array bytes up to which publish() encodes under the lock

# Control block: int64 words.
H_MAGIC, H_VERSION, H_NSLOTS, H_SLOT_SIZE, H_MAXC, H_PID, H_WSEQ, H_PWAIT, H_CLOSED, H_TOKEN = range(10)
H_DATA_OFF, H_GEN = 10, 11  # H_GEN: bumped on every attach/detach
H_WORDS = 16
# Slot table: per slot.
S_REFS, S_SEQ, S_LEN, S_STATE = range(4)
S_WORDS = 4
FREE, RESERVED, PUBLISHED = 0, 1, 2
# Consumer table: per consumer.
C_ACTIVE, C_PID, C_POLICY, C_DEPTH, C_NEXT, C_HELD, C_WAITING, C_CONSUMED, C_DROPPED, C_TOKEN = range(10)
C_WORDS = 10


class RingError(SegmentError):
    """Misuse or a ring that cannot be attached (the message says what)."""


class RingFull(TimeoutError):
    """``reserve`` timed out: ``block`` consumers still hold every slot."""


@dataclass
class ConsumerStats:
    index: int
    pid: int
    policy: str
    pending: int
    consumed: int
    dropped: int


@dataclass
class RingStats:
    name: str
    nslots: int
    slot_size: int
    published: int
    free_slots: int
    producer_pid: int
    consumers: list[ConsumerStats] = field(default_factory=list)


def _layout(nslots: int, max_consumers: int) -> tuple[int, int, int, int]:
    """Word offsets of the slot table, index, consumer table, and the byte offset of slot 0."""
    slots = H_WORDS
    index = slots + nslots * S_WORDS
    cons = index + 2 * nslots
    end = (cons + max_consumers * C_WORDS) * 8
    return slots, index, cons, (end + PAGE - 1) // PAGE * PAGE


def _sock_addr(name: str, who: str, token: int) -> bytes:
    # Leading NUL: Linux abstract namespace (no file, gone when the socket closes).
    return f"\0edgeva/{name}/{who}/{token:x}".encode()


class _Ring:
    """Mapping, lock and table access shared by producer, consumer and stats readers."""

    def __init__(self, name: str, shm) -> None:
        self.name = name
        self._shm = shm
        self._fd = shm._fd
        # int64 words; indexing yields Python ints. (A foreign segment may have an odd size.)
        self._w = shm.buf[: shm.size // 8 * 8].cast("q")
        self._tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._tx.setblocking(False)

    def _load_layout(self) -> None:
        w = self._w
        self.nslots = w[H_NSLOTS]
        self.slot_size = w[H_SLOT_SIZE]
        self.max_consumers = w[H_MAXC]
        self._so, self._io, self._co, self._data = _layout(self.nslots, self.max_consumers)
        self._nidx = 2 * self.nslots

    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _notify(self, addr: bytes) -> None:
        try:
            self._tx.sendto(_NOTE, addr)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            # Full queue: the peer has wake-ups pending anyway. Refused: the peer is gone.
            pass

    def _slot_view(self, s: int) -> memoryview:
        off = self._data + s * self.slot_size
        return self._shm.buf[off : off + self.slot_size]

    def _unref(self, s: int) -> None:
        """Drop one reference to slot ``s``; caller holds the lock."""
        w, i = self._w, self._so + s * S_WORDS
        w[i + S_REFS] -= 1
        if w[i + S_REFS] <= 0:
            w[i + S_REFS] = 0
            w[i + S_STATE] = FREE

    def _slot_of(self, seq: int) -> int:
        s = self._w[self._io + seq % self._nidx]
        if self._w[self._so + s * S_WORDS + S_SEQ] != seq:
            raise RingError(f"ring {self.name!r}: index corrupt at seq {seq}")
        return s

    def _detach(self, c: int) -> bool:
        """Release everything consumer ``c`` references and free its entry (lock held).
        Returns whether the producer is waiting for space."""
        w, base = self._w, self._co + c * C_WORDS
        held = w[base + C_HELD]
        if held >= 0:
            self._unref(held)
        for seq in range(w[base + C_NEXT], w[H_WSEQ]):
            self._unref(self._slot_of(seq))
        w[base + C_HELD] = -1
        w[base + C_WAITING] = 0
        w[base + C_ACTIVE] = 0
        w[H_GEN] += 1
        return bool(w[H_PWAIT])

    def stats(self) -> RingStats:
        """Counters and occupancy, read consistently under the lock."""
        w = self._w
        self._lock()
        try:
            st = RingStats(
                self.name, self.nslots, self.slot_size, w[H_WSEQ],
                sum(1 for s in range(self.nslots) if w[self._so + s * S_WORDS + S_STATE] == FREE),
                w[H_PID],
            )
            for c in range(self.max_consumers):
                b = self._co + c * C_WORDS
                if w[b + C_ACTIVE]:
                    st.consumers.append(ConsumerStats(
                        c, w[b + C_PID], "drop_oldest" if w[b + C_POLICY] else "block",
                        w[H_WSEQ] - w[b + C_NEXT], w[b + C_CONSUMED], w[b + C_DROPPED],
                    ))
            return st
        finally:
            self._unlock()

    def _close_mapping(self) -> None:
        self._tx.close()
        try:
            self._w.release()
            self._shm.close()
        except BufferError:
            # A caller still holds array views into the segment: unmapping now would make
            # their next read segfault. Let the mapping go when the last view is dropped.
            shm = self._shm
            os.close(shm._fd)
            shm._fd, shm._buf, shm._mmap = -1, None, None


class RingProducer(_Ring):
    """The writing end. ``reserve`` -> write arrays in place -> ``commit``."""

    @classmethod
    def create(cls, name: str, slot_size: int, nslots: int = 8, max_consumers: int = 16) -> RingProducer:
        """Create ring ``name`` (a full segment name, see ``segment_name``) with ``nslots``
        slots of ``slot_size`` bytes each (an encoded message must fit in one slot)."""
        if nslots < 2 or slot_size < 128 or max_consumers < 1:
            raise RingError(f"ring {name!r}: need nslots >= 2, slot_size >= 128, max_consumers >= 1")
        slot_size = (slot_size + 63) // 64 * 64
        so, io, co, data = _layout(nslots, max_consumers)
        shm = create_segment(name, data + nslots * slot_size)
        self = cls(name, shm)
        w = self._w
        w[H_VERSION], w[H_NSLOTS], w[H_SLOT_SIZE], w[H_MAXC] = VERSION, nslots, slot_size, max_consumers
        w[H_PID], w[H_TOKEN], w[H_DATA_OFF] = os.getpid(), secrets.randbits(62), data
        for s in range(nslots):
            w[so + s * S_WORDS + S_SEQ] = -1
        for c in range(max_consumers):
            w[co + c * C_WORDS + C_HELD] = -1
        w[H_MAGIC] = MAGIC  # last: an attacher never sees a half-built ring
        self._load_layout()
        self._writers = [FrameWriter(self._slot_view(s)) for s in range(nslots)]
        self._reserved = -1
        self._gen, self._act = -1, []
        self._addrs: dict[tuple[int, int], bytes] = {}
        self._rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._rx.bind(_sock_addr(name, "p", w[H_TOKEN]))
        self._rx.setblocking(False)
        self._note = bytearray(_NOTE_BUF)
        self._closed = False
        return self

    # -- producing -------------------------------------------------------------------------
    def reserve(self, timeout: float | None = None) -> FrameWriter:
        """A writer over a free slot. Waits (blocking, no spin) while ``block`` consumers hold
        every slot; raises ``RingFull`` after ``timeout`` seconds (None: wait forever)."""
        if self._reserved >= 0:
            raise RingError(f"ring {self.name!r}: reserve() twice without commit()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._lock()
            try:
                s = self._free_slot()
                if s >= 0:
                    self._w[self._so + s * S_WORDS + S_STATE] = RESERVED
                    self._reserved = s
                    wr = self._writers[s]
                    wr.reset()
                    return wr
                self._w[H_PWAIT] = 1
            finally:
                self._unlock()
            if not self._wait(deadline):
                self._w[H_PWAIT] = 0  # benign race: a stale flag only costs a wake-up
                raise RingFull(f"ring {self.name!r}: no free slot within {timeout}s (a block consumer is behind)")

    def _consumer_addr(self, c: int, token: int) -> bytes:
        key = (c, token)
        addr = self._addrs.get(key)
        if addr is None:
            if len(self._addrs) > 4 * self.max_consumers:
                self._addrs.clear()
            addr = self._addrs[key] = _sock_addr(self.name, f"c{c}", token)
        return addr

    def _free_slot(self) -> int:
        """A slot to write into (lock held), skipping for drop_oldest consumers if that frees
        one; -1 when block consumers hold them all."""
        s = self._find_free()
        return s if s >= 0 else self._drop_for_space()

    def _find_free(self) -> int:
        # Lowest free index, not round-robin: a slot freed a moment ago is still in the CPU
        # cache, which for a 2.7 MB frame is worth a third of the copy.
        w, so = self._w, self._so
        for s in range(self.nslots):
            if w[so + s * S_WORDS + S_STATE] == FREE:
                return s
        return -1

    def _drop_for_space(self) -> int:
        """Free the oldest published slot if only ``drop_oldest`` consumers still want it."""
        w = self._w
        wseq = w[H_WSEQ]
        oldest = min(
            (w[self._co + c * C_WORDS + C_NEXT] for c in self._active() if w[self._co + c * C_WORDS + C_NEXT] < wseq),
            default=wseq,
        )
        if oldest >= wseq:
            return -1
        wanting = [c for c in self._active() if w[self._co + c * C_WORDS + C_NEXT] == oldest]
        s = self._slot_of(oldest)
        # Skip only if that frees the slot: not for a block consumer, and not while another
        # consumer still holds it (a drop that frees nothing would be a loss for nothing).
        if any(w[self._co + c * C_WORDS + C_POLICY] == 0 for c in wanting) or (
            w[self._so + s * S_WORDS + S_REFS] != len(wanting)
        ):
            return -1
        for c in wanting:
            self._skip(c)
        return s

    def _skip(self, c: int) -> None:
        b = self._co + c * C_WORDS
        w = self._w
        self._unref(self._slot_of(w[b + C_NEXT]))
        w[b + C_NEXT] += 1
        w[b + C_DROPPED] += 1

    def _active(self) -> list[int]:
        """Active consumer entries (lock held); rescanned only after an attach/detach."""
        w = self._w
        if w[H_GEN] != self._gen:
            self._gen = w[H_GEN]
            self._act = [c for c in range(self.max_consumers) if w[self._co + c * C_WORDS + C_ACTIVE]]
        return self._act

    def commit(self, writer: FrameWriter, msg: Message) -> int:
        """Publish the reserved slot with ``msg``'s header; returns the message's sequence number."""
        s = self._reserved
        if s < 0 or writer is not self._writers[s]:
            raise RingError(f"ring {self.name!r}: commit() without a matching reserve()")
        try:
            n = writer.finish(msg)
        except Exception:
            self.abort()
            raise
        self._lock()
        try:
            seq, wake = self._publish_locked(s, n)
        finally:
            self._unlock()
        self._reserved = -1
        for addr in wake:
            self._notify(addr)
        return seq

    def _publish_locked(self, s: int, n: int) -> tuple[int, list[bytes]]:
        """Make slot ``s`` (``n`` bytes) the next message; returns its seq and whom to wake."""
        w = self._w
        wake = []
        seq = w[H_WSEQ]
        i = self._so + s * S_WORDS
        w[i + S_SEQ], w[i + S_LEN] = seq, n
        w[self._io + seq % self._nidx] = s
        active = self._active()
        w[i + S_REFS] = len(active)
        w[i + S_STATE] = PUBLISHED if active else FREE
        w[H_WSEQ] = seq + 1
        for c in active:
            b = self._co + c * C_WORDS
            if w[b + C_POLICY] and seq + 1 - w[b + C_NEXT] > w[b + C_DEPTH]:
                self._skip(c)
            if w[b + C_WAITING]:
                # It waits for exactly this message: make it the holder now (it finds the slot
                # in its table entry when it looks, under the lock) and wake it.
                w[b + C_WAITING] = 0
                if w[b + C_NEXT] == seq and w[b + C_HELD] < 0:
                    w[b + C_HELD], w[b + C_NEXT] = s, seq + 1
                    w[b + C_CONSUMED] += 1
                wake.append(self._consumer_addr(c, w[b + C_TOKEN]))
        return seq, wake

    def abort(self) -> None:
        """Give back a reserved slot without publishing (e.g. the source failed mid-frame)."""
        if self._reserved >= 0:
            self._lock()
            self._w[self._so + self._reserved * S_WORDS + S_STATE] = FREE
            self._unlock()
            self._reserved = -1

    def publish(self, msg: Message, timeout: float | None = None) -> int:
        """Copy ``msg``'s arrays into a slot (one memcpy each) and publish it."""
        if sum(a.nbytes for a in msg.arrays.values()) <= SMALL_MESSAGE:
            # Metadata: encode under the lock, one lock round trip instead of two. A failed
            # encode leaves the slot free (never marked reserved).
            self._lock()
            try:
                s = self._free_slot()
                if s >= 0:
                    wr = self._writers[s]
                    wr.reset()
                    for k, a in msg.arrays.items():
                        wr.put(k, a)
                    seq, wake = self._publish_locked(s, wr.finish(msg))
            finally:
                self._unlock()
            if s >= 0:
                for addr in wake:
                    self._notify(addr)
                return seq
        wr = self.reserve(timeout)
        try:
            for k, a in msg.arrays.items():
                wr.put(k, a)
        except Exception:
            self.abort()
            raise
        return self.commit(wr, msg)

    def _wait(self, deadline: float | None) -> bool:
        """Block until a consumer frees space or ``deadline``; reap consumers that died."""
        while True:
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                return False
            if select.select([self._rx], [], [], step)[0]:
                _drain(self._rx, self._note)
                return True
            if self.reap_dead():
                return True

    def reap_dead(self) -> int:
        """Detach consumers whose process died without detaching (SIGKILL): their references
        would otherwise pin slots forever. Returns how many were reaped."""
        w, n = self._w, 0
        self._lock()
        try:
            for c in self._active():
                if not pid_alive(w[self._co + c * C_WORDS + C_PID]):
                    self._detach(c)
                    n += 1
        finally:
            self._unlock()
        return n

    @property
    def published(self) -> int:
        return self._w[H_WSEQ]

    @property
    def consumers(self) -> int:
        """Consumers attached now (a racy read: for pacing decisions, not bookkeeping)."""
        return len(self._active())

    def close(self, unlink: bool = True, eof: bool = True) -> None:
        """Close the ring and remove its name (attached consumers keep their mapping).

        ``eof``: the stream has ended; consumers drain what is left, then see ``eof``. Without
        it (a restart), consumers just see a dead producer and re-attach to its successor."""
        if self._closed:
            return
        self._closed = True
        w, wake = self._w, []
        self._lock()
        try:
            w[H_CLOSED] = int(eof)
            for c in self._active():
                b = self._co + c * C_WORDS
                wake.append(self._consumer_addr(c, w[b + C_TOKEN]))
        finally:
            self._unlock()
        for addr in wake:
            self._notify(addr)
        self._rx.close()
        self._writers.clear()
        if unlink:
            unlink_segment(self.name)
        self._close_mapping()

    def __enter__(self) -> RingProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RingConsumer(_Ring):
    """A reading end with its own cursor. ``get`` returns the next message as views into the
    slot, valid until the next ``get``/``release``/``close``."""

    @classmethod
    def attach(
        cls,
        name: str,
        policy: Policy = "block",
        depth: int | None = None,
        slot_size: int | None = None,
    ) -> RingConsumer:
        """Attach to ring ``name``, starting with the next message published. ``depth`` bounds
        the pending messages of a ``drop_oldest`` consumer (default: nslots - 1). ``slot_size``,
        when given, must match the ring's (catches a consumer wired to the wrong ring)."""
        if policy not in _POLICIES:
            raise RingError(f"unknown policy {policy!r}: use 'block' or 'drop_oldest'")
        shm = _open_ring(name)
        self = cls(name, shm)
        try:
            self._check(shm.size, slot_size)
        except RingError:
            self._close_mapping()
            raise
        self._load_layout()
        d = self.nslots - 1 if depth is None else depth
        if not 1 <= d <= self.nslots - 1:
            self._close_mapping()
            raise RingError(f"ring {name!r}: depth must be 1..{self.nslots - 1}, got {d}")
        token = secrets.randbits(62)
        self._rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._rx.setblocking(False)
        w = self._w
        self._lock()
        try:
            free = [c for c in range(self.max_consumers) if not w[self._co + c * C_WORDS + C_ACTIVE]]
            if not free:
                raise RingError(f"ring {name!r}: all {self.max_consumers} consumer entries in use")
            c = free[0]
            self._rx.bind(_sock_addr(name, f"c{c}", token))
            b = self._co + c * C_WORDS
            w[b + C_PID], w[b + C_POLICY], w[b + C_DEPTH] = os.getpid(), _POLICIES[policy], d
            w[b + C_NEXT], w[b + C_HELD], w[b + C_WAITING] = w[H_WSEQ], -1, 0
            w[b + C_CONSUMED] = w[b + C_DROPPED] = 0
            w[b + C_TOKEN] = token
            w[b + C_ACTIVE] = 1
            w[H_GEN] += 1
        except Exception:
            self._unlock()
            self._rx.close()
            self._close_mapping()
            raise
        self._unlock()
        self.index = c
        self.policy = policy
        self._b = self._co + c * C_WORDS
        self._paddr = _sock_addr(name, "p", w[H_TOKEN])
        self._views = [self._slot_view(s) for s in range(self.nslots)]
        self._decoded: list[dict] = [{} for _ in range(self.nslots)]  # array views per slot
        self._attached = True
        self._holding = False  # this process knows it holds C_HELD (vs. an unseen hand-off)
        self._note = bytearray(_NOTE_BUF)  # wake-ups are received here and thrown away
        self.eof = False
        return self

    def _check(self, size: int, slot_size: int | None) -> None:
        w = self._w
        if size < H_WORDS * 8 or w[H_MAGIC] != MAGIC:
            raise RingError(f"{self.name!r} is not an edgeva ring (or is still being created)")
        if w[H_VERSION] != VERSION:
            raise RingError(f"ring {self.name!r} has layout version {w[H_VERSION]}, this edgeva reads {VERSION}")
        expect = _layout(w[H_NSLOTS], w[H_MAXC])[3] + w[H_NSLOTS] * w[H_SLOT_SIZE]
        if size < expect:
            raise RingError(f"ring {self.name!r}: segment is {size} B, its header says {expect} B")
        if slot_size is not None and (slot_size + 63) // 64 * 64 != w[H_SLOT_SIZE]:
            raise RingError(
                f"ring {self.name!r} has {w[H_SLOT_SIZE]} B slots, the consumer expects {slot_size} B"
            )

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message (releasing the previous one), or None after ``timeout`` seconds
        (None: wait forever) or at end of stream (then ``eof`` is True)."""
        w, b = self._w, self._b
        deadline = -1.0  # computed only if we have to wait
        timed_out = False
        while True:
            wake_producer = False
            self._lock()
            try:
                if self._holding:
                    self._holding = False
                    self._unref(w[b + C_HELD])
                    w[b + C_HELD] = -1
                    if w[H_PWAIT]:
                        w[H_PWAIT] = 0
                        wake_producer = True
                s = w[b + C_HELD]
                if s >= 0:  # handed to us by the producer while we were waiting
                    seq = w[self._so + s * S_WORDS + S_SEQ]
                elif w[b + C_NEXT] < w[H_WSEQ]:
                    seq = w[b + C_NEXT]
                    s = self._slot_of(seq)
                    w[b + C_HELD] = s
                    w[b + C_NEXT] = seq + 1
                    w[b + C_CONSUMED] += 1
                elif w[H_CLOSED]:
                    self.eof = True
                else:
                    w[b + C_WAITING] = int(timeout != 0 and not timed_out)
                if s >= 0:
                    n = w[self._so + s * S_WORDS + S_LEN]
                    if not (s < self.nslots and 0 <= n <= self.slot_size):
                        raise RingError(f"ring {self.name!r}: slot table corrupt (slot {s}, length {n})")
            finally:
                self._unlock()
            if wake_producer:
                self._notify(self._paddr)
            if s >= 0:
                self._holding = True
                return decode(self._views[s][:n], cache=self._decoded[s])
            if self.eof or timed_out or timeout == 0:
                return None
            if deadline == -1.0:
                deadline = None if timeout is None else time.monotonic() + timeout
            if not self._wait(deadline):
                timed_out = True  # one more look under the lock: a hand-off may have raced us
            # Woken (by the producer, or by anyone: the note's content is not read): look again.

    def _wait(self, deadline: float | None) -> bool:
        """Wait for a wake-up note (drained unread); False at ``deadline``."""
        step = None if deadline is None else deadline - time.monotonic()
        if step is not None and step <= 0:
            return False
        if select.select([self._rx], [], [], step)[0]:
            _drain(self._rx, self._note)
            return True
        return False

    def release(self) -> None:
        """Give back the message from the last ``get`` (its arrays must not be used after)."""
        w, b = self._w, self._b
        wake = False
        if not self._holding:
            return
        self._lock()
        try:
            self._holding = False
            self._unref(w[b + C_HELD])
            w[b + C_HELD] = -1
            wake = bool(w[H_PWAIT])
            w[H_PWAIT] = 0
        finally:
            self._unlock()
        if wake:
            self._notify(self._paddr)

    @property
    def dropped(self) -> int:
        return self._w[self._b + C_DROPPED]

    @property
    def consumed(self) -> int:
        return self._w[self._b + C_CONSUMED]

    @property
    def pending(self) -> int:
        return self._w[H_WSEQ] - self._w[self._b + C_NEXT]

    def producer_alive(self) -> bool:
        return pid_alive(self._w[H_PID])

    def close(self) -> None:
        """Detach: release what this consumer references; the producer and the other
        consumers go on undisturbed."""
        if not self._attached:
            return
        self._attached = False
        self._lock()
        try:
            wake = self._detach(self.index)
        finally:
            self._unlock()
        if wake:
            self._notify(self._paddr)
        self._rx.close()
        self._views.clear()
        self._decoded.clear()
        self._close_mapping()

    def __enter__(self) -> RingConsumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drain(sock: socket.socket, buf: bytearray) -> None:
    """Throw away every pending wake-up note (into ``buf``: no allocation). One look under the
    lock then covers them all, so a flood of forged notes costs one look per wake-up."""
    try:
        while True:
            sock.recv_into(buf)
    except (BlockingIOError, InterruptedError):
        pass


def _open_ring(name: str):
    try:
        return open_segment(name)
    except SegmentError as e:
        raise RingError(str(e)) from None


def ring_stats(name: str) -> RingStats:
    """Read a ring's counters without attaching as a consumer (for metrics)."""
    r = _Ring(name, _open_ring(name))
    try:
        if r._w[H_MAGIC] != MAGIC:
            raise RingError(f"{name!r} is not an edgeva ring")
        r._load_layout()
        return r.stats()
    finally:
        r._close_mapping()


def producer_pid(name: str) -> int | None:
    """The pid the producer of ring ``name`` recorded (0 if it had not yet), or None when no
    segment has that name. Whether that process lives tells a crashed ring from a live one."""
    try:
        shm = open_segment(name)
    except SegmentError:
        return None
    try:
        return shm.buf.cast("q")[H_PID] if shm.size >= H_WORDS * 8 else 0
    finally:
        shm.close()


def sweep_segments(prefix: str | None = None) -> list[str]:
    """Remove edgeva ring segments whose producer process is dead (left by a crash or a
    SIGKILL). Live rings are untouched. Returns the names removed.

    Only this user's regular files named ``edgeva.<prefix>.*`` are read or removed: any local
    user can create files in /dev/shm, and one named like ours (another user's, a symbolic link,
    an empty or unreadable file) must neither stop the agent from starting nor be removed by
    it. Those are left alone and said in one warning per sweep; this never raises for them."""
    removed: list[str] = []
    skipped: list[str] = []
    for name in list_segments(prefix):
        if not own_segment(name):
            skipped.append(f"{name} (another user's, or not a regular file)")
            continue
        try:
            pid = producer_pid(name)
        except (OSError, ValueError) as e:  # e.g. an empty file: mmap refuses it
            skipped.append(f"{name} ({type(e).__name__}: {e})")
            continue
        if pid is not None and not pid_alive(pid) and unlink_segment(name):
            removed.append(name)
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        log.warning("sweep of %s: left alone %d entr%s not ours to sweep: %s%s", SHM_DIR, len(skipped),
                    "y" if len(skipped) == 1 else "ies", "; ".join(skipped[:3]), more)
    return removed
