"""Pins of the codec's shape checks (issue 25): a frame whose header gives an array a negative
size is refused. Without the ``>= 0`` check, ``[-1]`` made ``count`` -1, which numpy reads as
"the rest of the buffer": the array covered the msgpack header (and passed the region checks,
since its computed end fell before its start)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from agent.dataplane.codec import ARRAYS_OFFSET, MAGIC, PREFIX, CodecError, decode, encode
from schemas.message import Message


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
