"""One encoding for ring slots and nng links: a fixed prefix, raw array buffers, msgpack header.

Layout (all offsets from the start of the buffer)::

    0   prefix (16 B): magic b"EVA1", header_len u32, arrays_len u32, reserved u32
    64  array region: each array 64-byte aligned, raw C-order bytes
    64 + arrays_len: msgpack header (see ``schemas.frame.FrameHeader``)

Arrays come first so that a producer can write them in place (a decoder decodes straight into
a slot) before it knows the header. Decoding returns numpy views over the buffer: no copy.

Every size a buffer claims is bounded before anything is allocated for it: the header's bytes
(``MAX_HEADER_BYTES``), each list, map, string in it (``MAX_CONTAINER_LEN``, ``MAX_STR_BYTES``),
the counts of arrays and hops, name lengths (all in ``schemas.frame``), and each array's shape
against the region's bytes and the region against the buffer's length.
"""

from __future__ import annotations

import math
import struct

import msgpack
import numpy as np

from edgeva.schemas.frame import (  # the header's bounds: see schemas.frame
    MAX_ARRAYS,
    MAX_CONTAINER_LEN,
    MAX_HEADER_BYTES,
    MAX_HOPS,
    MAX_NAME,
    MAX_NDIM,
    MAX_STR_BYTES,
)
from edgeva.schemas.message import Message

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


class HeaderTooLarge(MessageTooLarge):
    """The message's header (its fields, hops, array list) is over ``MAX_HEADER_BYTES``: no
    buffer size would take it."""




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
    except (TypeError, ValueError, OverflowError) as e:
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
        """Copy ``array`` into the buffer (one memcpy) and return the in-buffer view. A
        big-endian array is written little-endian (the wire's order): the copy swaps its bytes."""
        view = self.alloc(name, array.shape, array.dtype)
        np.copyto(view, array, casting="equiv")  # "equiv": byte order only, never a value cast
        return view

    def finish(self, msg: Message) -> int:
        """Write ``msg``'s header (its ``arrays`` are ignored: use ``alloc``/``put``)."""
        arrays_len = _align(self._end) - ARRAYS_OFFSET
        hdr = _header(msg, self._descs)
        if len(hdr) > MAX_HEADER_BYTES:
            raise HeaderTooLarge(
                f"message header (fields, hops, arrays) is {len(hdr)} B, over {MAX_HEADER_BYTES} B: "
                f"put bulk data in arrays, not fields"
            )
        hoff = ARRAYS_OFFSET + arrays_len
        total = hoff + len(hdr)
        if total > len(self.buf):
            raise MessageTooLarge(f"message needs {total} B, buffer holds {len(self.buf)} B")
        self.buf[hoff:total] = hdr
        PREFIX.pack_into(self.buf, 0, MAGIC, len(hdr), arrays_len, 0)
        return total


def encoded_size(msg: Message) -> int:
    """Upper bound of the encoded size of ``msg`` (exact for the array part). The header part
    counts the names: 64 hops or arrays with 200-character names take ~14 KB, far over a flat
    allowance per item (which made ``encode`` and a link's big-message path refuse a valid
    message as too large)."""
    end = ARRAYS_OFFSET
    for a in msg.arrays.values():
        end = _align(end) + a.nbytes
    descs = sum(len(k.encode()) + 32 + 9 * a.ndim for k, a in msg.arrays.items())  # [name, dtype, shape, offset]
    return (_align(end) + 256 + len(str(msg.source).encode()) + descs + _fields_guess(msg.hops)
            + _fields_guess(msg.fields))


def _fields_guess(fields: dict | list) -> int:
    try:
        return len(msgpack.packb(fields, use_bin_type=True)) if fields else 0
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"message fields are not msgpack-able: {e}") from None


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


_HEADER_KEYS = frozenset(("frame_id", "source", "ts_ns", "hops", "fields", "arrays"))
_WIRE_BY_STR = {dt.str: dt for dt in _WIRE_DTYPES}


def _int(v: object) -> bool:
    # bool is an int subclass: a header that says ``"frame_id": true`` is lying.
    return type(v) is int


def _check_header(h: object) -> None:
    """Refuse a header that ``FrameHeader`` would refuse, plus the layout checks a schema
    cannot make (array bytes inside the region, no overlap, the region exactly as long as the
    arrays need). Plain type checks rather than a pydantic model: this runs per message."""
    if type(h) is not dict or h.keys() != _HEADER_KEYS:
        got = sorted(map(str, h))[:8] if isinstance(h, dict) else type(h).__name__
        raise CodecError(f"header must be a map with keys {sorted(_HEADER_KEYS)}, got {got}")
    if not _int(h["frame_id"]) or not _int(h["ts_ns"]):
        raise CodecError("header: frame_id and ts_ns must be integers")
    if type(h["source"]) is not str or len(h["source"]) > MAX_NAME:
        raise CodecError(f"header: source must be a string of at most {MAX_NAME} characters")
    hops = h["hops"]
    if type(hops) is not list or len(hops) > MAX_HOPS:
        raise CodecError(f"header: hops must be a list of at most {MAX_HOPS}, got {_what(hops)}")
    for i, hop in enumerate(hops):
        if (type(hop) is not list or len(hop) != 3 or type(hop[0]) is not str or len(hop[0]) > MAX_NAME
                or not _int(hop[1]) or not _int(hop[2])):
            raise CodecError(f"header: hops[{i}] must be [module name (<= {MAX_NAME} chars), t_in_ns, t_out_ns]")
    fields = h["fields"]
    if type(fields) is not dict:
        raise CodecError(f"header: fields must be a map, got {type(fields).__name__}")
    for k in fields:
        if type(k) is not str or len(k) > MAX_NAME:
            raise CodecError(f"header: fields key {str(k)[:64]!r} is not a string of at most {MAX_NAME} characters")
    arrays = h["arrays"]
    if type(arrays) is not list or len(arrays) > MAX_ARRAYS:
        raise CodecError(f"header: arrays must be a list of at most {MAX_ARRAYS}, got {_what(arrays)}")


def _what(v: object) -> str:
    return f"{len(v)} items" if type(v) is list else type(v).__name__


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} in a header (not part of the format)")


def _check_array(d: object, alen: int, end: int, names: dict) -> tuple[str, np.dtype, tuple, int, int]:
    """One ``[name, dtype, shape, offset]``: returns name, dtype, shape, element count and the
    byte end. ``end``: where the previous array ended (arrays are laid out in order)."""
    if type(d) is not list or len(d) != 4:
        raise CodecError("header: each arrays entry must be [name, dtype, shape, offset]")
    name, dts, shape, off = d
    if type(name) is not str or len(name) > MAX_NAME or name in names:
        raise CodecError(f"header: array name {str(name)[:64]!r} is not a string of at most {MAX_NAME} "
                         f"characters, or appears twice")
    dt = _WIRE_BY_STR.get(dts) if type(dts) is str else None
    if dt is None:
        raise CodecError(f"array {name!r}: dtype {dts!r} cannot cross a boundary (numbers only)")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise CodecError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
    count = 1
    for s in shape:
        if not _int(s) or s < 0:
            raise CodecError(f"array {name!r}: shape {shape!r} has a size that is not an integer >= 0")
        count *= s
    if not _int(off) or off % ALIGN or off < end:
        raise CodecError(f"array {name!r}: offset {off!r} is not a {ALIGN}-byte aligned offset after the previous array")
    stop = off + count * dt.itemsize
    if stop > alen:
        raise CodecError(f"array {name!r} ({count * dt.itemsize} B at {off}) lies outside the {alen} B array region")
    return name, dt, tuple(shape), count, stop


def decode(buf: memoryview | bytes, *, readonly: bool = True, cache: dict | None = None) -> Message:
    """Decode a message; its arrays are views over ``buf`` (no copy).

    ``buf`` must hold exactly one message (as a ring slot's length or a link message says).
    ``cache``: a dict kept per buffer (a ring slot) by the caller, so that the same array
    layout in the same buffer yields the same view object instead of a new one per message.
    Raises ``CodecError`` with the reason when ``buf`` is not a valid message, and nothing else
    whatever the bytes: links carry frames from other devices, rings from tenants' modules.
    """
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    if len(mv) < ARRAYS_OFFSET:
        raise CodecError(f"buffer of {len(mv)} B is shorter than the {ARRAYS_OFFSET} B prefix")
    magic, hlen, alen, _ = PREFIX.unpack_from(mv, 0)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}: not an edgeva message")
    if alen % ALIGN:
        raise CodecError(f"array region of {alen} B is not a multiple of {ALIGN} B")
    hoff = ARRAYS_OFFSET + alen
    if hoff + hlen != len(mv):
        what = "truncated" if hoff + hlen > len(mv) else "trailing bytes after the"
        raise CodecError(f"{what} message: prefix says {hoff + hlen} B, got {len(mv)} B")
    if hlen > MAX_HEADER_BYTES:  # before a byte of it is unpacked: see MAX_HEADER_BYTES
        raise CodecError(f"header of {hlen} B is over the {MAX_HEADER_BYTES} B limit")
    try:
        # Every declared length is checked against these before its object is made (msgpack
        # preallocates a list of the declared length).
        h = msgpack.unpackb(
            mv[hoff:], raw=False, strict_map_key=False, max_str_len=MAX_STR_BYTES, max_bin_len=MAX_STR_BYTES,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN, max_ext_len=0, ext_hook=_no_ext,
        )
    except Exception as e:  # msgpack raises many kinds (ValueError, StackError, ExtraData...)
        raise CodecError(f"malformed header: {type(e).__name__}: {str(e)[:200]}") from None
    _check_header(h)
    arrays: dict = {}
    end = 0
    for d in h["arrays"]:
        # A ring slot's layout repeats: a cached view stands for a layout checked before. Only
        # exact types may hit (3.0 == 3 and True == 1 would match a key too).
        if cache is not None and type(d) is list and len(d) == 4:
            name, dts, shape, off = d
            if type(name) is str and type(dts) is str and type(shape) is list and type(off) is int:
                for s in shape:
                    if type(s) is not int:
                        break
                else:
                    a = cache.get((dts, tuple(shape), off))
                    if a is not None and name not in arrays and off >= end:
                        arrays[name] = a
                        end = off + a.nbytes
                        continue
        name, dt, shape, count, stop = _check_array(d, alen, end, arrays)
        end = stop
        try:
            a = np.frombuffer(mv, dtype=dt, count=count, offset=ARRAYS_OFFSET + d[3]).reshape(shape)
        except (ValueError, OverflowError) as e:  # e.g. [0, 2**62]: no bytes, but "too big"
            raise CodecError(f"array {name!r}: shape {shape} cannot be made: {e}") from None
        if readonly and a.flags.writeable:
            a.flags.writeable = False
        arrays[name] = a
        if cache is not None and len(cache) < 64:
            cache[(d[1], shape, d[3])] = a
    if _align(end) != alen:
        raise CodecError(f"array region of {alen} B does not match the arrays ({_align(end)} B)")
    return Message(h["frame_id"], h["source"], h["ts_ns"], h["hops"], h["fields"], arrays)
