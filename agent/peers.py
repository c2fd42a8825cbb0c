"""The agent's links to its peers: one nng Pair0 link per peer agent, found through MQTT state.

Who listens: of two agents, the one whose device id sorts first listens, on a port of its own
for that peer (a Pair0 listener serves one peer), and announces the address in its retained
state (``DeviceState.links[peer]``); the other dials it. ``--data-bind tcp://HOST:PORT`` gives
the host to listen on (and to announce; ``--data-advertise`` overrides it for NAT or a wildcard
bind) and the first port to try (0: any free port; N: N, N+1, ... one per peer).

Reconnects: a dialer redials by itself (nng) when the peer restarts on the same address; when
the listener restarts it gets a new port and announces it, and the dialer re-dials there.
Relays never see any of this: they hold a ``PeerLink``, a stand-in that forwards to whichever
``Link`` is current and re-registers streams and handlers on a new one. Until the peer's
address is known (a restarted agent restoring its apps before the peer's state arrived), a
``PeerLink`` has no link: ``send`` waits (``block`` relays keep the backpressure, live ones drop
and count in the ring), receive handlers wait registered.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from edgeva.agent.dataplane.link import (
    DEFAULT_MAX_MESSAGE,
    Handler,
    Link,
    LinkClosed,
    LinkError,
    LinkTimeout,
    LinkTLS,
)
from edgeva.schemas.message import Message
from edgeva.schemas.metrics import LinkMetrics

log = logging.getLogger("edgeva.peers")
PORT_TRIES = 64


class PeerLink:
    """The link to one peer as relays see it (duck-types the part of ``Link`` they use)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.link: Link | None = None
        self._streams: dict[str, tuple[str | None, int | None]] = {}
        self._handlers: dict[str, Handler] = {}
        self._cv = threading.Condition()
        self.closed = False
        self.replaced = 0  # links replaced (the listener moved: peer restarted)

    def attach(self, link: Link) -> Link | None:
        """Make ``link`` current; returns the previous one (the caller closes it)."""
        with self._cv:
            old, self.link = self.link, link
            for s, (policy, depth) in self._streams.items():
                link.open_stream(s, policy, depth)  # type: ignore[arg-type]
            for s, h in self._handlers.items():
                link.on(s, h)
            if old is not None:
                self.replaced += 1
            self._cv.notify_all()
        return old

    def open_stream(self, stream: str, policy: str | None = None, depth: int | None = None) -> None:
        with self._cv:
            self._streams[stream] = (policy, depth)
            if self.link is not None:
                self.link.open_stream(stream, policy, depth)  # type: ignore[arg-type]

    def send(self, stream: str, msg: Message, timeout: float | None = None,
             arrays: AbstractSet[str] | None = None) -> None:
        """``Link.send`` on the current link (``arrays``: only those are sent, None: all)."""
        deadline = time.monotonic() + (5.0 if timeout is None else timeout)
        while True:
            with self._cv:
                if self.closed:
                    raise LinkClosed(f"link to {self.peer} is closed")
                link = self.link
                if link is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cv.wait(left):
                        raise LinkTimeout(f"no link to {self.peer} yet (its address is not known)")
                    continue
            try:
                link.send(stream, msg, timeout=max(0.0, deadline - time.monotonic()), arrays=arrays)
                return
            except LinkClosed:
                with self._cv:  # replaced under us: go on with the new one
                    if self.closed or self.link is link:
                        raise
            if time.monotonic() > deadline:
                raise LinkTimeout(f"link to {self.peer}: send timed out")

    def on(self, stream: str, handler: Handler) -> None:
        with self._cv:
            self._handlers[stream] = handler
            if self.link is not None:
                self.link.on(stream, handler)

    def off(self, stream: str) -> None:
        with self._cv:
            self._handlers.pop(stream, None)
            link = self.link
        if link is not None:
            link.off(stream)

    def pause_peer(self, stream: str, pause: bool) -> None:
        """Flow control of one of the peer's streams (``Link.pause_peer``); nothing while no link
        is up: a new link starts with no pauses on either side."""
        link = self.link
        if link is not None:
            link.pause_peer(stream, pause)

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    def metrics(self, reset: bool = True) -> LinkMetrics:
        link = self.link
        return link.metrics(reset) if link is not None else LinkMetrics()

    def stats(self) -> dict:
        link = self.link
        st = link.stats() if link is not None else {"state": "unknown_address", "connected": False}
        return {**st, "replaced": self.replaced}

    def close(self) -> None:
        with self._cv:
            self.closed = True
            link, self.link = self.link, None
            self._cv.notify_all()
        if link is not None:
            link.close(drain=0.2)


def _split(addr: str) -> tuple[str, str, int]:
    scheme, rest = addr.split("://", 1)
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls+tcp") or not host or not port.isdigit():
        raise ValueError(f"data address {addr!r}: use tcp://HOST:PORT (or tls+tcp://HOST:PORT)")
    return scheme, host.strip("[]"), int(port)


class Peers:
    """Every ``PeerLink`` of this agent, and which addresses it announces.

    ``bind``: ``tcp://HOST:PORT`` or None (no data plane: apps spanning devices are refused).
    ``on_change`` is called when the announced addresses change (publish the state again)."""

    def __init__(
        self,
        device: str,
        bind: str | None,
        advertise: str | None = None,
        tls: LinkTLS | None = None,
        tls_check_name: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.device, self.bind, self.tls, self.tls_check_name = device, bind, tls, tls_check_name
        self.max_message_size, self.on_change = max_message_size, on_change
        self.links: dict[str, PeerLink] = {}
        self.listening: dict[str, str] = {}  # peer -> address we listen on for it (announced)
        self.announced: dict[str, str] = {}  # peer -> address it listens on for us
        self.dialed: dict[str, str] = {}  # peer -> address our current dial link uses
        self._lock = threading.RLock()
        self._next_port = 0
        if bind is not None:
            scheme, self.host, self._next_port = _split(bind)
            self.port = self._next_port  # the bind's port: listeners take it and the ports after it
            if tls is not None and scheme == "tcp":
                scheme = "tls+tcp"
            if scheme == "tls+tcp" and tls is None:
                raise ValueError("tls+tcp:// data address needs --link-tls-ca/--link-tls-cert/--link-tls-key")
            self.scheme = scheme
            self.adv_host = advertise or (self.host if self.host not in ("0.0.0.0", "::", "*") else socket.getfqdn())

    @property
    def enabled(self) -> bool:
        return self.bind is not None

    @property
    def address(self) -> str | None:
        """The data-plane address this agent announces in its state (the advertised host and the
        bind's port); None without a data plane."""
        return f"{self.scheme}://{self.adv_host}:{self.port}" if self.enabled else None

    def listens_for(self, peer: str) -> bool:
        return self.device < peer

    def get(self, peer: str) -> PeerLink:
        """The link to ``peer``, made on first use (listen now, or dial once its address is known)."""
        if not self.enabled:
            raise LinkError(f"device {self.device} has no data plane (start its agent with --data-bind)")
        with self._lock:
            pl = self.links.get(peer)
            if pl is not None:
                return pl
            pl = self.links[peer] = PeerLink(peer)
            if self.listens_for(peer):
                link, addr = self._listen(peer)
                pl.attach(link)
                self.listening[peer] = addr
                changed = True
            else:
                changed = False
                if peer in self.announced:
                    self._dial(peer, self.announced[peer])
        if changed:
            self.on_change()
        return pl

    def _listen(self, peer: str) -> tuple[Link, str]:
        kw = {"name": f"{self.device}<-{peer}", "max_message_size": self.max_message_size, "tls": self.tls}
        if self._next_port == 0:
            link = Link.listen(f"{self.scheme}://{self.host}:0", **kw)
        else:
            for _ in range(PORT_TRIES):
                port, self._next_port = self._next_port, self._next_port + 1
                try:
                    link = Link.listen(f"{self.scheme}://{self.host}:{port}", **kw)
                    break
                except LinkError:
                    continue
            else:
                raise LinkError(f"no free port for a link listener from {self._next_port - PORT_TRIES}")
        port = link.address.rpartition(":")[2]
        host = self.adv_host if ":" not in self.adv_host else f"[{self.adv_host}]"
        addr = f"{self.scheme}://{host}:{port}"
        log.info("listening for peer %s on %s (announced as %s)", peer, link.address, addr)
        return link, addr

    def _dial(self, peer: str, addr: str) -> None:
        tls = None
        if self.tls is not None:
            tls = LinkTLS(self.tls.ca, self.tls.cert, self.tls.key, server_name=peer if self.tls_check_name else None)
        try:
            link = Link.dial(addr, name=f"{self.device}->{peer}", max_message_size=self.max_message_size, tls=tls)
        except LinkError as e:
            log.error("cannot dial peer %s: %s", peer, e)
            return
        self.dialed[peer] = addr
        old = self.links[peer].attach(link)
        log.info("dialing peer %s at %s%s", peer, addr, " (it moved)" if old else "")
        if old is not None:
            threading.Thread(target=old.close, kwargs={"drain": 0}, daemon=True).start()

    def peer_state(self, peer: str, links: dict[str, str]) -> None:
        """A peer's retained state arrived: dial (again) if it listens for us somewhere new."""
        addr = links.get(self.device)
        if not addr or not self.enabled or self.listens_for(peer):
            return
        with self._lock:
            self.announced[peer] = addr
            if peer in self.links and self.dialed.get(peer) != addr:
                self._dial(peer, addr)

    def release(self, peer: str) -> None:
        """No relay uses the link to ``peer`` any more: close it and stop listening for it (its
        port, nng threads and buffers go). A later ``get`` makes a new one."""
        with self._lock:
            pl = self.links.pop(peer, None)
            was_listening = self.listening.pop(peer, None) is not None
            self.dialed.pop(peer, None)
        if pl is None:
            return
        pl.close()
        log.info("link to peer %s released (no app uses it)", peer)
        if was_listening:
            self.on_change()

    def metrics(self, reset: bool = True) -> dict[str, LinkMetrics]:
        with self._lock:
            return {p: pl.metrics(reset) for p, pl in self.links.items()}

    def close(self) -> None:
        with self._lock:
            links, self.links = list(self.links.values()), {}
        for pl in links:
            pl.close()
