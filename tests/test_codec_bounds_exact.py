"""The codec's contract at its edges (issue 25, `make mutants` of agent/dataplane/codec.py): each
header field of the wrong type or shape is a ``CodecError`` and never another exception (links
carry frames from other devices, rings from tenants' modules), also when a ring slot's layout
cache holds the layout the frame pretends to have; any contiguous buffer decodes; the wire
prefix; what ``encode`` refuses, and how; the bounded caches of views.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from edgeva.agent.dataplane.codec import (
    ARRAYS_OFFSET,
    MAGIC,
    PREFIX,
    CodecError,
    FrameWriter,
    decode,
    encode,
    encode_into,
    encoded_size,
)
from edgeva.schemas.message import Message

_OK = {"frame_id": 1, "source": "cam", "ts_ns": 2, "hops": [["m", 3, 4]], "fields": {"k": 1}, "arrays": []}
_A = ["a", "|u1", [64], 0]  # one 64-byte array at the start of a 64-byte region


def _frame(header: object, region: bytes = b"") -> bytes:
    """A frame as the codec lays it out, with any header (any msgpack value) as given."""
    hdr = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(MAGIC, len(hdr), len(region), 0).ljust(ARRAYS_OFFSET, b"\0") + region + hdr


def _with(**over: object) -> dict:
    return {**_OK, **over}


_BAD_HEADERS = {
    "not a map (int)": 5,
    "not a map (list)": [1, 2, 3, 4, 5, 6],
    "a key missing": {k: v for k, v in _OK.items() if k != "fields"},
    "an extra key": _with(extra=1),
    "frame_id str": _with(frame_id="1"),
    "frame_id float": _with(frame_id=1.0),
    "frame_id bool": _with(frame_id=True),
    "ts_ns str": _with(ts_ns="2"),
    "ts_ns nil": _with(ts_ns=None),
    "source int": _with(source=5),
    "source nil": _with(source=None),
    "hops int": _with(hops=5),
    "hops map": _with(hops={}),
    "hops map of hops": _with(hops={"m": ["m", 3, 4]}),
    "hop a str": _with(hops=["abc"]),
    "hop a map": _with(hops=[{0: "m", 1: 3, 2: 4}]),
    "hop of 2": _with(hops=[["m", 3]]),
    "hop of 4": _with(hops=[["m", 3, 4, 5]]),
    "hop name int": _with(hops=[[5, 3, 4]]),
    "hop t_in str": _with(hops=[["m", "3", 4]]),
    "hop t_in float": _with(hops=[["m", 3.0, 4]]),
    "hop t_out str": _with(hops=[["m", 3, "4"]]),
    "hop t_out bool": _with(hops=[["m", 3, True]]),
    "fields list": _with(fields=[]),
    "fields key int": _with(fields={5: 1}),
    "fields key bytes": _with(fields={b"k": 1}),
    "arrays map": _with(arrays={}),
    "arrays int": _with(arrays=5),
}


@pytest.mark.parametrize("header", list(_BAD_HEADERS.values()), ids=list(_BAD_HEADERS))
def test_each_header_field_of_the_wrong_type_is_a_codec_error(header: object) -> None:
    decode(_frame(_OK))  # the same frame with the good header decodes
    with pytest.raises(CodecError):
        decode(_frame(header))


_REGION = bytes(range(64)) * 2
_BAD_ARRAYS = {
    "entry of 3": [["a", "|u1", [64]]],
    "entry a str": ["abcd"],
    "name int": [[5, "|u1", [64], 0]],
    "name nil": [[None, "|u1", [64], 0]],
    "dtype int": [["a", 5, [64], 0]],
    "dtype object": [["a", "|O", [64], 0]],
    "shape int": [["a", "|u1", 64, 0]],
    "shape map": [["a", "|u1", {64: 1}, 0]],
    "size float": [["a", "|u1", [64.0], 0]],
    "size bool": [["a", "|u1", [True], 0]],
    "offset float": [["a", "|u1", [64], 0.0]],
    "offset str": [["a", "|u1", [64], "0"]],
    "offset misaligned": [["a", "|u1", [64], 1]],
    "offset misaligned inside": [["a", "|u1", [1], 1]],
    "offset misaligned after": [["a", "|u1", [1], 0], ["b", "|u1", [1], 65]],
    "offset negative": [["a", "|u1", [64], -64]],
    "a name twice": [_A, ["a", "|u1", [64], 64]],
    "overlapping": [_A, ["b", "|u1", [64], 0]],
    "out of order": [["b", "|u1", [64], 64], _A],
    "past the region": [["a", "|u1", [129], 0]],
}


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "slot-cache"])
@pytest.mark.parametrize("arrays", list(_BAD_ARRAYS.values()), ids=list(_BAD_ARRAYS))
def test_each_array_entry_of_the_wrong_type_is_a_codec_error(arrays: list, cached: bool) -> None:
    # A ring slot's cache holds the good layouts ([a at 0] and [a at 0, b at 64]): a frame that
    # only looks like them (3.0 == 3, True == 1 hash alike) must not be served from it.
    cache: dict | None = {} if cached else None
    good = decode(_frame(_with(arrays=[_A, ["b", "|u1", [64], 64]]), _REGION), cache=cache)
    assert good.arrays["b"].tolist() == list(range(64))
    decode(_frame(_with(arrays=[_A]), _REGION[:64]), cache=cache)
    region = _REGION if len(arrays) > 1 else _REGION[:64]
    with pytest.raises(CodecError):
        decode(_frame(_with(arrays=arrays), region), cache=cache)


def test_a_slot_cache_serves_an_exact_layout_from_offset_0() -> None:
    data = _frame(_with(arrays=[_A]), _REGION[:64])
    cache: dict = {}
    first, again = decode(data, cache=cache), decode(data, cache=cache)
    assert first.arrays["a"] is again.arrays["a"] and again.arrays["a"].tolist() == list(range(64))


def test_a_slot_cache_keeps_64_layouts_and_no_more() -> None:
    # A tenant's module that writes ever new layouts into a slot cannot grow the consumer's
    # cache without bound; a source cycling through up to 64 layouts is served from it.
    cache: dict = {}
    frames = [_frame(_with(arrays=[["a", "|u1", [n], 0]]), bytes(64)) for n in range(1, 65)]
    frames += [_frame(_with(arrays=[["a", "<u2", [n], 0]]), bytes(64)) for n in range(1, 9)]
    first = [decode(f, cache=cache).arrays["a"] for f in frames]
    assert len(cache) == 64
    again = [decode(f, cache=cache).arrays["a"] for f in frames]
    assert [a is b for a, b in zip(first, again, strict=True)] == [True] * 64 + [False] * 8


def test_a_writer_reuses_the_views_of_64_layouts_and_no_more() -> None:
    w = FrameWriter(memoryview(bytearray(4096)))

    def one_frame_each() -> list[np.ndarray]:
        out = []
        for n in range(1, 71):
            w.reset()
            out.append(w.alloc("a", (n,)))
        return out

    first, again = one_frame_each(), one_frame_each()
    assert [a is b for a, b in zip(first, again, strict=True)] == [True] * 64 + [False] * 6


def _padded(n_align: int) -> bytes:
    """A valid message whose length is a multiple of ``n_align`` (a field's length pads it)."""
    for pad in range(n_align):
        data = encode(Message(7, "cam", 8, [["m", 1, 2]], {"pad": "x" * pad},
                              {"img": np.arange(12, dtype=np.uint8).reshape(3, 4), "v": np.arange(3, dtype="<f4")}))
        if len(data) % n_align == 0:
            return data
    raise AssertionError("no padding fits")


@pytest.mark.parametrize("view", ["bytes", "bytearray", "memoryview", "2-d uint8", "uint16", "uint32", "uint64"])
def test_any_contiguous_buffer_decodes_by_its_bytes(view: str) -> None:
    data = _padded(8)
    u8 = np.frombuffer(bytearray(data), np.uint8)
    buf = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data),
           "2-d uint8": u8.reshape(-1, 8), "uint16": u8.view(np.uint16), "uint32": u8.view(np.uint32),
           "uint64": u8.view(np.uint64)}[view]
    m = decode(buf)
    assert (m.frame_id, m.source, m.ts_ns, m.hops) == (7, "cam", 8, [["m", 1, 2]])
    assert m.arrays["img"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert m.arrays["v"].tolist() == [0.0, 1.0, 2.0]


def test_arrays_are_read_only_unless_asked_and_then_write_through() -> None:
    buf = bytearray(encode(Message(1, arrays={"a": np.zeros(4, np.uint8)})))
    with pytest.raises(ValueError):
        decode(buf).arrays["a"][0] = 1
    decode(buf, readonly=False).arrays["a"][:] = 9
    assert decode(bytes(buf)).arrays["a"].tolist() == [9, 9, 9, 9]


def test_the_prefix_says_magic_lengths_and_a_zero_reserved_word() -> None:
    # Written by a reused writer into a dirty slot: nothing may come from the old bytes.
    buf = bytearray(b"\xff" * 1024)
    w = FrameWriter(memoryview(buf))
    w.alloc("a", (10,))[:] = 1
    w.alloc("b", (3,), "<u2")[:] = 2
    n = w.finish(Message(1, "cam", 2))
    magic, hlen, alen, reserved = PREFIX.unpack_from(buf, 0)
    assert (magic, alen, reserved) == (MAGIC, 128, 0)
    assert n == ARRAYS_OFFSET + alen + hlen
    assert msgpack.unpackb(bytes(buf[ARRAYS_OFFSET + alen : n]))["arrays"] == [["a", "|u1", [10], 0],
                                                                              ["b", "<u2", [3], 64]]


def _deep(n: int) -> list:
    x: list = []
    for _ in range(n):
        x = [x]
    return x


_UNPACKABLE = {"a set (TypeError)": {1, 2}, "2**64 (OverflowError)": 2**64, "too deep (ValueError)": _deep(1100)}


@pytest.mark.parametrize("value", list(_UNPACKABLE.values()), ids=list(_UNPACKABLE))
@pytest.mark.parametrize("where", ["fields", "hops"])
def test_what_msgpack_cannot_write_is_a_codec_error(value: object, where: str) -> None:
    msg = Message(1, "cam", 2, [["m", 1, value]], {}) if where == "hops" else Message(1, "cam", 2, fields={"v": value})
    with pytest.raises(CodecError, match="not msgpack-able"):
        encode(msg)  # sized first (encoded_size)
    with pytest.raises(CodecError, match="not msgpack-able"):
        encode_into(memoryview(bytearray(1 << 16)), msg)  # straight into a slot


def test_many_short_bytes_values_fit_the_size_encode_asks_for() -> None:
    # each b"x" is bin 8 on the wire (3 B); sized as an old-style raw string (2 B) they overflow
    msg = Message(1, "cam", 2, [["m", 1, 2]] * 3, {"blobs": [b"x"] * 5000, "ids": {1: b"a", 2: b"b"}})
    data = encode(msg)
    assert len(data) <= encoded_size(msg)
    m = decode(data)
    assert m.fields == {"blobs": [b"x"] * 5000, "ids": {1: b"a", 2: b"b"}}


def test_nested_maps_may_have_integer_keys() -> None:
    # e.g. counts per class id: only the top level of fields needs string keys
    fields = {"counts": {1: 5, 2: 7}, "boxes": {0: [1, 2, 3, 4]}}
    assert decode(encode(Message(1, "cam", 2, fields=fields))).fields == fields


def test_a_big_endian_array_is_written_little_endian() -> None:
    src = np.arange(6, dtype=">u2").reshape(2, 3) * 300
    m = decode(encode(Message(1, arrays={"a": src, "f": np.array([1.5, -2.0], ">f8")})))
    assert m.arrays["a"].dtype == np.dtype("<u2") and m.arrays["a"].tolist() == src.tolist()
    assert m.arrays["f"].dtype == np.dtype("<f8") and m.arrays["f"].tolist() == [1.5, -2.0]


_MALFORMED = {
    "truncated map": b"\x86\xa8frame_id",
    "two objects": msgpack.packb(_OK) + b"\x01",
    "reserved byte 0xc1": b"\xc1",
    "an ext type": msgpack.packb(msgpack.ExtType(1, b"x")),
    "a list too long": b"\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("hdr", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_a_malformed_header_is_a_codec_error(hdr: bytes) -> None:
    data = PREFIX.pack(MAGIC, len(hdr), 0, 0).ljust(ARRAYS_OFFSET, b"\0") + hdr
    with pytest.raises(CodecError, match="malformed header"):
        decode(data)


@pytest.mark.parametrize("shape", [[0, 2**63], [2**64 - 1, 0], [0, 2**40, 2**40]])
def test_an_empty_array_of_an_impossible_shape_is_a_codec_error(shape: list) -> None:
    with pytest.raises(CodecError):
        decode(_frame(_with(arrays=[["a", "|u1", shape, 0]])))


def test_encoded_size_bounds_the_widest_header_a_decoder_takes() -> None:
    # Every name at MAX_NAME, every count at its limit, every array at MAX_NDIM dimensions (some of
    # them 5-byte sizes): each dimension costs its bytes; and a lone long source costs its bytes
    # (with no arrays there is no other allowance to hide in).
    from edgeva.agent.dataplane.codec import MAX_ARRAYS, MAX_HOPS, MAX_NAME, MAX_NDIM

    def name(i: int) -> str:
        return f"{i:03d}".ljust(MAX_NAME, "n")

    wide = (0, 2**16, 2**16, 2**16) + (1,) * (MAX_NDIM - 4)  # empty: no bytes, a wide descriptor
    msg = Message(2**64 - 1, name(0), 2**64 - 1, [[name(i), 2**64 - 1, 2**64 - 1] for i in range(MAX_HOPS)],
                  {name(0): 2**64 - 1}, {name(i): np.zeros(wide, "<f8") for i in range(MAX_ARRAYS)})
    data = encode(msg)
    assert len(data) <= encoded_size(msg)
    assert decode(data).arrays[name(MAX_ARRAYS - 1)].shape == wide
    lone = Message(1, "s" * MAX_NAME, 2)
    assert len(encode(lone)) <= encoded_size(lone)
    assert decode(encode(lone)).source == "s" * MAX_NAME
