"""Pins of the codec's shape checks (issue 25): a frame whose header gives an array a negative
size is refused. Without the ``>= 0`` check, ``[-1]`` made ``count`` -1, which numpy reads as
"the rest of the buffer": the array covered the msgpack header (and passed the region checks,
since its computed end fell before its start)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from edgeva.agent.dataplane.codec import (
    ARRAYS_OFFSET,
    MAGIC,
    PREFIX,
    CodecError,
    decode,
    encode,
    encoded_size,
)
from edgeva.schemas.message import Message


def _frame(arrays: list, region: bytes = b"") -> bytes:
    """A frame laid out as the codec lays it out, with the array list given as is."""
    hdr = msgpack.packb({"frame_id": 1, "source": "cam", "ts_ns": 2, "hops": [], "fields": {},
                         "arrays": arrays})
    prefix = PREFIX.pack(MAGIC, len(hdr), len(region), 0).ljust(ARRAYS_OFFSET, b"\0")
    return prefix + region + hdr


def test_a_valid_frame_built_by_hand_decodes() -> None:
    # The helper makes what encode makes: the refusals below are about the shape alone.
    region = bytes(range(64))
    m = decode(_frame([["a", "|u1", [64], 0]], region))
    assert m.arrays["a"].tobytes() == region
    assert decode(encode(Message(1, "cam", 2, arrays={"a": np.arange(64, dtype=np.uint8)}))).arrays["a"].size == 64


@pytest.mark.parametrize("shape", [[-1], [-1, 1], [2, -1], [-2, -8], [0, -5], [-(2**40)]])
def test_negative_sizes_are_refused_alone(shape: list) -> None:
    with pytest.raises(CodecError, match="not an integer >= 0"):
        decode(_frame([["evil", "|u1", shape, 0]]))


@pytest.mark.parametrize("cache", [None, {}])
def test_negative_size_after_a_real_array_cannot_read_the_header(cache: dict | None) -> None:
    # "b" at the end of the region with shape [-1]: its computed end (63) is before the region's
    # (64), so only the shape check stands between it and a view over the header's bytes.
    frame = _frame([["a", "|u1", [64], 0], ["b", "|u1", [-1], 64]], bytes(64))
    with pytest.raises(CodecError, match="not an integer >= 0"):
        decode(frame, cache=cache)
    # the same layout decoded twice through a ring slot's cache: still refused
    if cache is not None:
        with pytest.raises(CodecError):
            decode(frame, cache=cache)


# -- the codec's contract, fast (kills `make mutants` survivors of agent/dataplane/codec.py) --------
def _two_arrays(w, k: int) -> None:
    w.alloc("a", (10,))[:] = k
    w.alloc("b", (3,), np.uint16)[:] = 1000 + k


def test_a_reused_writer_lays_out_the_same_arrays_at_the_same_places() -> None:
    from edgeva.agent.dataplane.codec import FrameWriter

    buf = bytearray(4096)
    w = FrameWriter(memoryview(buf))
    cache: dict = {}
    for k in range(3):  # the second and third frames reuse the writer's cached views
        w.reset()
        _two_arrays(w, k)
        n = w.finish(Message(k, "cam"))
        for c in (None, cache):  # and a ring slot's decode cache
            m = decode(memoryview(buf)[:n], cache=c)
            assert m.arrays["a"].tolist() == [k] * 10 and m.arrays["b"].tolist() == [1000 + k] * 3
        hdr = msgpack.unpackb(bytes(buf[ARRAYS_OFFSET + 128:n]))
        assert [d[3] for d in hdr["arrays"]] == [0, 64]  # b aligned after a's 10 bytes


def test_an_array_fits_exactly_or_is_refused() -> None:
    from edgeva.agent.dataplane.codec import FrameWriter, MessageTooLarge

    w = FrameWriter(memoryview(bytearray(ARRAYS_OFFSET + 128)))
    assert w.alloc("a", (128,)).size == 128  # to the last byte
    with pytest.raises(MessageTooLarge, match="'b' \\(1 B\\) does not fit"):
        w.alloc("b", (1,))


def test_encoded_size_bounds_big_arrays() -> None:
    # the bound is exact for the arrays: each one's bytes, aligned, must be counted
    msg = Message(1, "cam", arrays={f"a{i}": np.full(5000 + i, i, np.uint8) for i in range(3)})
    data = encode(msg)
    assert len(data) <= encoded_size(msg) < len(data) + 1024
    assert [decode(data).arrays[f"a{i}"].size for i in range(3)] == [5000, 5001, 5002]


def test_encoded_size_bounds_many_arrays_hops_and_fields() -> None:
    arrays = {f"a{i}": np.full(i + 1, i, np.uint8) for i in range(40)}
    hops = [[f"m{i}", i, i + 1] for i in range(60)]
    fields = {"text": "x" * 3000, "n": list(range(50))}
    msg = Message(1, "cam", 2, hops, fields, arrays)
    data = encode(msg)
    assert len(data) <= encoded_size(msg)
    m = decode(data)
    assert m.hops == hops and m.fields == fields
    assert all(m.arrays[k].tolist() == v.tolist() for k, v in arrays.items())


def test_a_short_or_long_buffer_says_which() -> None:
    data = encode(Message(1, "cam", arrays={"a": np.ones(8, np.uint8)}))
    with pytest.raises(CodecError, match="^truncated message"):
        decode(data[:-1])
    with pytest.raises(CodecError, match="^trailing bytes after the message"):
        decode(data + b"\0")


def test_every_header_bound_admits_its_limit_and_refuses_one_more() -> None:
    from edgeva.agent.dataplane.codec import MAX_ARRAYS, MAX_HOPS, MAX_NAME, MAX_NDIM

    at = "n" * MAX_NAME
    ok = Message(1, at, 2, [[at, 1, 2]] * MAX_HOPS, {at: 1},
                 {**{f"a{i}": np.zeros(1, np.uint8) for i in range(MAX_ARRAYS - 2)},
                  at: np.zeros((1,) * MAX_NDIM, np.uint8), "empty": np.zeros((0, 3), np.uint8)})
    m = decode(encode(ok))
    assert m.source == at and len(m.hops) == MAX_HOPS and at in m.fields
    assert len(m.arrays) == MAX_ARRAYS and m.arrays[at].ndim == MAX_NDIM and m.arrays["empty"].shape == (0, 3)

    def frame(**over) -> bytes:
        h = {"frame_id": 1, "source": "s", "ts_ns": 2, "hops": [], "fields": {}, "arrays": [], **over}
        hdr = msgpack.packb(h)
        return PREFIX.pack(MAGIC, len(hdr), 0, 0).ljust(ARRAYS_OFFSET, b"\0") + hdr

    over = "n" * (MAX_NAME + 1)
    for bad in ({"source": over}, {"hops": [["m", 1, 2]] * (MAX_HOPS + 1)}, {"hops": [[over, 1, 2]]},
                {"fields": {over: 1}}, {"arrays": [["a", "|u1", [0], 0]] * (MAX_ARRAYS + 1)},
                {"arrays": [[over, "|u1", [0], 0]]}, {"arrays": [["a", "|u1", [1] * (MAX_NDIM + 1), 0]]}):
        with pytest.raises(CodecError):
            decode(frame(**bad))
    for good in ({"source": at}, {"hops": [[at, 1, 2]] * MAX_HOPS}, {"fields": {at: 1}}):
        decode(frame(**good))


def test_a_header_of_exactly_the_byte_limit_is_written_and_read() -> None:
    from edgeva.agent.dataplane.codec import MAX_HEADER_BYTES, HeaderTooLarge, _header

    base = len(_header(Message(1, "c", 2, fields={"p": ""}), []))
    pad = MAX_HEADER_BYTES - base - 4  # a str8/16/32 length prefix grows: find the exact fit
    while len(_header(Message(1, "c", 2, fields={"p": "x" * pad}), [])) < MAX_HEADER_BYTES:
        pad += 1
    msg = Message(1, "c", 2, fields={"p": "x" * pad})
    assert len(_header(msg, [])) == MAX_HEADER_BYTES
    assert decode(encode(msg)).fields["p"] == "x" * pad
    with pytest.raises(HeaderTooLarge):
        encode(Message(1, "c", 2, fields={"p": "x" * (pad + 1)}))


def test_decode_cache_hands_back_the_same_view_and_big_endian_is_written_little() -> None:
    from edgeva.agent.dataplane.codec import FrameWriter

    data = encode(Message(1, arrays={"a": np.arange(4, dtype=np.uint8), "b": np.ones(2, np.uint16)}))
    cache: dict = {}
    m1, m2 = decode(data, cache=cache), decode(data, cache=cache)
    assert m1.arrays["a"] is m2.arrays["a"] and m1.arrays["b"] is m2.arrays["b"]
    w = FrameWriter(memoryview(bytearray(1024)))
    assert w.alloc("x", (3,), ">u2").dtype == np.dtype("<u2")
