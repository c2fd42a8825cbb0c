"""Property tests of what a link peer (or a tenant's module, through a ring) can hand the codec:
whatever the bytes, ``decode`` and the link's ``parse`` return a well-typed message or raise
``CodecError``, never anything else (issues 13 and 15).

Examples per target: the ``edgeva-fuzz`` profile (2,000; CI) or, with ``EDGEVA_FUZZ=nightly``,
``edgeva-fuzz-nightly`` (50,000).
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeva.agent.dataplane.codec import CodecError, decode, encode
from edgeva.agent.dataplane.link import parse
from edgeva.schemas.message import Message
from tests import link_peer as P

settings.register_profile("edgeva-fuzz", max_examples=2000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("edgeva-fuzz-nightly", parent=settings.get_profile("edgeva-fuzz"), max_examples=50_000)
pytestmark = pytest.mark.slow  # ~10 s of CPU in all; minutes on a loaded 2-core machine
FUZZ = settings(settings.get_profile("edgeva-fuzz-nightly" if os.environ.get("EDGEVA_FUZZ") == "nightly"
                                     else "edgeva-fuzz"))

DTYPES = ["|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"]
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4) | st.integers(), kids, max_size=4),
    max_leaves=4,
)
small_int = st.integers(-(2**70), 2**70)


@st.composite
def messages(draw) -> Message:
    arrays = {}
    for k in range(draw(st.integers(0, 2))):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        arrays[f"a{k}"] = np.zeros(shape, dtype=np.dtype(draw(st.sampled_from(DTYPES))))
    fields = draw(st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**64 - 1) | st.text(max_size=6) | st.binary(max_size=6),
                                  max_size=3))
    hops = draw(st.lists(st.tuples(st.text(max_size=5), st.integers(0, 2**62), st.integers(0, 2**62)).map(list),
                         max_size=3))
    return Message(draw(st.integers(0, 2**62)), draw(st.text(max_size=5)), draw(st.integers(0, 2**62)), hops,
                   fields, arrays)


def _valid_frames() -> list[bytes]:
    """Valid frames of every layout the writer makes (no arrays, empty, several, each dtype)."""
    out = [encode(Message(1, "cam", 2, [["m", 3, 4]], {"k": b"v", "n": [1, 2.5]}))]
    for i, dt in enumerate(DTYPES):
        arrays = {"frame": np.ones((3, 4, 3) if i % 2 else (i,), dtype=dt), "empty": np.zeros((0, 5), dtype=dt)}
        if i % 3 == 0:
            arrays["third"] = np.arange(7, dtype=dt)
        out.append(encode(Message(i, "s", 5, [["a", 1, 2]] * (i % 3), {"i": i}, arrays)))
    return out


VALID = _valid_frames()


@st.composite
def mutated(draw) -> bytes:
    """A valid frame, then one of: truncation, byte flips, random splice, appended bytes, lying
    lengths in the prefix."""
    good = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "append", "prefix"]))
    if how == "truncate":
        return bytes(good[: draw(st.integers(0, len(good) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(good) - 1))
            good[i] = draw(st.integers(0, 255))
        return bytes(good)
    if how == "splice":
        i = draw(st.integers(0, len(good)))
        j = draw(st.integers(i, len(good)))
        return bytes(good[:i]) + draw(st.binary(max_size=64)) + bytes(good[j:])
    if how == "prefix":
        struct.pack_into("<II", good, 4, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
        return bytes(good)
    return bytes(good) + draw(st.binary(min_size=1, max_size=64))


def array_desc():
    return st.tuples(
        st.text(max_size=2), st.sampled_from([*DTYPES, "|O", ">u4", "|V8", "x", 3, None]),
        st.lists(small_int, max_size=10) | anything, small_int | anything,
    ).map(list) | anything


BASE = {"frame_id": 1, "source": "s", "ts_ns": 2, "hops": [["m", 1, 2]], "fields": {"a": 1},
        "arrays": [["frame", "|u1", [4, 4], 0]]}


@st.composite
def lying_headers(draw) -> bytes:
    """Right prefix and lengths; the header of a valid frame with one or two parts replaced by
    anything (a wrong type mostly), dropped, or joined by an unknown key."""
    h = dict(BASE)
    for _ in range(draw(st.integers(1, 2))):
        key = draw(st.sampled_from([*BASE, "extra"]))
        what = draw(st.sampled_from(["replace", "drop", "arrays"]))
        if what == "drop":
            h.pop(key, None)
        elif what == "arrays":
            h["arrays"] = draw(st.lists(array_desc(), max_size=3))
        else:
            h[key] = draw(small_int | anything)
    region = b"\0" * draw(st.sampled_from([0, 64, 128]))
    try:
        return P.body(h, region)
    except (TypeError, ValueError, OverflowError):  # not msgpack-able (an int past 64 bits)
        return P.body({"frame_id": 0}, region)


HOSTILE = [payload for _l, _e, payload in P.hostile_frames("cam")]


def _check(buf: bytes) -> None:
    try:
        m = decode(buf)
    except CodecError:
        return
    # Accepted: then it is exactly what the writer makes (types the runner relies on).
    assert type(m.frame_id) is int and type(m.ts_ns) is int and type(m.source) is str
    assert type(m.hops) is list and all(
        type(h) is list and len(h) == 3 and type(h[0]) is str and type(h[1]) is int and type(h[2]) is int
        for h in m.hops)
    assert type(m.fields) is dict and all(type(k) is str for k in m.fields)
    for a in m.arrays.values():
        assert isinstance(a, np.ndarray) and a.dtype.str in DTYPES and not a.flags.writeable


@settings(FUZZ, max_examples=300)  # not hostile input: a sanity check of the strict decoder
@given(messages())
def test_valid_messages_round_trip(msg: Message) -> None:
    m = decode(encode(msg))
    assert (m.frame_id, m.source, m.ts_ns, m.hops, m.fields) == (msg.frame_id, msg.source, msg.ts_ns, msg.hops,
                                                                  msg.fields)
    assert {k: (a.dtype, a.shape) for k, a in m.arrays.items()} == {k: (a.dtype, a.shape) for k, a in msg.arrays.items()}


@FUZZ
@given(mutated())
def test_truncated_flipped_spliced_frames_raise_only_codec_error(buf: bytes) -> None:
    _check(buf)


@FUZZ
@given(lying_headers())
def test_wrong_headers_raise_only_codec_error(buf: bytes) -> None:
    _check(buf)


@FUZZ
@given(st.binary(max_size=512) | st.binary(max_size=64).map(lambda b: b"EVA1" + b))
def test_garbage_raises_only_codec_error(buf: bytes) -> None:
    _check(buf)


@FUZZ
@given(st.binary(max_size=8).map(lambda n: b"cam" + n) | st.binary(max_size=40), st.integers(0, 255),
       st.integers(0, 255), st.sampled_from([*VALID, *HOSTILE]))
def test_link_messages_wrong_stream_or_envelope_raise_only_codec_error(name: bytes, units: int, nlen: int,
                                                                       frame: bytes) -> None:
    """The link's own envelope (stream id, lengths) around any frame: ``parse`` as the
    receive thread calls it."""
    for env in (P.envelope(name, 1) if len(name) <= 200 else b"", P.envelope(name[:200], 1, units=units, nlen=nlen)):
        try:
            raw, _epoch, _seq, _sent, m = parse(memoryview(env + frame))
        except CodecError:
            continue
        assert 0 < len(raw) <= 200 and raw.decode()
        assert isinstance(m, Message)


def test_unpack_limits_hold_for_deep_nesting() -> None:
    """msgpack nesting far past any real header is refused, not a RecursionError."""
    hdr = b"\x86\xa8frame_id\x00\xa6source\xa0\xa5ts_ns\x00\xa4hops\x90\xa6arrays\x90\xa6fields\x81\xa1d"
    hdr += b"\x91" * 100_000 + b"\x01"
    buf = bytearray(64) + hdr
    struct.pack_into("<4sIII", buf, 0, b"EVA1", len(hdr), 0, 0)
    with pytest.raises(CodecError):
        decode(bytes(buf))
