"""Relays between local rings and a link: how an app's graph crosses devices.

When an edge of a deployment goes from a module on this device to one on a peer, the agent
runs a ``RingToLink`` here (the upstream module's output ring -> a link stream) and the peer's
agent runs a ``LinkToRing`` (that stream -> a local ring that the downstream module consumes as
usual). Modules never see links: their input is a ring either way.

Copies per message: ring slot -> nng message (one copy, in ``Link.send``), kernel, nng buffer ->
ring slot (one copy of the array region, in ``LinkToRing``). Headers are re-packed, not copied.
"""

from __future__ import annotations

import logging
import threading

from agent.dataplane.codec import MessageTooLarge
from agent.dataplane.link import Link, LinkClosed, LinkTimeout, Policy, Received
from agent.dataplane.quietlog import QuietLog
from agent.dataplane.ring import RingConsumer, RingFull, RingProducer

__all__ = ["LinkToRing", "RingToLink"]

log = logging.getLogger("edgeva.relay")


class RingToLink:
    """A thread that consumes ring ``ring_name`` and sends each message on ``link``'s
    ``stream``.

    ``policy`` applies to both hops: ``block`` is lossless (a slow or absent peer holds the
    ring's producer back; the relay retries until the peer takes the message), ``drop_oldest``
    is for live sources (the ring consumer skips and the link queue drops; both are counted:
    ``ring_dropped`` and the link's ``dropped``). The consumer is attached in the constructor,
    so every message published after it returns is relayed. Ends by itself at the ring's end of
    stream (``done`` is set), or on ``stop``.
    """

    def __init__(
        self,
        ring_name: str,
        link: Link,
        stream: str,
        policy: Policy = "block",
        depth: int | None = None,
    ) -> None:
        self.link, self.stream, self.policy = link, stream, policy
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
                while not self._stop.is_set():
                    try:
                        self.link.send(self.stream, msg, timeout=0.5)
                        self.sent += 1
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

    def stop(self, timeout: float = 2.0) -> None:
        """Stop relaying (what the link already queued is still sent by the link)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {"sent": self.sent, "send_timeouts": self.send_timeouts,
                "ring_dropped": self.ring_dropped, "too_large": self.too_large}


class LinkToRing:
    """Publishes every message of ``link``'s ``stream`` into a new local ring ``ring_name``.

    Runs in the link's dispatch thread: each message's arrays are copied once, from the nng
    buffer straight into the reserved slot, and the header re-packed. ``slot_size`` must hold
    the largest encoded message (else it is skipped and counted in ``too_large``). While
    ``block`` consumers of the ring hold every slot, the relay waits (``reserve_timeout=None``:
    lossless, backpressure reaches the sender through the link) or, with a timeout, drops the
    message and counts it in ``dropped``. Consumers attach to ``ring_name`` as to any ring; attach
    them before the peer starts sending to see every message.
    """

    def __init__(
        self,
        link: Link,
        stream: str,
        ring_name: str,
        slot_size: int,
        nslots: int = 8,
        max_consumers: int = 16,
        reserve_timeout: float | None = None,
    ) -> None:
        self.link, self.stream = link, stream
        self.streams = [stream]  # every name it receives (aliases: see add_stream)
        self.reserve_timeout = reserve_timeout
        self._log = QuietLog(log, logging.ERROR)
        self.producer = RingProducer.create(ring_name, slot_size, nslots, max_consumers)
        self.published = self.dropped = self.too_large = 0
        self._closing = False
        link.on(stream, self._on_message)

    def _on_message(self, r: Received) -> None:
        prod, msg = self.producer, r.message
        step = 0.5 if self.reserve_timeout is None else self.reserve_timeout
        while True:
            try:
                w = prod.reserve(timeout=step)
                break
            except RingFull:
                if self.reserve_timeout is not None or self._closing:
                    self.dropped += 1
                    return
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

    def add_stream(self, stream: str) -> None:
        """Also publish what arrives on ``stream`` (the sender is about to be renamed to it:
        both names are received, so nothing is lost whenever the sender switches)."""
        if stream not in self.streams:
            self.streams.append(stream)
            self.link.on(stream, self._on_message)

    def close(self, unlink: bool = True) -> None:
        """Stop receiving the stream, then close the ring (consumers see end of stream)."""
        self._closing = True
        for s in self.streams:
            self.link.off(s)
        self.producer.close(unlink=unlink)

    def stats(self) -> dict:
        return {"published": self.published, "dropped": self.dropped, "too_large": self.too_large}

