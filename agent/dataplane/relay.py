"""Relays between local rings and a link: how an app's graph crosses devices.

When an edge of a deployment goes from a module on this device to one on a peer, the agent
runs a ``RingToLink`` here (the upstream module's output ring -> a link stream) and the peer's
agent runs a ``LinkToRing`` (that stream -> a local ring that the downstream module consumes as
usual). Modules never see links: their input is a ring either way.

Copies per message: ring slot -> nng message (one copy, in ``Link.send``), kernel, nng buffer ->
ring slot (one copy of the array region, in ``LinkToRing``). Headers are re-packed, not copied.
Arrays no module beyond the link uses (``schemas.crossing``) are not copied at all: the
``RingToLink`` leaves them out as it encodes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Set as AbstractSet

from edgeva.agent.dataplane.codec import MessageTooLarge
from edgeva.agent.dataplane.link import Link, LinkClosed, LinkTimeout, Policy, Received
from edgeva.agent.dataplane.quietlog import QuietLog
from edgeva.agent.dataplane.ring import RingConsumer, RingFull, RingProducer
from edgeva.agent.settings import default
from edgeva.schemas.message import Message

__all__ = ["LinkToRing", "RingToLink"]

log = logging.getLogger("edgeva.relay")

# A pause reaches the sender one trip late, and what it already handed to TCP still arrives:
# on loopback under load a whole 1.4 MB stream was in the socket buffers before the first
# pause was read, and a backlog of 4 slots dropped frames of a lossless stream. So the backlog
# holds what the socket buffers can (Linux: a few MB each way), and the sender keeps what it
# still has queued for a paused stream.
BACKLOG_MAX = 256  # messages a link->ring relay keeps while its ring is full (the peer is paused)
BACKLOG_SLOTS = 4  # ... and at most this many ring slots' worth of bytes, or BACKLOG_BYTES if more
BACKLOG_BYTES = 16 << 20


class RingToLink:
    """A thread that consumes ring ``ring_name`` and sends each message on ``link``'s
    ``stream``.

    ``policy`` applies to both hops: ``block`` is lossless (a slow or absent peer holds the
    ring's producer back; the relay retries until the peer takes the message), ``drop_oldest``
    is for live sources (the ring consumer skips and the link queue drops; both are counted:
    ``ring_dropped`` and the link's ``dropped``). The consumer is attached in the constructor,
    so every message published after it returns is relayed. Ends by itself at the ring's end of
    stream (``done`` is set), or on ``stop``.

    ``arrays``: the names of the arrays to send (None: all); the others are left out as each
    message is encoded (``Link.send``), so a peer whose modules read only detections gets no
    frame. ``keep`` changes it from the next message read on. ``stats`` says which arrays
    crossed and which were left out.
    """

    def __init__(
        self,
        ring_name: str,
        link: Link,
        stream: str,
        policy: Policy = "block",
        depth: int | None = None,
        arrays: AbstractSet[str] | None = None,
    ) -> None:
        self.link, self.stream, self.policy = link, stream, policy
        self.arrays: frozenset[str] | None = None if arrays is None else frozenset(arrays)
        self.crossed: frozenset[str] = frozenset()  # names of the arrays sent so far
        self.left_out: frozenset[str] = frozenset()  # ... and of those left out
        link.open_stream(stream, policy, depth)
        self._cons = RingConsumer.attach(ring_name, policy=policy)
        self.sent = self.send_timeouts = self.too_large = 0
        self._dropped_at_end: int | None = None  # set before the consumer's mapping goes
        self._log = QuietLog(log, logging.ERROR)
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ring->link {stream}", daemon=True)
        self._thread.start()

    @property
    def ring_dropped(self) -> int:
        end = self._dropped_at_end
        return self._cons.dropped if end is None else end

    def _run(self) -> None:
        cons = self._cons
        try:
            while not self._stop.is_set():
                msg = cons.get(timeout=0.2)  # releases the previous slot
                if msg is None:
                    if cons.eof:
                        break
                    continue
                keep = self.arrays  # read once: ``keep`` may swap it from another thread
                while not self._stop.is_set():
                    try:
                        self.link.send(self.stream, msg, timeout=0.5, arrays=keep)
                        self.sent += 1
                        for k in msg.arrays:  # new sets, not add(): stats() reads them from other threads
                            if keep is None or k in keep:
                                if k not in self.crossed:
                                    self.crossed = self.crossed | {k}
                            elif k not in self.left_out:
                                self.left_out = self.left_out | {k}
                        break
                    except LinkTimeout:
                        self.send_timeouts += 1  # block: keep the backpressure, try again
                    except MessageTooLarge as e:
                        self.too_large += 1
                        self._log.note("relay %s: message %s skipped: %s", self.stream, msg.frame_id, e)
                        break
        except LinkClosed:
            pass
        except Exception:
            log.exception("relay ring->link %s failed", self.stream)
        finally:
            self._dropped_at_end = cons.dropped  # the mapping goes with close: keep the count
            cons.close()
            self.done.set()

    def retarget(self, stream: str) -> None:
        """Send on ``stream`` from the next message on (the upstream module's identity changed:
        an ``update`` of an app spanning devices). No message is lost or sent twice: the ring
        cursor stays. The receiver must already listen on ``stream`` (``LinkToRing.add_stream``)."""
        if stream != self.stream:
            self.link.open_stream(stream, self.policy, None)
            self.stream = stream

    def keep(self, arrays: AbstractSet[str] | None) -> None:
        """Send only the arrays named ``arrays`` (None: all) from the next message read on
        (the apps using this relay changed: see ``agent.core``)."""
        self.arrays = None if arrays is None else frozenset(arrays)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop relaying (what the link already queued is still sent by the link)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stats(self) -> dict:
        """Counters, and ``arrays``: the names of the arrays sent so far, ``left_out``: of those
        left out, ``keeps``: the names it sends now (None: all)."""
        keep = self.arrays
        return {"sent": self.sent, "send_timeouts": self.send_timeouts,
                "ring_dropped": self.ring_dropped, "too_large": self.too_large,
                "arrays": sorted(self.crossed), "left_out": sorted(self.left_out),
                "keeps": None if keep is None else sorted(keep)}


class LinkToRing:
    """Publishes every message of ``link``'s ``stream`` into a new local ring ``ring_name``.

    ``slot_size`` must hold the largest encoded message (else it is skipped and counted in
    ``too_large``). Consumers attach to ``ring_name`` as to any ring; attach them before the
    peer starts sending to see every message.

    The link's dispatch thread, which every stream from that peer shares (other tenants'
    included), never waits here. While a slot is free it copies the message straight from the
    nng buffer into the slot (the one copy) and the header is re-packed. When ``block``
    consumers of the ring hold every slot, the message is kept in this stream's backlog (at
    most ``BACKLOG_MAX`` messages and ``BACKLOG_SLOTS`` slots' worth of bytes or ``BACKLOG_BYTES``), the peer is
    told to pause this stream (``Link.pause_peer``), and this relay's own thread moves the
    backlog into the ring as slots free up, then tells the peer to resume. So a stuck consumer
    holds back only its own stream: its sender waits (lossless, backpressure reaches its
    producer), everyone else's streams go on. What arrives over a full backlog (a peer that
    does not honour the pause) is dropped and counted in ``dropped``. ``reserve_timeout``: the
    longest the relay's thread waits for a slot for one message before dropping it (None:
    wait as long as the consumers take, lossless).
    """

    def __init__(
        self,
        link: Link,
        stream: str,
        ring_name: str,
        slot_size: int,
        nslots: int = default("slots"),
        max_consumers: int = 16,
        reserve_timeout: float | None = None,
    ) -> None:
        self.link, self.stream = link, stream
        self.streams = [stream]  # every name it receives (aliases: see add_stream)
        self.reserve_timeout = reserve_timeout
        self._log = QuietLog(log, logging.ERROR)
        self._drop_log = QuietLog(log, logging.WARNING)
        self.producer = RingProducer.create(ring_name, slot_size, nslots, max_consumers)
        self.published = self.dropped = self.too_large = self.backlogged = 0
        self._closing = False
        self._cv = threading.Condition()
        self._backlog: deque[tuple[str, Message, int]] = deque()  # (stream, message, bytes)
        self._backlog_bytes = 0
        self._backlog_cap = max(BACKLOG_SLOTS * self.producer.slot_size, BACKLOG_BYTES)
        self._busy = False  # the relay's thread owns the producer (a message between backlog and ring)
        self._paused: set[str] = set()  # stream names the peer was asked to pause
        self._thread = threading.Thread(target=self._drain, name=f"link->ring {stream}", daemon=True)
        self._thread.start()
        link.on(stream, self._on_message)

    def _on_message(self, r: Received) -> None:
        """In the link's dispatch thread: into the ring if a slot is free now, else backlog."""
        msg = r.message
        with self._cv:
            if not self._backlog and not self._busy and not self._closing:
                try:
                    w = self.producer.reserve(timeout=0)
                except RingFull:
                    w = None
                if w is not None:
                    self._write(w, msg)
                    return
            if self._closing:
                return
            n = r.lease.nbytes
            if len(self._backlog) >= BACKLOG_MAX or self._backlog_bytes + n > self._backlog_cap:
                self.dropped += 1
                self._drop_log.note("relay link->ring %s: backlog full (%d messages), message %s dropped: "
                                    "the peer goes on sending a paused stream", self.stream, len(self._backlog),
                                    msg.frame_id)
            else:
                # The arrays stay views of the nng buffer: keeping the message keeps its buffer.
                self._backlog.append((r.stream, msg, n))
                self._backlog_bytes += n
                self.backlogged += 1
                self._cv.notify()
            if r.stream not in self._paused:
                self._paused.add(r.stream)
                # Under the lock, as the drain's resume: a pause sent after the drain emptied the
                # backlog and resumed would leave the sender paused for good (seen under load).
                self._tell_peer(r.stream, True)

    def _write(self, w, msg: Message) -> None:
        """Copy ``msg`` into the reserved slot and publish it (by whichever thread owns the
        producer now)."""
        prod = self.producer
        try:
            for k, a in msg.arrays.items():
                w.put(k, a)  # the one copy: nng buffer -> shared-memory slot
            prod.commit(w, msg)
        except MessageTooLarge as e:
            prod.abort()
            self.too_large += 1
            self._log.note("relay link->ring %s: message %s skipped: %s", self.stream, msg.frame_id, e)
            return
        except BaseException:
            prod.abort()
            raise
        self.published += 1

    def _drain(self) -> None:
        """The relay's own thread: moves the backlog into the ring, waiting for slots as long
        as the ring's consumers take (only this stream waits), then resumes the peer."""
        prod = self.producer
        while True:
            with self._cv:
                while not self._backlog and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                _stream, msg, n = self._backlog[0]
                self._busy = True
            waited = 0.0
            w = None
            try:
                while not self._closing:
                    try:
                        w = prod.reserve(timeout=0.2)
                        break
                    except RingFull:
                        waited += 0.2
                        if self.reserve_timeout is not None and waited >= self.reserve_timeout:
                            break
                if w is not None:
                    self._write(w, msg)
                elif not self._closing:
                    self.dropped += 1
            except Exception:
                self._log.note("relay link->ring %s: message %s lost", self.stream, msg.frame_id, exc_info=True)
            finally:
                with self._cv:
                    self._backlog.popleft()
                    self._backlog_bytes -= n
                    self._busy = False
                    if not self._backlog and not self._closing:
                        for name in sorted(self._paused):
                            self._tell_peer(name, False)
                        self._paused.clear()
                del msg, w  # the nng buffer goes now, not when the next message comes

    def _tell_peer(self, stream: str, pause: bool) -> None:
        """Pause or resume ``stream`` at the sender; called with ``_cv`` held, so that pauses and
        resumes reach the link in the order the backlog saw them (``pause_peer`` never waits)."""
        try:
            self.link.pause_peer(stream, pause)
        except LinkClosed:
            pass
        except Exception:  # flow control must never end the dispatch or the drain thread
            self._log.note("relay link->ring %s: could not %s the peer", self.stream,
                           "pause" if pause else "resume", exc_info=True)

    def add_stream(self, stream: str) -> None:
        """Also publish what arrives on ``stream`` (the sender is about to be renamed to it:
        both names are received, so nothing is lost whenever the sender switches)."""
        if stream not in self.streams:
            self.streams.append(stream)
            self.link.on(stream, self._on_message)

    def close(self, unlink: bool = True) -> None:
        """Stop receiving the stream, then close the ring (consumers see end of stream)."""
        for s in self.streams:
            self.link.off(s)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        with self._cv:
            self._backlog.clear()
            self._backlog_bytes = 0
        self.producer.close(unlink=unlink)

    def stats(self) -> dict:
        return {"published": self.published, "dropped": self.dropped, "too_large": self.too_large,
                "backlogged": self.backlogged, "backlog": len(self._backlog)}
