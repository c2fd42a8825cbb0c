"""``mp-queue``: ``multiprocessing.Queue`` with the pickled array or dict.

The paper's in-runtime design. ``put`` hands the object to the queue's feeder thread, which
pickles it (a full copy into a fresh buffer) and writes it to a pipe; ``get`` reads and
unpickles (another fresh buffer). ``maxsize`` bounds it like the ring's slot count.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from typing import Any

import numpy as np

from edgeva.bench.hop.transports.base import Received, Receiver, Sender, Transport, register


@register
class MpQueueTransport(Transport):
    name = "mp-queue"
    order = 20
    description = "multiprocessing.Queue, pickled payload"

    def setup(self) -> None:
        self.q = mp.get_context("spawn").Queue(maxsize=self.nslots)

    def cleanup(self) -> None:
        self.q.close()
        self.q.cancel_join_thread()

    def sender(self) -> Sender:
        return _QSender(self.q)

    def receiver(self) -> Receiver:
        return _QReceiver(self.q)


class _QSender(Sender):
    def __init__(self, q: Any) -> None:
        self.q = q

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        if isinstance(src, dict):
            # The feeder thread pickles later, while the harness already rewrites the dict's
            # frame_id for the next message: hand over a shallow copy.
            self.q.put(dict(src), timeout=30.0)
        else:
            self.q.put((frame_id, t0_ns, src), timeout=30.0)  # src is never modified

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()  # flush the feeder (the consumer already has everything)


class _QReceiver(Receiver):
    def __init__(self, q: Any) -> None:
        self.q = q

    def recv(self, timeout: float) -> Received | None:
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, dict):
            return item["frame_id"], item["t0_ns"], item
        return item
