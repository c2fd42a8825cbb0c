"""What a transport is to the hop benchmark, the two payloads, and the transport registry.

A transport is a ``Transport`` subclass registered with ``@register``. One instance is built in
the parent, ``setup()`` there (resources both ends must share: a segment, a queue, pipes), then
pickled into the two spawned children, where ``sender()`` / ``receiver()`` make the two ends.
``cleanup()`` runs in the parent afterwards, also after a crash, so nothing is left behind.

Message convention: a ``frame`` payload is a header (frame id, t0) plus an array; a ``meta``
payload is a dict that already carries ``frame_id`` and ``t0_ns`` (the harness sets them), so a
transport ships the dict as it is. ``Receiver.recv`` returns ``(frame_id, t0_ns, obj)`` where
``obj`` is a usable numpy array or dict, valid until the next ``recv`` (zero-copy transports
release the previous message then, as the ring does).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import msgpack
import numpy as np

PayloadKind = Literal["frame", "meta"]
Received = tuple[int, int, Any]  # (frame_id, t0_ns, array or dict)

# name -> transport class. Transports register themselves on import (see ``transports()``).
REGISTRY: dict[str, type[Transport]] = {}


def register(cls: type[Transport]) -> type[Transport]:
    """Class decorator: make a transport available to ``edgeva bench hop`` by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Payload:
    """What is moved: a ``frame`` (uint8 image, 720p by default) or ``meta`` (a detection dict)."""

    kind: PayloadKind
    shape: tuple[int, ...] = (720, 1280, 3)
    nboxes: int = 20

    def source(self) -> np.ndarray | dict[str, Any]:
        """The producer's preallocated source, same content in every process (seeded), touched
        once here so that no page fault lands inside a timed send."""
        rng = np.random.default_rng(7)
        if self.kind == "frame":
            return rng.integers(0, 256, size=self.shape, dtype=np.uint8)
        boxes = rng.random((self.nboxes, 6)) * [1280, 720, 1280, 720, 1, 80]
        return {"frame_id": 0, "t0_ns": 0, "boxes": boxes.tolist()}

    def max_bytes(self) -> int:
        """An upper bound of one encoded message of any transport (slot and recv limits)."""
        if self.kind == "frame":
            return int(np.prod(self.shape)) + 4096
        src = self.source()
        assert isinstance(src, dict)
        src.update(frame_id=2**62, t0_ns=2**62)
        return len(msgpack.packb(src)) + 4096


def touch(obj: np.ndarray | dict[str, Any]) -> float:
    """Read the payload the same way on every transport: first and last element, no copy."""
    if isinstance(obj, np.ndarray):
        return float(obj[(0,) * obj.ndim]) + float(obj[(-1,) * obj.ndim])
    return obj["boxes"][0][0] + obj["boxes"][-1][-1]


# -- msgpack wire form shared by the socket transports (http-msgpack, nng-tcp) ---------------
#
# A frame is the msgpack map {frame_id, t0_ns, dtype, shape, data: bin}. ``msgpack.packb`` on the
# array buffer costs ~3 copies (its output buffer grows by doubling), which would charge the
# socket designs for a msgpack-python quirk rather than for their design. ``frame_head`` packs
# everything up to the bin's payload; head + the array's raw bytes is the same valid msgpack,
# built with one copy (``pack``) or none (streamed to a socket).

_PACKER = msgpack.Packer()
_BIN32 = struct.Struct(">BI")  # msgpack bin 32: 0xc6, big-endian length


def frame_head(frame_id: int, t0_ns: int, arr: np.ndarray) -> bytes:
    """The msgpack bytes of a frame message that precede the array's raw bytes."""
    p = _PACKER
    parts = [p.pack_map_header(5)]
    for k, v in (("frame_id", frame_id), ("t0_ns", t0_ns), ("dtype", arr.dtype.str),
                 ("shape", arr.shape)):
        parts += (p.pack(k), p.pack(v))
    parts += (p.pack("data"), _BIN32.pack(0xC6, arr.nbytes))
    return b"".join(parts)


def pack(frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> bytes:
    """One msgpack ``bytes``: a frame message (one copy of the array) or a meta dict."""
    if isinstance(src, dict):
        return msgpack.packb(src)
    return b"".join((frame_head(frame_id, t0_ns, src), src.data))


def unpack(buf: bytes | memoryview) -> Received:
    """Inverse of ``pack``. msgpack-python returns a bin as a new ``bytes`` (one copy); the
    array is a read-only view over it."""
    d = msgpack.unpackb(buf)
    if "data" in d:
        arr = np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])
        return d["frame_id"], d["t0_ns"], arr
    return d["frame_id"], d["t0_ns"], d


# -- the transport API ---------------------------------------------------------------------


class Sender(ABC):
    """The producer's end. Lifecycle: ``prepare`` -> (consumer opens) -> ``connect`` -> sends."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Create what must exist before the consumer opens (e.g. the ring segment)."""

    def connect(self, info: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Connect to the opened consumer; ``info`` is what its ``open`` returned."""

    def stage(self, frame_id: int, src: np.ndarray | dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Untimed, before ``t0``: make the payload where this transport's producer makes it.
        Only ``ring-direct`` uses it: a decoder decodes straight into its slot, so writing the
        frame there is the decoder's work, not the hop's (the hop is what follows: commit,
        wake-up, a view on the other side)."""

    @abstractmethod
    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        """Move one message; may block on the transport's own flow control."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (called once the consumer has everything)."""


class Receiver(ABC):
    """The consumer's end."""

    def open(self) -> dict[str, Any]:
        """Attach or listen; returns what the sender needs to connect (e.g. a port)."""
        return {}

    @abstractmethod
    def recv(self, timeout: float) -> Received | None:
        """The next message, or None after ``timeout`` seconds (or end of stream)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class Transport(ABC):
    """A way to move a payload between two processes. Instances are pickled into the children:
    keep state picklable (names, ports, multiprocessing queues and connections)."""

    name: ClassVar[str]
    order: ClassVar[int] = 100  # position in tables and plots
    description: ClassVar[str] = ""

    def __init__(self, payload: Payload, nslots: int = 8) -> None:
        self.payload = payload
        self.nslots = nslots  # flow-control depth where the transport has one to set

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Parent, before the children start: create shared resources."""

    def after_start(self) -> None:  # noqa: B027 - optional hook
        """Parent, once both children hold their copies: drop the parent's (e.g. pipe ends,
        so that a child's death shows as EOF to the other)."""

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Parent, after both children are gone (normally or not): remove leftovers."""

    @abstractmethod
    def sender(self) -> Sender:
        """Build the producer's end (in the producer process)."""

    @abstractmethod
    def receiver(self) -> Receiver:
        """Build the consumer's end (in the consumer process)."""
