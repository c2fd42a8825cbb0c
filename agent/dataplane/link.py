"""Link: one nng Pair0 socket to ONE peer agent, carrying many named streams.

An agent makes one ``Link`` per peer device: one side ``Link.listen(addr)``, the other
``Link.dial(addr)``. A Pair0 listener serves one peer at a time (a second dialer's sends time
out), so an agent listens on one address *per peer* (port 0, then ``address`` has the real
port) and tells that peer, e.g. in its retained state message; never share a listening address
between two peers. Convention that avoids races: of two peers, the one whose device id sorts
first listens, the other dials.

Wire format. Each nng message is a link envelope followed by the ring's encoding
(``agent.dataplane.codec``: prefix, 64-byte aligned arrays, msgpack header)::

    0   magic b"EVL1" | env_len/64 u8 | name_len u8 | flags u16 | epoch u32 | reserved u32
        (flags: 1 PAUSE, 2 RESUME: a flow-control message for the stream, no body follows)
    16  link seq u64  (per sender epoch, in wire order; gaps = messages lost in transit)
    24  sent_ns i64   (sender's time.time_ns() when handed to nng)
    32  stream name (utf-8, <= 200 B), zero padding to a multiple of 64

The envelope is a multiple of 64 bytes so that the codec's 64-byte array alignment holds
relative to the message body. Numbers are little-endian (every supported target is).

Sending (``send``): the message is encoded once, by the calling thread, straight into an nng
message (arrays copied once from the caller's buffers; big messages are refilled once nng has
written them, see ``msgpool``, so nng's zeroing of each new buffer is skipped; small messages go
through a reused per-stream buffer), then handed to nng without another Python-side copy. If the
socket is idle and nothing is queued it goes out at once; otherwise it waits in a bounded queue
drained by one sender thread. Per stream: ``block`` (the caller waits up to ``timeout`` while
that stream has ``depth`` messages queued, then ``LinkTimeout``) or ``drop_oldest`` (the oldest
queued message of that stream is dropped and counted; while disconnected, a live stream keeps
only its newest ``depth`` messages). One thread sends on a given stream at a time.

Per-stream flow control. All streams to a peer share one socket and one dispatch thread on the
receiving side, so a receiver must never wait for one stream's consumer there (one tenant's
stuck consumer would stall every other tenant's stream). Instead a receiver that cannot take a
stream now keeps what arrived (bounded) and tells the sender ``pause_peer(stream, True)``: an
envelope with flag ``PAUSE`` and no body; ``RESUME`` when it has caught up. A paused ``block``
stream's ``send`` waits as on a full queue (so backpressure still reaches its producer, and
only its producer); a paused ``drop_oldest`` stream drops new messages (counted). Pauses are
forgotten when the peer reconnects or restarts.

Receiving: ``recv`` (one consumer for all streams) or ``on(stream, handler)`` (a dispatch thread
calls each stream's handler; handlers must not wait: see flow control). A link that only sends
runs the dispatch thread too, to hear flow control. A ``Received`` message's arrays are
read-only numpy views over the nng message buffer: no copy. Lifetime: the buffer is owned by a cffi object that the views
reference, so it is freed when the last view (and the ``Lease``) is gone; a stray view can never
read freed memory. ``Lease.release()`` drops the link's own reference: call it (or drop the
``Received``) as soon as the arrays are consumed, so that nng memory does not pile up.

Failures: a message larger than ``max_message_size`` raises ``LinkMessageTooLarge`` in ``send``
before anything is sent (both peers must use the same limit: nng drops the connection when a
received message exceeds the receiver's). A dialer reconnects by itself (nng backoff 20-500 ms);
a TLS peer whose certificate does not verify never connects and is counted in
``stats()["auth_failures"]``, logged, and shown as ``state == "auth_failed"``.

Network time (``LinkMetrics.network_ms``) is receiver ``time_ns()`` minus sender ``time_ns()``:
exact on one host, and across devices only as good as their clock sync (NTP: ~1 ms; PTP better).
It can read negative when the receiver's clock is behind.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pynng

from edgeva.agent.dataplane.codec import (
    ARRAYS_OFFSET,
    CodecError,
    FrameWriter,
    HeaderTooLarge,
    MessageTooLarge,
    decode,
    encoded_size,
)
from edgeva.agent.dataplane.msgpool import MsgPool
from edgeva.agent.dataplane.quietlog import QuietLog
from edgeva.agent.settings import default, mb_to_bytes
from edgeva.schemas.message import Message
from edgeva.schemas.metrics import P2, LinkMetrics

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Handler",
    "Lease",
    "Link",
    "LinkClosed",
    "LinkError",
    "LinkMessageTooLarge",
    "LinkTLS",
    "LinkTimeout",
    "Policy",
    "Received",
]

log = logging.getLogger("edgeva.link")
_ffi, _lib = pynng.ffi, pynng.lib

Policy = Literal["block", "drop_oldest"]
DEFAULT_MAX_MESSAGE = mb_to_bytes(default("link_max_mb"))  # --link-max-mb
ENV_MAGIC = b"EVL1"
ENV = struct.Struct("<4sBBHIIqq")  # see the module docstring; 32 bytes
MAX_NAME = 200
_SEQ_I64, _TS_I64 = 2, 3  # int64 indices of seq and sent_ns in the envelope
_SMALL = 64 << 10  # below this, encode into a reused buffer and copy (cheaper than a big alloc)
_SEND_SLICE_MS = 100  # sender thread's blocking-send slice: how fast it notices close/staleness
_RECV_SLICE_MS = 200  # dispatch thread's receive slice: how fast it notices close
_CLOSE_JOIN_S = 30.0  # close() waits this long for each of its threads to leave nng (one slice when well)
_MAX_NAMES = 1024  # stream names remembered (decoded once); more are decoded per message
FLAG_PAUSE, FLAG_RESUME = 1, 2  # envelope flags of flow-control messages (see the docstring)
_CTRL = FLAG_PAUSE | FLAG_RESUME
_PAUSE_SLICE_S = 0.1  # a paused sender re-checks this often (a reconnect clears pauses unlocked)


class LinkError(RuntimeError):
    """Link misuse or an nng failure; the message names the link and what happened."""


class LinkTimeout(LinkError, TimeoutError):
    """A ``block`` stream's queue stayed full for the whole timeout (peer slow or gone)."""


class LinkClosed(LinkError):
    """The link was closed."""


class LinkMessageTooLarge(LinkError, MessageTooLarge):
    """The message exceeds ``max_message_size``; nothing was sent."""


@dataclass(frozen=True)
class LinkTLS:
    """Mutual TLS (``tls+tcp://``): PEM file paths. ``ca`` verifies the peer, ``cert``/``key``
    identify this agent, ``server_name`` (dialer only) must match the listener certificate's
    subjectAltName/CN (use the peer's device id); None checks the chain only."""

    ca: str
    cert: str
    key: str
    server_name: str | None = None

    def config(self, server: bool) -> pynng.TLSConfig:
        def read(path: str) -> str:
            with open(path) as f:
                return f.read()

        return pynng.TLSConfig(
            pynng.TLSConfig.MODE_SERVER if server else pynng.TLSConfig.MODE_CLIENT,
            server_name=None if server else self.server_name,
            ca_string=read(self.ca),
            own_cert_string=read(self.cert),
            own_key_string=read(self.key),
            auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED,  # both sides verify
        )


class Lease:
    """Keeps a received message's nng buffer referenced (see the module docstring)."""

    __slots__ = ("_buf", "seq", "sent_ns", "recv_ns", "nbytes")

    def __init__(self, buf: memoryview, seq: int, sent_ns: int, recv_ns: int) -> None:
        self._buf: memoryview | None = buf
        self.seq, self.sent_ns, self.recv_ns, self.nbytes = seq, sent_ns, recv_ns, len(buf)

    @property
    def held(self) -> bool:
        return self._buf is not None

    def release(self) -> None:
        """Done with the message: nng memory is freed once no array view references it."""
        self._buf = None


class Received(NamedTuple):
    stream: str
    message: Message
    lease: Lease


Handler = Callable[[Received], None]


class _Window:
    """Last-interval samples (ms) in a preallocated array: no allocation per sample."""

    __slots__ = ("a", "n")

    def __init__(self, size: int = 4096) -> None:
        self.a = np.zeros(size)
        self.n = 0

    def add(self, x: float) -> None:
        self.a[self.n % len(self.a)] = x
        self.n += 1

    def take(self, reset: bool) -> P2:
        k = min(self.n, len(self.a))
        if reset:
            self.n = 0
        if not k:
            return P2()
        p50, p95 = np.percentile(self.a[:k], (50, 95))
        return P2(p50=round(float(p50), 3), p95=round(float(p95), 3))


class _Stream:
    """Send-side state of one stream (touched by its one sending thread and under the lock)."""

    __slots__ = ("name", "policy", "depth", "env", "queued", "dropped", "scratch", "cscratch",
                 "writer", "pp", "paused", "ctrl")

    def __init__(self, name: str, policy: Policy, depth: int, epoch: int, flags: int = 0) -> None:
        raw = name.encode()
        if not raw or len(raw) > MAX_NAME:
            raise LinkError(f"stream name {name!r}: 1..{MAX_NAME} utf-8 bytes")
        if policy not in ("block", "drop_oldest"):
            raise LinkError(f"stream {name!r}: unknown policy {policy!r} (block or drop_oldest)")
        if depth < 1:
            raise LinkError(f"stream {name!r}: depth must be >= 1")
        units = (ENV.size + len(raw) + 63) // 64
        env = bytearray(units * 64)
        ENV.pack_into(env, 0, ENV_MAGIC, units, len(raw), flags, epoch, 0, 0, 0)
        env[ENV.size : ENV.size + len(raw)] = raw
        self.name, self.policy, self.depth, self.env = name, policy, depth, bytes(env)
        self.queued = self.dropped = 0
        self.paused = False  # the peer asked us to hold this stream
        self.ctrl = bool(flags)  # a flow-control sender (pause_peer), not a data stream
        self.scratch = bytearray()
        self.cscratch = None  # cffi view of scratch, made once per buffer
        self.writer: FrameWriter | None = None
        self.pp = _ffi.new("nng_msg **")

    def grow(self, size: int) -> None:
        ne = len(self.env)
        self.scratch = bytearray(max(size, ne + ARRAYS_OFFSET + 64))
        self.scratch[:ne] = self.env
        self.cscratch = _ffi.from_buffer(self.scratch)
        self.writer = FrameWriter(memoryview(self.scratch)[ne:])


class _Out:
    """One encoded nng message waiting to be sent (owned by us until nng accepts it).
    ``pool``: set when the message belongs to the link's ``MsgPool`` (which owns it)."""

    __slots__ = ("stream", "msg", "nbytes", "pool")

    def __init__(self, stream: _Stream, msg, nbytes: int, pool: MsgPool | None = None) -> None:
        self.stream, self.msg, self.nbytes, self.pool = stream, msg, nbytes, pool

    def free(self) -> None:
        if self.msg is not None:
            if self.pool is not None:
                self.pool.give_back(self.msg)
            else:
                _lib.nng_msg_free(self.msg)
            self.msg = None


def parse(buf: memoryview) -> tuple[bytes, int, int, int, Message]:
    """One received link message -> (stream name bytes, sender epoch, seq, sent_ns, message).

    Everything in it comes from the peer: raises ``CodecError`` (and nothing else) when the
    envelope or the frame is not exactly what ``Link.send`` makes."""
    raw, _flags, epoch, seq, sent, units = parse_envelope(buf)
    return raw, epoch, seq, sent, decode(buf[units * 64 :])


def parse_envelope(buf: memoryview) -> tuple[bytes, int, int, int, int, int]:
    """A received message's envelope -> (stream name bytes, flags, sender epoch, seq, sent_ns,
    envelope size in 64 B units). Raises ``CodecError`` (and nothing else) on a bad one."""
    n = len(buf)
    if n < ENV.size:
        raise CodecError(f"message of {n} B is shorter than the {ENV.size} B envelope")
    magic, units, nlen, flags, epoch, _r, seq, sent = ENV.unpack_from(buf, 0)
    if magic != ENV_MAGIC:
        raise CodecError(f"bad envelope magic {magic!r}")
    if not 0 < nlen <= MAX_NAME or units != (ENV.size + nlen + 63) // 64 or units * 64 > n:
        raise CodecError(f"envelope of {units} x 64 B with a {nlen} B stream name does not fit {n} B")
    raw = bytes(buf[ENV.size : ENV.size + nlen])
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise CodecError(f"stream name {raw!r} is not UTF-8") from None
    return raw, flags, epoch, seq, sent, units


def _check(rc: int) -> None:
    if rc:
        pynng.check_err(rc)


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep multi-MB message buffers in the heap instead of a fresh mmap per message.

    nng allocates every message (and glibc serves a 2.7 MB one with mmap, then unmaps it on
    free), so each frame costs ~700 page faults on each side. Raising the mmap and trim
    thresholds lets freed buffers be reused: +20 % frames/s on a 720p link here. Process-wide
    and glibc-only; a no-op elsewhere.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


class Link:
    """A Pair0 link to one peer; see the module docstring. Build with ``listen`` or ``dial``."""

    def __init__(
        self,
        addr: str,
        *,
        listen: bool,
        name: str = "",
        tls: LinkTLS | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        send_timeout: float = 5.0,
        policy: Policy = "block",
        depth: int = 4,
        recv_buffer: int = 2,
    ) -> None:
        """See ``listen``/``dial``. ``max_message_size``: the largest message either way (set
        the same on both peers). ``send_timeout``: default wait of ``block`` streams.
        ``policy``/``depth``: defaults of streams not opened with ``open_stream``.
        ``recv_buffer``: messages nng reads ahead while the receiver is busy (memory: up to
        ``recv_buffer * max_message_size``)."""
        _tune_malloc()
        scheme = addr.split("://", 1)[0]
        if scheme not in ("tcp", "tls+tcp", "ipc", "inproc"):
            raise LinkError(f"link address {addr!r}: use tcp://HOST:PORT or tls+tcp://HOST:PORT")
        if (scheme == "tls+tcp") != (tls is not None):
            raise LinkError(f"link address {addr!r}: tls+tcp:// needs LinkTLS, and LinkTLS needs tls+tcp://")
        self.name = name or addr
        self.max_message_size = int(max_message_size)
        self.send_timeout = send_timeout
        self.default_policy, self.default_depth = policy, depth
        self._epoch = int.from_bytes(np.random.bytes(4), "little")
        self._sock = pynng.Pair0(
            recv_max_size=self.max_message_size,
            send_timeout=_SEND_SLICE_MS,
            reconnect_time_min=20,
            reconnect_time_max=500,
            recv_buffer_size=recv_buffer,
            tls_config=tls.config(server=listen) if tls else None,
        )
        self._s = self._sock.socket
        self._pipes: set[int] = set()
        self._pipe_lock = threading.Lock()  # leaf lock: pipe callbacks never wait on send locks
        self._connected_ev = threading.Event()
        self._sock.add_post_pipe_connect_cb(self._on_pipe_add)
        self._sock.add_post_pipe_remove_cb(self._on_pipe_remove)
        # Send side.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._queue: deque[_Out] = deque()
        # Big messages are refilled rather than allocated (see msgpool): up to a queue's worth
        # plus the ones nng is writing, so memory stays what a full queue holds anyway.
        self._pool = MsgPool(depth + 2)
        self._inflight = False
        self._closing = self._closed = False
        self._streams: dict[str, _Stream] = {}
        self._ctrl: dict[tuple[str, int], _Stream] = {}  # (stream, flag) -> its flow-control sender
        self._seq = 0
        self.bytes_sent = self.messages_sent = self.dropped = self.send_timeouts = 0
        self.connects = 0
        self._last_auth = 0
        # Receive side.
        self._rx_pp = _ffi.new("nng_msg **")
        self._recv_ms = -2
        self._handlers: dict[str, Handler] = {}
        self._dispatch_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._dispatch_ident = 0
        self._recv_mode = False  # recv() owns the receive side (no dispatcher)
        self._names: dict[bytes, str] = {}
        self._peer_epoch, self._next_seq = -1, 0
        self.bytes_received = self.messages_received = self.lost = self.unrouted = self.bad = 0
        self.pauses_sent = self.pauses_received = 0
        # a peer sending garbage gets one log line per interval, not one per message
        self._bad_log = QuietLog(log)
        self._handler_log = QuietLog(log, logging.ERROR)
        self._ser, self._net, self._deser = _Window(), _Window(), _Window()
        try:
            if listen:
                self._ep = self._sock.listen(addr)
                self.address = self._bound_address(addr)
            else:
                # Non-blocking: nng keeps (re)dialing in the background, also after a peer restart.
                self._ep = self._sock.dial(addr, block=False)
                self.address = addr
        except pynng.NNGException as e:
            self._sock.close()
            raise LinkError(f"link {self.name}: cannot {'listen on' if listen else 'dial'} {addr}: {e}") from None
        self.is_listener = listen
        self._sender = threading.Thread(target=self._send_loop, name=f"link-send {self.name}", daemon=True)
        self._sender.start()

    @classmethod
    def listen(cls, addr: str, **kw) -> Link:
        """Listen on ``addr`` (``tcp://HOST:PORT``, port 0: any free port; see ``address``) for
        the one peer this link serves. Keywords as ``Link.__init__``."""
        return cls(addr, listen=True, **kw)

    @classmethod
    def dial(cls, addr: str, **kw) -> Link:
        """Dial the peer at ``addr``; returns at once, connects and reconnects in the background."""
        return cls(addr, listen=False, **kw)

    def _bound_address(self, addr: str) -> str:
        scheme, rest = addr.split("://", 1)
        if scheme not in ("tcp", "tls+tcp"):
            return addr
        host = rest.rpartition(":")[0]
        # pynng 0.9 returns the port as stored in the sockaddr: network byte order.
        port = socket.ntohs(self._ep.local_address.port)
        return f"{scheme}://{host}:{port}"

    # -- connection state --------------------------------------------------------------------
    # Pipes are tracked by id: nng may report the removal of a pipe it refused (a second
    # dialer on a Pair0 listener) without its addition, which must not hide the real peer.
    def _on_pipe_add(self, pipe) -> None:
        with self._pipe_lock:
            self._pipes.add(pipe.id)
            self.connects += 1
        self._clear_pauses()
        self._connected_ev.set()

    def _clear_pauses(self) -> None:
        # A new connection (or a restarted peer) holds no backlog: its pauses are void. No
        # lock (pipe callbacks must not wait on send locks): paused senders re-check each slice.
        for st in list(self._streams.values()):
            st.paused = False

    def _on_pipe_remove(self, pipe) -> None:
        with self._pipe_lock:
            self._pipes.discard(pipe.id)
            if not self._pipes:
                self._connected_ev.clear()

    @property
    def connected(self) -> bool:
        return bool(self._pipes)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until a peer is connected; False after ``timeout`` seconds."""
        return self._connected_ev.wait(timeout)

    @property
    def state(self) -> str:
        """``connected``, ``connecting``, ``auth_failed`` (TLS handshakes fail: wrong
        certificate, CA or server_name) or ``closed``."""
        if self._closed:
            return "closed"
        if self.connected:
            return "connected"
        return "auth_failed" if self._endpoint_stats().get("auth", 0) > 0 else "connecting"

    def _endpoint_stats(self) -> dict[str, int]:
        """nng's own counters for our listener/dialer (connect, refused, auth, rcv_max, ...)."""
        out: dict[str, int] = {}
        if self._closed:
            return out
        pp = _ffi.new("nng_stat **")
        if _lib.nng_stats_get(pp) != 0:
            return out
        try:
            if self.is_listener:
                st = _lib.nng_stat_find_listener(pp[0], self._ep.listener)
            else:
                st = _lib.nng_stat_find_dialer(pp[0], self._ep.dialer)
            ch = _lib.nng_stat_child(st) if st != _ffi.NULL else _ffi.NULL
            while ch != _ffi.NULL:
                if _lib.nng_stat_type(ch) == _lib.NNG_STAT_COUNTER:
                    out[_ffi.string(_lib.nng_stat_name(ch)).decode()] = int(_lib.nng_stat_value(ch))
                ch = _lib.nng_stat_next(ch)
        finally:
            _lib.nng_stats_free(pp[0])
        return out

    # -- sending -----------------------------------------------------------------------------
    def open_stream(self, stream: str, policy: Policy | None = None, depth: int | None = None) -> None:
        """Set a stream's send policy and queue depth (default: the link's). Optional: ``send``
        opens unknown streams with the defaults. Re-opening changes the policy."""
        st = _Stream(stream, policy or self.default_policy, depth or self.default_depth, self._epoch)
        with self._lock:
            old = self._streams.get(stream)
            if old is not None:
                old.policy, old.depth = st.policy, st.depth
            else:
                self._streams[stream] = st
        # A sender must hear the peer's flow control even if it never receives anything else.
        if self._dispatcher is None and not self._recv_mode:
            self._start_dispatcher()

    def _stream(self, stream: str) -> _Stream:
        st = self._streams.get(stream)
        if st is None:
            self.open_stream(stream)
            st = self._streams[stream]
        return st

    def send(self, stream: str, msg: Message, timeout: float | None = None,
             arrays: AbstractSet[str] | None = None) -> None:
        """Encode ``msg`` and queue it for the peer on ``stream``.

        ``block`` streams wait up to ``timeout`` (default ``send_timeout``) for queue space, then
        raise ``LinkTimeout``; ``drop_oldest`` streams never wait. Raises
        ``LinkMessageTooLarge`` (nothing sent) and ``LinkClosed``. Returns once nng or the queue
        holds the message: the caller may reuse ``msg``'s arrays at once. ``arrays``: send only
        the arrays of these names (None: all); the others are left out as it is encoded, no
        copy of the message is made (``schemas.crossing``: what the peer's modules use).
        """
        if self._closing:
            raise LinkClosed(f"link {self.name} is closed")
        st = self._stream(stream)
        t0 = time.perf_counter_ns()
        out = self._encode(st, msg, arrays)
        self._ser.add((time.perf_counter_ns() - t0) / 1e6)
        try:
            self._enqueue(st, out, self.send_timeout if timeout is None else timeout)
        except BaseException:
            out.free()
            raise

    def _encode(self, st: _Stream, msg: Message, keep: AbstractSet[str] | None = None) -> _Out:
        ne = len(st.env)
        items = list(msg.arrays.items()) if keep is None else [(k, a) for k, a in msg.arrays.items() if k in keep]
        sent = sum(a.nbytes for _k, a in items)
        need = ne + ARRAYS_OFFSET + sent
        if need > self.max_message_size:
            raise LinkMessageTooLarge(self._too_large(st, need))
        pp = st.pp
        pp[0] = _ffi.NULL
        pool = None
        try:
            if need <= _SMALL:
                # Reused per-stream buffer (warm, no allocation), then one small copy into nng.
                n = self._encode_small(st, msg, items)
                _check(_lib.nng_msg_alloc(pp, 0))
                _check(_lib.nng_msg_append(pp[0], st.cscratch, n))
            else:
                # Big: encode straight into the nng message; the arrays are copied exactly once.
                # Every array starts 64-byte aligned: one left out frees at least its own bytes.
                left = sum(a.nbytes for a in msg.arrays.values()) - sent
                bound = min(ne + encoded_size(msg) - left, self.max_message_size)
                pp[0] = self._pool.take(bound) or _ffi.NULL
                if pp[0] == _ffi.NULL:
                    _check(_lib.nng_msg_alloc(pp, bound))
                    if self._pool.adopt(pp[0]):
                        pool = self._pool
                else:
                    pool = self._pool
                body = memoryview(_ffi.buffer(_lib.nng_msg_body(pp[0]), bound))
                body[:ne] = st.env
                w = FrameWriter(body[ne:])
                for k, a in items:
                    w.put(k, a)
                n = ne + w.finish(msg)
                del w, body  # no view of the nng buffer may outlive this function
                _check(_lib.nng_msg_chop(pp[0], bound - n))
        except MessageTooLarge as e:
            if pp[0] != _ffi.NULL:
                _Out(st, pp[0], 0, pool).free()
            raise LinkMessageTooLarge(f"{self._too_large(st, need)} ({e})") from None
        except BaseException:
            if pp[0] != _ffi.NULL:
                _Out(st, pp[0], 0, pool).free()
            raise
        return _Out(st, pp[0], n, pool)

    def _encode_small(self, st: _Stream, msg: Message, items: list[tuple[str, np.ndarray]]) -> int:
        """Encode ``msg`` with the arrays ``items`` into the stream's scratch buffer, growing it
        when the header does not fit."""
        while True:
            if st.writer is None:
                st.grow(4096)
            w = st.writer
            w.reset()
            try:
                for k, a in items:
                    w.put(k, a)
                return len(st.env) + w.finish(msg)
            except HeaderTooLarge:
                raise  # no buffer takes it: growing would only encode it again
            except MessageTooLarge:
                size = len(st.scratch)
                if size >= self.max_message_size:
                    raise
                st.grow(min(size * 4, self.max_message_size))

    def _too_large(self, st: _Stream, need: int) -> str:
        return (
            f"link {self.name}, stream {st.name!r}: message needs at least {need} B, over "
            f"max_message_size={self.max_message_size} B (raise it on BOTH peers); nothing sent"
        )

    def _enqueue(self, st: _Stream, out: _Out, timeout: float) -> None:
        with self._lock:
            if self._closing:
                raise LinkClosed(f"link {self.name} is closed")
            if st.paused and st.policy == "drop_oldest":
                # The peer holds older ones of this live stream already: a new one would wait.
                out.free()
                st.dropped += 1
                self.dropped += 1
                return
            if not st.paused and not self._queue and not self._inflight and self._try_send(out, _lib.NNG_FLAG_NONBLOCK):
                return  # fast path: the pipe was idle; nng writes it now
            if st.queued >= st.depth or st.paused:
                if st.policy == "drop_oldest":
                    for i, q in enumerate(self._queue):
                        if q.stream is st:
                            del self._queue[i]
                            q.free()
                            st.queued -= 1
                            st.dropped += 1
                            self.dropped += 1
                            break
                else:
                    deadline = time.monotonic() + timeout
                    while (st.queued >= st.depth or st.paused) and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self.send_timeouts += 1
                            why = ("paused by the peer: its consumer of this stream is behind" if st.paused
                                   else "a slow peer" if self.connected else "no peer connected")
                            raise LinkTimeout(
                                f"link {self.name}, stream {st.name!r}: send queue full ({st.depth}) "
                                f"for {timeout:g} s ({why}); message not sent"
                            )
                        self._space.wait(min(left, _PAUSE_SLICE_S) if st.paused else left)
                    if self._closing:
                        raise LinkClosed(f"link {self.name} is closed")
            self._queue.append(out)
            st.queued += 1
            self._work.notify()

    def pause_peer(self, stream: str, pause: bool) -> None:
        """Ask the peer to hold (``pause``) or go on sending ``stream`` (flow control, see the
        module docstring). Never waits: called from a receive handler. Of several requests
        for one stream still queued, only the newest is sent."""
        flag = FLAG_PAUSE if pause else FLAG_RESUME
        with self._lock:
            if self._closing:
                return
            st = self._ctrl.get((stream, flag))
            if st is None:  # made once per stream received (bounded by the handlers)
                for f in (FLAG_PAUSE, FLAG_RESUME):
                    self._ctrl[(stream, f)] = _Stream(stream, "drop_oldest", 1, self._epoch, f)
                st = self._ctrl[(stream, flag)]
            if st.queued:
                return  # the same request is still queued
            # The opposite request still queued is stale: this one supersedes it.
            anti = self._ctrl[(stream, flag ^ _CTRL)]
            for i, q in enumerate(self._queue):
                if q.stream is anti:
                    del self._queue[i]
                    q.free()
                    anti.queued -= 1
                    break
        pp = st.pp
        pp[0] = _ffi.NULL
        _check(_lib.nng_msg_alloc(pp, 0))
        out = _Out(st, pp[0], len(st.env))
        try:
            _check(_lib.nng_msg_append(pp[0], _ffi.from_buffer(st.env), len(st.env)))
            self._enqueue(st, out, 0.0)
        except LinkClosed:
            out.free()
            return
        except BaseException:
            out.free()
            raise
        self.pauses_sent += pause

    def _try_send(self, out: _Out, flags: int) -> bool:
        """Stamp seq/time and hand ``out`` to nng. Only one thread at a time calls this (the
        fast path under the lock with nothing in flight, or the sender thread)."""
        body = _ffi.cast("int64_t *", _lib.nng_msg_body(out.msg))
        body[_SEQ_I64] = self._seq
        body[_TS_I64] = time.time_ns()
        pool = out.pool
        if pool is not None:
            pool.keep(out.msg)  # our reference outlives the send: the buffer comes back
        rc = _lib.nng_sendmsg(self._s, out.msg, flags)
        if pool is not None:
            if rc:
                pool.unkeep(out.msg)
            else:
                pool.sent(out.msg)
        if rc == 0:
            out.msg = None  # nng owns (and frees) it now
            self._seq += 1
            self.messages_sent += 1
            self.bytes_sent += out.nbytes
            return True
        if rc in (_lib.NNG_EAGAIN, _lib.NNG_ETIMEDOUT):
            return False
        if rc == _lib.NNG_ECLOSED:
            raise LinkClosed(f"link {self.name} is closed")
        _check(rc)
        return False

    def _next_sendable(self) -> int | None:
        """Index of the oldest queued message whose stream the peer has not paused (call with
        ``_lock``): what a paused stream had queued stays here until the peer resumes it,
        instead of filling the peer's backlog (a ``block`` stream's backlog overflowing lost
        frames under load)."""
        for i, q in enumerate(self._queue):
            if q.stream.ctrl or not q.stream.paused:
                return i
        return None

    def _send_loop(self) -> None:
        idle_checks = 0.0
        while True:
            with self._lock:
                while (i := self._next_sendable()) is None and not self._closed:
                    if self._closing:
                        self._space.notify_all()
                    self._work.wait(1.0)
                    if not self.connected and time.monotonic() - idle_checks > 5.0:
                        idle_checks = time.monotonic()
                        self._check_auth()
                if self._closed:
                    return
                out = self._queue[i]
                del self._queue[i]
                st = out.stream
                st.queued -= 1
                self._inflight = True
                self._space.notify_all()
            try:
                while True:
                    try:
                        if self._try_send(out, 0):  # blocks up to _SEND_SLICE_MS
                            break
                    except LinkError:
                        return  # closed under us
                    if st.policy == "drop_oldest" and st.queued and not st.ctrl:
                        # A newer message of this live stream is waiting: this one is stale.
                        with self._lock:
                            st.dropped += 1
                            self.dropped += 1
                        break
                    if self._closed:
                        break
                    if not self.connected and time.monotonic() - idle_checks > 5.0:
                        idle_checks = time.monotonic()
                        self._check_auth()
            finally:
                out.free()
                with self._lock:
                    self._inflight = False
                    self._space.notify_all()

    def _check_auth(self) -> None:
        auth = self._endpoint_stats().get("auth", 0)
        if auth > self._last_auth:
            log.warning(
                "link %s: %d TLS handshake(s) with the peer failed (certificate not signed by "
                "our CA, wrong server_name, or the peer rejects ours); no data flows",
                self.name, auth - self._last_auth,
            )
            self._last_auth = auth

    # -- receiving ---------------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Received | None:
        """The next message of any stream, or None after ``timeout`` seconds (None: wait).
        Not with ``on`` handlers (they own the receive side). Raises ``LinkClosed``."""
        if self._handlers:
            raise LinkError(f"link {self.name}: recv() while stream handlers dispatch")
        if not self._recv_mode:
            self._recv_mode = True  # from now on flow control is read by recv() too
            d = self._dispatcher
            if d is not None and threading.current_thread() is not d:
                d.join(2 * _RECV_SLICE_MS / 1000)  # the sender-only dispatcher ends by itself
                self._dispatcher = None
        while True:
            r = self._recv_one(-1 if timeout is None else max(0, int(timeout * 1000)))
            if r is not False:
                return r  # type: ignore[return-value]

    def _recv_one(self, ms: int) -> Received | None | bool:
        """One nng message: a Received, None on timeout, False if it was not deliverable."""
        if ms != self._recv_ms:  # an option write is a call into nng: only when it changes
            self._sock.recv_timeout = self._recv_ms = ms
        pp = self._rx_pp
        rc = _lib.nng_recvmsg(self._s, pp, 0)
        if rc:
            if rc == _lib.NNG_ETIMEDOUT:
                return None
            if rc == _lib.NNG_ECLOSED:
                raise LinkClosed(f"link {self.name} is closed")
            _check(rc)
        t0 = time.perf_counter_ns()
        now = time.time_ns()
        nm = pp[0]
        n = _lib.nng_msg_len(nm)
        # The owner frees the nng message when the last buffer/view referencing it is gone.
        owner = _ffi.gc(_ffi.cast("char *", _lib.nng_msg_body(nm)), lambda _p, m=nm: _lib.nng_msg_free(m), n)
        buf = memoryview(_ffi.buffer(owner, n))
        self.bytes_received += n
        try:
            raw, flags, epoch, seq, sent, units = parse_envelope(buf)
            msg = None if flags & _CTRL else decode(buf[units * 64 :])
        except Exception as e:  # parse raises CodecError only; anything else must not kill us
            self.bad += 1
            self._bad_log.note("link %s: bad message dropped: %s: %s", self.name, type(e).__name__, e)
            return False
        stream = self._names.get(raw)
        if stream is None:
            stream = raw.decode()  # parse checked it is UTF-8
            if len(self._names) < _MAX_NAMES:  # a peer inventing names must not grow this
                self._names[raw] = stream
        if epoch != self._peer_epoch:  # the peer (re)started: its seq restarts at 0
            if self._peer_epoch != -1:
                self._clear_pauses()
            self._peer_epoch, self._next_seq = epoch, seq
        elif seq > self._next_seq:
            self.lost += seq - self._next_seq
        self._next_seq = seq + 1
        if msg is None:  # flow control for one of our streams; unknown names change nothing
            st = self._streams.get(stream)
            if st is not None:
                st.paused = bool(flags & FLAG_PAUSE)
                self.pauses_received += st.paused
                with self._lock:
                    self._space.notify_all()
                    self._work.notify()  # held messages of a resumed stream may go
            return False
        self.messages_received += 1
        self._net.add((now - sent) / 1e6)
        self._deser.add((time.perf_counter_ns() - t0) / 1e6)
        return Received(stream, msg, Lease(buf, seq, sent, now))

    def on(self, stream: str, handler: Handler) -> None:
        """Deliver ``stream``'s messages to ``handler`` from the link's dispatch thread
        (started on first use). Handlers run one at a time and must not wait: a waiting handler
        stalls every stream of this link, other tenants' included. A receiver that cannot take
        a message now keeps it and calls ``pause_peer`` (see ``relay.LinkToRing``). Register
        before the peer sends: messages of a stream without a handler are dropped and counted
        (``unrouted``)."""
        with self._dispatch_lock:
            self._handlers[stream] = handler
            self._recv_mode = False
            if self._dispatcher is None:
                self._start_dispatcher()

    def _start_dispatcher(self) -> None:
        with self._pipe_lock:  # open_stream and on may race to start it
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch_loop, name=f"link-recv {self.name}", daemon=True
                )
                self._dispatcher.start()

    def off(self, stream: str) -> None:
        """Stop delivering ``stream``; once this returns its handler is not running."""
        if threading.get_ident() == self._dispatch_ident:
            self._handlers.pop(stream, None)
            return
        with self._dispatch_lock:
            self._handlers.pop(stream, None)

    def _dispatch_loop(self) -> None:
        self._dispatch_ident = threading.get_ident()
        while not self._closed and not (self._recv_mode and not self._handlers):
            try:
                r = self._recv_one(_RECV_SLICE_MS)
            except LinkClosed:
                return
            except pynng.NNGException as e:
                log.warning("link %s: receive failed: %s", self.name, e)
                continue
            except Exception as e:  # never let one message end every stream of this peer
                self.bad += 1
                self._bad_log.note("link %s: bad message dropped: %s: %s", self.name, type(e).__name__, e)
                continue
            if not r:
                continue
            with self._dispatch_lock:
                h = self._handlers.get(r.stream)
                if h is None:
                    self.unrouted += 1
                    r.lease.release()
                    continue
                try:
                    h(r)
                except Exception:
                    self._handler_log.note("link %s: handler of stream %r failed", self.name, r.stream, exc_info=True)
                finally:
                    r.lease.release()

    # -- metrics and lifetime ----------------------------------------------------------------
    def metrics(self, reset: bool = True) -> LinkMetrics:
        """``LinkMetrics`` (counters since start; times over the interval since the last
        ``reset``). Serialise: encode in ``send``; network: sender's hand-off to nng ->
        receiver's ``recv``; deserialise: envelope + decode."""
        return LinkMetrics(
            connected=self.connected,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            dropped=self.dropped,
            bad=self.bad,
            unrouted=self.unrouted,
            serialise_ms=self._ser.take(reset),
            network_ms=self._net.take(reset),
            deserialise_ms=self._deser.take(reset),
        )

    def stats(self) -> dict:
        """Everything, including what ``LinkMetrics`` has no field for."""
        ep = self._endpoint_stats()
        if ep.get("auth", 0) > self._last_auth:
            self._check_auth()
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "connected": self.connected,
            "connects": self.connects,
            "bytes_sent": self.bytes_sent,
            "messages_sent": self.messages_sent,
            "messages_reused": self._pool.reused,
            "dropped": self.dropped,
            "dropped_by_stream": {s.name: s.dropped for s in list(self._streams.values())},
            "paused_by_peer": sorted(s.name for s in list(self._streams.values()) if s.paused),
            "pauses_sent": self.pauses_sent,
            "pauses_received": self.pauses_received,
            "send_timeouts": self.send_timeouts,
            "queued": len(self._queue),
            "bytes_received": self.bytes_received,
            "messages_received": self.messages_received,
            "lost": self.lost,
            "unrouted": self.unrouted,
            "bad": self.bad,
            "auth_failures": ep.get("auth", 0),
            "connect_refused": ep.get("refused", 0),
            "too_large_received": ep.get("rcv_max", 0),  # peer's max_message_size is larger
        }

    def close(self, drain: float = 1.0, linger: float = 0.05) -> None:
        """Send what is queued (up to ``drain`` seconds, only while connected), wait ``linger``
        seconds (nng has no linger: the last message may still be in the kernel), then close.
        Queued messages left are dropped. For a lossless end, have the peer acknowledge."""
        if self._closed:
            return
        deadline = time.monotonic() + drain
        with self._lock:
            self._closing = True
            self._space.notify_all()
            self._work.notify_all()
            while (self._queue or self._inflight) and self.connected and time.monotonic() < deadline:
                self._space.wait(0.05)
            sent_any = self.messages_sent > 0
        if sent_any and linger > 0:
            time.sleep(linger)
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._space.notify_all()
            while self._queue:
                self._queue.popleft().free()
        # Our threads' blocking sends and receives last one slice (_SEND_SLICE_MS,
        # _RECV_SLICE_MS) and they stop once they see _closed: let both leave nng before the
        # socket goes. Closing the socket under a blocked send or receive aborted the whole
        # process (SIGABRT inside nng) on a loaded machine, where 2 s was not always enough.
        me = threading.current_thread()
        for t in (self._sender, self._dispatcher):
            if t is not None and t is not me:
                t.join(timeout=_CLOSE_JOIN_S)
        self._sock.close()  # aborts a receive of recv()'s caller
        self._pool.close()  # messages still in use are let go when their user returns them

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "listen" if self.is_listener else "dial"
        return f"Link({role} {self.address}, {'connected' if self.connected else 'not connected'})"
