"""``shm-pipe``: the floor. Raw ``multiprocessing.shared_memory`` slots, index over a pipe.

The parent creates one segment of ``nslots`` slots. The producer copies the frame into a free
slot (``np.copyto`` on a view made once, so no page faults after warm-up) and writes a 32-byte
record (slot, length, frame id, t0) to a pipe; the consumer reads it and uses a numpy view over
the slot. The consumer gives a slot back (its index over a second pipe) on its next ``recv``,
like the ring, so the producer never overwrites a slot being read. Meta: msgpack bytes in the
slot. This is the ring's work without its bookkeeping: the lowest cost a copy-in design can have.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import struct
import uuid
from multiprocessing import shared_memory
from typing import Any

import msgpack
import numpy as np

from edgeva.bench.hop.transports.base import Received, Receiver, Sender, Transport, register

_REC = struct.Struct("<qqqq")  # slot, nbytes, frame_id, t0_ns: 32 B, one atomic pipe write
_SLOT = struct.Struct("<i")  # a freed slot


def _wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@register
class ShmPipeTransport(Transport):
    name = "shm-pipe"
    order = 10
    description = "raw shared memory slots + index over os.pipe"

    def setup(self) -> None:
        self.slot_size = (self.payload.max_bytes() + 4095) // 4096 * 4096
        # The parent owns the segment (and its resource-tracker entry) and unlinks it in
        # cleanup, whatever happens to the children.
        self.shm_name = f"edgeva-bench-{uuid.uuid4().hex[:12]}"
        self._shm = shared_memory.SharedMemory(self.shm_name, create=True,
                                               size=self.slot_size * self.nslots)
        ctx = mp.get_context("spawn")
        self.idx_r, self.idx_w = ctx.Pipe(duplex=False)  # producer -> consumer: records
        self.free_r, self.free_w = ctx.Pipe(duplex=False)  # consumer -> producer: freed slots

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_shm", None)  # children attach by name
        return state

    def after_start(self) -> None:
        for c in (self.idx_r, self.idx_w, self.free_r, self.free_w):
            c.close()

    def cleanup(self) -> None:
        self._shm.close()
        self._shm.unlink()

    def sender(self) -> Sender:
        return _ShmSender(self)

    def receiver(self) -> Receiver:
        return _ShmReceiver(self)


class _Slots:
    """The segment attached by name, with one uint8 view per slot made once."""

    def __init__(self, t: ShmPipeTransport) -> None:
        # Same resource tracker as the parent (spawn shares it), whose entry the parent's
        # unlink removes: attaching here needs no unregister.
        self.shm = shared_memory.SharedMemory(t.shm_name)
        self.size = t.slot_size
        whole = np.frombuffer(self.shm.buf, dtype=np.uint8)
        self.views = [whole[i * t.slot_size:(i + 1) * t.slot_size] for i in range(t.nslots)]

    def close(self) -> None:
        self.views.clear()  # views pin the mapping: drop them before closing it
        self.shm.close()


class _ShmSender(Sender):
    def __init__(self, t: ShmPipeTransport) -> None:
        t.idx_r.close()
        t.free_w.close()
        self.t = t
        self.slots = _Slots(t)
        self.free = list(range(t.nslots))
        self.wfd, self.ffd = t.idx_w.fileno(), t.free_r.fileno()

    def _slot(self) -> int:
        if not self.free:
            if not _wait_readable(self.ffd, 30.0):
                raise TimeoutError("shm-pipe: no slot freed by the consumer in 30 s")
            data = os.read(self.ffd, _SLOT.size * self.t.nslots)
            if not data:
                raise EOFError("shm-pipe: consumer closed its pipe")
            self.free.extend(s for (s,) in _SLOT.iter_unpack(data))
        return self.free.pop()

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        s = self._slot()
        view = self.slots.views[s]
        if isinstance(src, dict):
            b = msgpack.packb(src)
            n = len(b)
            view[:n] = np.frombuffer(b, dtype=np.uint8)
        else:
            n = src.nbytes
            np.copyto(view[:n].reshape(src.shape), src)
        os.write(self.wfd, _REC.pack(s, n, frame_id, t0_ns))

    def close(self) -> None:
        self.slots.close()
        self.t.idx_w.close()
        self.t.free_r.close()


class _ShmReceiver(Receiver):
    def __init__(self, t: ShmPipeTransport) -> None:
        t.idx_w.close()
        t.free_r.close()
        self.t = t
        self.slots = _Slots(t)
        self.rfd, self.ffd = t.idx_r.fileno(), t.free_w.fileno()
        self.held = -1
        self.src_shape = t.payload.shape

    def _release(self) -> None:
        if self.held >= 0:
            os.write(self.ffd, _SLOT.pack(self.held))
            self.held = -1

    def recv(self, timeout: float) -> Received | None:
        self._release()
        if not _wait_readable(self.rfd, timeout):
            return None
        rec = os.read(self.rfd, _REC.size)
        if len(rec) != _REC.size:
            return None  # EOF: the producer is gone
        s, n, frame_id, t0_ns = _REC.unpack(rec)
        self.held = s
        view = self.slots.views[s][:n]
        if self.t.payload.kind == "meta":
            d = msgpack.unpackb(view)
            return d["frame_id"], d["t0_ns"], d
        return frame_id, t0_ns, view.reshape(self.src_shape)

    def close(self) -> None:
        try:
            self._release()
        except OSError:
            pass  # the producer is gone already
        self.slots.close()
        self.t.idx_r.close()
        self.t.free_w.close()
