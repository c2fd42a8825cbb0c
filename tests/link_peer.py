"""A hostile link peer for tests: raw pynng, no ``Link``; it writes every byte itself.

``hostile_frames()`` is a catalogue of messages a peer could send to a link, each labelled with
how the receiving link must count it (``bad``: malformed, dropped; ``unrouted``: well formed but
for a stream nobody receives). ``good_frame`` builds a valid message by hand (the envelope of
``agent.dataplane.link``, the frame layout of ``agent.dataplane.codec``) so that the peer does
not share the code under test. ``run_peer`` is the process body the tests start.
"""

from __future__ import annotations

import struct
import time

import msgpack
import numpy as np

ENV = struct.Struct("<4sBBHIIqq")
PREFIX = struct.Struct("<4sIII")
ARRAYS_OFFSET = 64
EPOCH = 12345


def envelope(stream: bytes, seq: int, *, units: int | None = None, nlen: int | None = None,
             magic: bytes = b"EVL1") -> bytes:
    """The 64-byte-multiple link envelope (with lies on request)."""
    size = (ENV.size + len(stream) + 63) // 64
    env = bytearray(size * 64)
    ENV.pack_into(env, 0, magic, size if units is None else units, len(stream) if nlen is None else nlen,
                  0, EPOCH, 0, seq, time.time_ns())
    env[ENV.size : ENV.size + len(stream)] = stream
    return bytes(env)


def body(header: dict, region: bytes = b"", *, alen: int | None = None, hlen: int | None = None) -> bytes:
    """A frame: prefix, array region (padded to 64 B), msgpack header (lengths may lie)."""
    region = region + b"\0" * (-len(region) % 64)
    hdr = msgpack.packb(header, use_bin_type=True)
    prefix = bytearray(ARRAYS_OFFSET)
    PREFIX.pack_into(prefix, 0, b"EVA1", len(hdr) if hlen is None else hlen,
                     len(region) if alen is None else alen, 0)
    return bytes(prefix) + region + hdr


def header(i: int, **over) -> dict:
    h = {"frame_id": i, "source": "peer", "ts_ns": time.time_ns(), "hops": [["peer", 1, 2]],
         "fields": {"i": i}, "arrays": []}
    h.update(over)
    return h


def pixels(i: int) -> np.ndarray:
    return ((np.arange(48 * 64 * 3, dtype=np.uint32) * 7 + i) % 256).astype(np.uint8).reshape(48, 64, 3)


def good_body(i: int, **fields) -> bytes:
    a = pixels(i)
    h = header(i, arrays=[["frame", "|u1", list(a.shape), 0]])
    h["fields"].update(fields)
    return body(h, a.tobytes())


def good_frame(stream: str, i: int, seq: int, **fields) -> bytes:
    return envelope(stream.encode(), seq) + good_body(i, **fields)


def hostile_frames(stream: str) -> list[tuple[str, str, bytes]]:
    """(label, expected counter, payload) for each way a peer can lie. ``stream`` is a stream
    the receiver listens on, so that only the lie itself makes the message bad."""
    s = stream.encode()
    env = envelope(s, 0)  # seq is not checked for validity, only used for loss counting
    a = pixels(0).tobytes()
    arr = [["frame", "|u1", [48, 64, 3], 0]]
    good = good_body(0)
    out: list[tuple[str, str, bytes]] = []

    def add(label: str, b: bytes, expect: str = "bad", e: bytes = env) -> None:
        out.append((label, expect, e + b))

    # garbage
    rng = np.random.default_rng(7)
    for n in (0, 1, 31, 200, 5000):
        out.append((f"garbage {n} B", "bad", rng.bytes(n)))
    add("garbage after a good envelope", rng.bytes(300))
    # lying headers
    add("shape [2**63, -2] (product negative)", body(header(0, arrays=[["frame", "|u1", [2**63, -2], 0]]), a))
    add("shape [-1, -64]", body(header(0, arrays=[["frame", "|u1", [-1, -64], 0]]), a))
    add("shape far past the region", body(header(0, arrays=[["frame", "|u1", [2**40, 3], 0]]), a))
    add("negative offset", body(header(0, arrays=[["frame", "|u1", [48, 64, 3], -64]]), a))
    add("offset past the region", body(header(0, arrays=[["frame", "|u1", [48, 64, 3], 1 << 20]]), a))
    add("unaligned offset", body(header(0, arrays=[["frame", "|u1", [4], 3]]), a))
    add("overlapping arrays", body(header(0, arrays=[*arr, ["b", "|u1", [8], 64]]), a))
    add("region longer than the arrays", body(header(0, arrays=[]), a))
    add("ndim 40", body(header(0, arrays=[["frame", "|u1", [1] * 40, 0]]), a))
    add("object dtype", body(header(0, arrays=[["frame", "|O", [4], 0]]), a))
    add("void dtype", body(header(0, arrays=[["frame", "|V8", [4], 0]]), a))
    add("big-endian dtype", body(header(0, arrays=[["frame", ">u4", [4], 0]]), a))
    add("prefix: header longer than sent", body(header(0, arrays=arr), a, hlen=1 << 20))
    add("prefix: region longer than sent", body(header(0, arrays=arr), a, alen=1 << 30))
    add("prefix: region not 64-aligned", body(header(0, arrays=arr), a, alen=len(a) + 1))
    add("bad frame magic", b"XXXX" + good[4:])
    add("header is not msgpack", good[:-40] + b"\xc1" * 40)
    add("header is a list", body([1, 2, 3], b""))  # type: ignore[arg-type]
    # wrong types
    add("hops of 5", body(header(0, hops=5, arrays=arr), a))
    add("hop with 5 parts", body(header(0, hops=[["x", 1, 2, 3, 4]], arrays=arr), a))
    add("hop times as strings", body(header(0, hops=[["x", "1", "2"]], arrays=arr), a))
    add("frame_id a string", body(header(0, frame_id="seven", arrays=arr), a))
    add("frame_id true", body(header(0, frame_id=True, arrays=arr), a))
    add("ts_ns a float", body(header(0, ts_ns=1.5, arrays=arr), a))
    add("source bytes", body(header(0, source=b"peer", arrays=arr), a))
    add("fields a list", body(header(0, fields=[1, 2], arrays=arr), a))
    add("fields with an int key", body(header(0, fields={1: 2}, arrays=arr), a))
    add("arrays a map", body(header(0, arrays={"frame": 1}), a))
    add("array entry of 3", body(header(0, arrays=[["frame", "|u1", [48, 64, 3]]]), a))
    add("shape of floats", body(header(0, arrays=[["frame", "|u1", [48.0, 64.0, 3.0], 0]]), a))
    add("shape a string", body(header(0, arrays=[["frame", "|u1", "abc", 0]]), a))
    add("array name an int", body(header(0, arrays=[[7, "|u1", [48, 64, 3], 0]]), a))
    add("duplicate array names", body(header(0, arrays=[["f", "|u1", [8], 0], ["f", "|u1", [8], 64]]), a))
    add("missing hops", body({k: v for k, v in header(0, arrays=arr).items() if k != "hops"}, a))
    add("extra header key", body(header(0, arrays=arr, extra=1), a))
    add("trailing bytes", good + b"\0" * 64)
    # truncated
    for cut in (10, 63, 64, 65, 64 + len(a) // 2, len(good) - 1):
        add(f"truncated at {cut} B", good[:cut])
    # envelope and stream ids
    add("envelope magic", good, e=envelope(s, 0, magic=b"NOPE"))
    add("envelope: units 0", good, e=envelope(s, 0, units=0))
    add("envelope: units past the message", good, e=envelope(s, 0, units=200))
    add("envelope: name longer than said", good, e=envelope(s, 0, nlen=250))
    add("envelope: empty name", good, e=envelope(b"", 0))
    add("stream name not UTF-8", good, e=envelope(b"\xff\xfe" + s, 0))
    add("short envelope", b"", e=env[:20])
    add("stream nobody receives", good, "unrouted", envelope(b"nobody-" + s, 0))
    add("wrong stream, bad frame too", good[:100], "bad", envelope(b"nobody-" + s, 0))
    return out


def run_peer(addr: str, stream: str, n_good: int, stop, tail_oversized: int, q=None) -> None:
    """Dial ``addr``; send good frames 0..n_good-1 on ``stream`` with every hostile frame
    between them; then (``tail_oversized`` > 0) one message that large and good frames from
    n_good on until ``stop`` is set (the receiver drops the connection at the oversized one;
    nng redials). Puts ("sent", counts) on ``q`` after the first phase."""
    import pynng

    hostile = hostile_frames(stream)
    with pynng.Pair0(send_timeout=5000, reconnect_time_min=20, reconnect_time_max=200) as sock:
        sock.dial(addr, block=True)
        seq = 0
        for i in range(n_good):
            sock.send(good_frame(stream, i, seq))
            seq += 1
            for _label, _expect, payload in hostile if i == 0 else hostile[i % len(hostile) : i % len(hostile) + 1]:
                sock.send(payload)
        if q is not None:
            counts = {"bad": 0, "unrouted": 0}
            sent = hostile + [hostile[i % len(hostile)] for i in range(1, n_good)]
            for _label, expect, _p in sent:
                counts[expect] += 1
            q.put(("sent", counts))
        if tail_oversized:
            sock.send(envelope(stream.encode(), seq) + b"\0" * tail_oversized)
            seq += 1
        i = n_good
        while tail_oversized and not stop.is_set():
            try:
                sock.send(good_frame(stream, i, seq), block=True)
                i += 1
                seq += 1
            except pynng.Timeout:
                pass
            time.sleep(0.02)


def raw_body(hdr: bytes, region: bytes = b"") -> bytes:
    """A frame whose msgpack header is given as raw bytes (so it can claim anything)."""
    region = region + b"\0" * (-len(region) % 64)
    prefix = bytearray(ARRAYS_OFFSET)
    PREFIX.pack_into(prefix, 0, b"EVA1", len(hdr), len(region), 0)
    return bytes(prefix) + region + hdr


def _hdr_with_fields(i: int, fields_raw: bytes) -> bytes:
    """A header map that is valid but for its ``fields`` value, given raw."""
    head = {k: v for k, v in header(i).items() if k != "fields"}
    packed = msgpack.packb(head, use_bin_type=True)
    # fixmap of 5 -> fixmap of 6, then the raw fields entry
    return b"\x86" + packed[1:] + msgpack.packb("fields") + fields_raw


def header_bombs(stream: str, size: int = 14 << 20) -> list[tuple[str, bytes]]:
    """(label, payload): frames whose msgpack header claims or holds huge things, each under a
    16 MiB message limit. Before issue 20's bounds, the first one was decoded as a valid
    message at a cost of ~80 B of Python objects per header byte (14 MiB: +1.1 GB, 3 s)."""
    env = envelope(stream.encode(), 0)
    n = size - 64
    out = [
        ("fields: 14 MiB of empty lists (a valid message before)",
         _hdr_with_fields(0, b"\x81\xa1x\xdd" + n.to_bytes(4, "big") + b"\x90" * n)),
        ("fields: a map of 1M entries", _hdr_with_fields(0, b"\xdf" + (1 << 20).to_bytes(4, "big") + b"".join(
            b"\xce" + k.to_bytes(4, "big") + b"\xc0" for k in range(1 << 20)))),
        ("fields: one 12 MiB bin", _hdr_with_fields(0, b"\x81\xa1b\xc6" + (12 << 20).to_bytes(4, "big") + b"\0" * (12 << 20))),
        ("fields: an ext type", _hdr_with_fields(0, b"\x81\xa1e\xc7\x00\x05")),
        ("list claiming 2**32-1 items", b"\xdd\xff\xff\xff\xff" + b"\x90" * 64),
        ("map claiming 2**32-1 entries", b"\xdf\xff\xff\xff\xff" + b"\x90" * 64),
        ("str claiming 4 GiB", b"\xdb\xff\xff\xff\xff" + b"a" * 64),
        ("200k hops", msgpack.packb(header(0, hops=[["m", 1, 2]] * 200_000))),
        ("10k empty arrays", msgpack.packb(header(0, arrays=[[f"a{k}", "|u1", [0], 0] for k in range(10_000)]))),
        ("array name of 1 MiB", msgpack.packb(header(0, arrays=[["n" * (1 << 20), "|u1", [0], 0]]))),
        ("field key of 100 kB", msgpack.packb(header(0, fields={"k" * 100_000: 1}))),
        ("source of 1 MiB", msgpack.packb(header(0, source="s" * (1 << 20)))),
    ]
    return [(label, env + raw_body(h)) for label, h in out]


def run_bomber(addr: str, stream: str, warm: int, warmed, go, q) -> None:
    """Dial ``addr``; send ``warm`` 14 MiB frames of garbage (the receiver's buffers reach
    their size), set ``warmed``, wait for ``go``, then good frame 0, each header bomb followed
    by the next good frame, and put ("sent", bombs, good frames) on ``q``."""
    import pynng

    bombs = header_bombs(stream)
    with pynng.Pair0(send_timeout=10000) as sock:
        sock.dial(addr, block=True)
        junk = envelope(stream.encode(), 0) + b"XXXX" + b"\0" * ((14 << 20) - 4)
        for _ in range(warm):
            sock.send(junk)
        warmed.set()
        go.wait(60)
        sock.send(good_frame(stream, 0, 0))
        for i, (_label, payload) in enumerate(bombs, 1):
            sock.send(payload)
            sock.send(good_frame(stream, i, i))
        q.put(("sent", len(bombs), len(bombs) + 1))
        time.sleep(2.0)  # nng has no linger
