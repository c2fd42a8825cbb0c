"""The message that flows between modules: a small header plus named numpy arrays.

This is the in-process form that module authors see. Its wire form (``schemas.frame.FrameHeader``
plus raw array buffers) is produced by ``agent.dataplane.codec``; the same bytes travel through
shared-memory rings and nng links. No pickle crosses any boundary.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

Hop = list  # [module name: str, t_in_ns: int, t_out_ns: int]


class Message:
    """One unit of data moving through a pipeline.

    - ``frame_id``: id given by the source (decoder); keeps its value through every hop so that
      end-to-end latency can be computed per frame.
    - ``source``: the source id (camera / stream name).
    - ``ts_ns``: wall-clock time (``time.time_ns()``) at which the source produced the frame.
    - ``hops``: ``[name, t_in_ns, t_out_ns]`` per module the message went through.
    - ``fields``: msgpack-able metadata (str, int, float, bool, None, bytes, lists, dicts).
    - ``arrays``: named numpy arrays (numeric dtypes only). Arrays received from a ring are
      read-only views into shared memory, valid until the consumer releases the message.
    """

    __slots__ = ("frame_id", "source", "ts_ns", "hops", "fields", "arrays")

    def __init__(
        self,
        frame_id: int = 0,
        source: str = "",
        ts_ns: int | None = None,
        hops: list[Hop] | None = None,
        fields: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.frame_id = frame_id
        self.source = source
        self.ts_ns = time.time_ns() if ts_ns is None else ts_ns
        self.hops = [] if hops is None else hops
        self.fields = {} if fields is None else fields
        self.arrays = {} if arrays is None else arrays

    def derive(self, **fields: Any) -> Message:
        """A new message for the same frame (same id, source, timestamp, hops so far) with
        ``fields`` merged over this one's fields and no arrays: what a module that turns
        frames into metadata (a detector, a tracker) returns."""
        return Message(self.frame_id, self.source, self.ts_ns, list(self.hops), {**self.fields, **fields})

    def latency_ms(self, now_ns: int | None = None) -> float:
        """Milliseconds since the source produced this frame."""
        return ((time.time_ns() if now_ns is None else now_ns) - self.ts_ns) / 1e6

    def __repr__(self) -> str:
        arrays = {k: (v.shape, str(v.dtype)) for k, v in self.arrays.items()}
        return (
            f"Message(frame_id={self.frame_id}, source={self.source!r}, fields={list(self.fields)},"
            f" arrays={arrays}, hops={len(self.hops)})"
        )
