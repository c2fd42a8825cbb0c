"""One encoding for ring slots and nng links: a fixed prefix, raw array buffers, msgpack header.

Layout (all offsets from the start of the buffer)::

    0   prefix (16 B): magic b"EVA1", header_len u32, arrays_len u32, reserved u32
    64  array region: each array 64-byte aligned, raw C-order bytes
    64 + arrays_len: msgpack header (see ``schemas.frame.FrameHeader``)

Arrays come first so that a producer can write them in place (a decoder decodes straight into
a slot) before it knows the header. Decoding returns numpy views over the buffer: no copy.
"""

from __future__ import annotations

import math
import struct

import msgpack
import numpy as np

from schemas.message import Message

MAGIC = b"EVA1"
PREFIX = struct.Struct("<4sIII")
ARRAYS_OFFSET = 64
ALIGN = 64

# Only plain numeric dtypes cross a boundary; an object array would need pickle.
_WIRE_DTYPES = {
    np.dtype(s) for s in ("|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8")
}


class CodecError(ValueError):
    """A buffer is not a valid edgeva message, or a message cannot be encoded."""


class MessageTooLarge(CodecError):
    """The encoded message does not fit the buffer (ring slot or link message limit)."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _check_dtype(name: str, dt: np.dtype) -> np.dtype:
    dt = dt.newbyteorder("<") if dt.byteorder == ">" else dt
    if dt not in _WIRE_DTYPES:
        raise CodecError(f"array {name!r}: dtype {dt} cannot cross a boundary (numbers only)")
    return dt


def _header(msg: Message, descs: list) -> bytes:
    try:
        return msgpack.packb(
            {
                "frame_id": msg.frame_id,
                "source": msg.source,
                "ts_ns": msg.ts_ns,
                "hops": msg.hops,
                "fields": msg.fields,
                "arrays": descs,
            },
            use_bin_type=True,
        )
    except (TypeError, ValueError) as e:
        raise CodecError(f"message fields are not msgpack-able: {e}") from None


class FrameWriter:
    """Builds one message in place inside ``buf`` (a ring slot or a reusable link buffer).

    ``alloc`` hands out writable array views inside the buffer; ``finish`` writes the header and
    returns the message's total size. Reusable: ``reset`` starts a new message in the same buffer.
    """

    __slots__ = ("buf", "_np", "_descs", "_end", "_views")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self._np = np.frombuffer(buf, dtype=np.uint8)
        # A source allocates the same array at the same place frame after frame: hand out the
        # same view instead of building one per frame (cheap warm, ~20 us cold after a big copy).
        self._views: dict[tuple, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        self._descs: list = []
        self._end = ARRAYS_OFFSET

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def alloc(self, name: str, shape: tuple[int, ...], dtype: np.dtype | str = np.uint8) -> np.ndarray:
        """A writable array of ``shape``/``dtype`` that lives in the buffer."""
        off = _align(self._end)
        key = (off, tuple(shape), dtype)
        view = self._views.get(key)
        if view is not None:
            self._descs.append([name, view.dtype.str, list(view.shape), off - ARRAYS_OFFSET])
            self._end = off + view.nbytes
            return view
        dt = _check_dtype(name, np.dtype(dtype))
        shape = tuple(int(s) for s in shape)
        nbytes = math.prod(shape) * dt.itemsize
        if off + nbytes > len(self.buf):
            raise MessageTooLarge(
                f"array {name!r} ({nbytes} B) does not fit: {len(self.buf)} B buffer, "
                f"{off - ARRAYS_OFFSET} B already used"
            )
        self._descs.append([name, dt.str, list(shape), off - ARRAYS_OFFSET])
        self._end = off + nbytes
        view = self._np[off : off + nbytes].view(dt).reshape(shape)
        if len(self._views) < 64:
            self._views[key] = view
        return view

    def put(self, name: str, array: np.ndarray) -> np.ndarray:
        """Copy ``array`` into the buffer (one memcpy) and return the in-buffer view."""
        view = self.alloc(name, array.shape, array.dtype)
        np.copyto(view, array, casting="no")
        return view

    def finish(self, msg: Message) -> int:
        """Write ``msg``'s header (its ``arrays`` are ignored: use ``alloc``/``put``)."""
        arrays_len = _align(self._end) - ARRAYS_OFFSET
        hdr = _header(msg, self._descs)
        hoff = ARRAYS_OFFSET + arrays_len
        total = hoff + len(hdr)
        if total > len(self.buf):
            raise MessageTooLarge(f"message needs {total} B, buffer holds {len(self.buf)} B")
        self.buf[hoff:total] = hdr
        PREFIX.pack_into(self.buf, 0, MAGIC, len(hdr), arrays_len, 0)
        return total


def encoded_size(msg: Message) -> int:
    """Upper bound of the encoded size of ``msg`` (exact for the array part)."""
    end = ARRAYS_OFFSET
    for a in msg.arrays.values():
        end = _align(end) + a.nbytes
    return _align(end) + 256 + 64 * len(msg.arrays) + 32 * len(msg.hops) + _fields_guess(msg.fields)


def _fields_guess(fields: dict) -> int:
    return len(msgpack.packb(fields, use_bin_type=True)) if fields else 0


def encode_into(buf: memoryview, msg: Message) -> int:
    """Encode ``msg`` (header and arrays) into ``buf``; returns the number of bytes used."""
    w = FrameWriter(buf)
    for name, arr in msg.arrays.items():
        w.put(name, arr)
    return w.finish(msg)


def encode(msg: Message) -> bytes:
    """Encode ``msg`` into a new bytes object (for tests and cold paths)."""
    buf = bytearray(encoded_size(msg))
    n = encode_into(memoryview(buf), msg)
    return bytes(buf[:n])


def decode(buf: memoryview | bytes, *, readonly: bool = True, cache: dict | None = None) -> Message:
    """Decode a message; its arrays are views over ``buf`` (no copy).

    ``cache``: a dict kept per buffer (a ring slot) by the caller, so that the same array
    layout in the same buffer yields the same view object instead of a new one per message.
    Raises ``CodecError`` with the reason when ``buf`` is not a valid message.
    """
    mv = memoryview(buf)
    if len(mv) < ARRAYS_OFFSET:
        raise CodecError(f"buffer of {len(mv)} B is shorter than the {ARRAYS_OFFSET} B prefix")
    magic, hlen, alen, _ = PREFIX.unpack_from(mv, 0)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}: not an edgeva message")
    hoff = ARRAYS_OFFSET + alen
    if hoff + hlen > len(mv):
        raise CodecError(f"truncated message: needs {hoff + hlen} B, got {len(mv)} B")
    try:
        h = msgpack.unpackb(mv[hoff : hoff + hlen], raw=False, strict_map_key=False)
        arrays = {}
        for name, dt, shape, off in h["arrays"]:
            if cache is not None:
                key = (dt, tuple(shape), off)
                a = cache.get(key)
                if a is not None:
                    arrays[name] = a
                    continue
            dt = _check_dtype(name, np.dtype(dt))
            count = 1
            for s in shape:
                count *= s
            if off < 0 or off + count * dt.itemsize > alen:
                raise CodecError(f"array {name!r} lies outside the array region")
            a = np.frombuffer(mv, dtype=dt, count=count, offset=ARRAYS_OFFSET + off).reshape(shape)
            if readonly and a.flags.writeable:
                a.flags.writeable = False
            arrays[name] = a
            if cache is not None and len(cache) < 64:
                cache[key] = a
        return Message(h["frame_id"], h["source"], h["ts_ns"], h["hops"], h["fields"], arrays)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
        raise CodecError(f"malformed header: {e!r}") from None
