"""``ring-direct``: edgeva's ring as the decoder uses it: the producer reserves a slot and
writes the frame into it through ``alloc`` (a decoder decodes straight into that array), so the
hop itself moves only the metadata: commit, wake-up, a view on the consumer's side.

The write into the slot happens in ``stage``, before the harness stamps ``t0``: it is the
producer's work (decoding), which a copy-in design pays on top. ``ring`` (copy-in) stays beside
it; the difference between the two is the memcpy the decoder saves. Meta payloads go the same
way as ``ring`` (``publish``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeva.bench.hop.transports.base import Sender, register
from edgeva.bench.hop.transports.ring import RingTransport, _RingSender


@register
class RingDirectTransport(RingTransport):
    name = "ring-direct"
    order = 1
    description = "edgeva ring, producer writes the frame in the slot (alloc), block policy"

    def sender(self) -> Sender:
        return _DirectSender(self)


class _DirectSender(_RingSender):
    def __init__(self, t: RingDirectTransport) -> None:
        super().__init__(t)
        self.w = None

    def stage(self, frame_id: int, src: np.ndarray | dict[str, Any]) -> None:
        if isinstance(src, dict):
            return
        # As the decoder: a slot, an array in it, the frame written there (cv2 would decode
        # into it; the bench copies its source, outside the timed hop).
        self.w = self.prod.reserve(timeout=30.0)
        np.copyto(self.w.alloc("frame", src.shape, src.dtype), src)

    def send(self, frame_id: int, t0_ns: int, src: np.ndarray | dict[str, Any]) -> None:
        from edgeva.schemas.message import Message

        if isinstance(src, dict):
            super().send(frame_id, t0_ns, src)
            return
        w, self.w = self.w, None
        self.prod.commit(w, Message(frame_id, "bench", t0_ns))

    def close(self) -> None:
        if self.w is not None and self.prod is not None:
            self.prod.abort()
        super().close()
