"""A module process's heartbeat: shared memory the runner writes and the supervisor reads.

The runner stamps it around every ``process``/``produce`` call and in its housekeeping, from
its own thread; a module stuck inside one call (a deadlock, a hung driver, SIGSTOP) cannot
move it, so the supervisor sees how long the current call has run and kills the process past
its deadline (``RunnerSpec.hang_timeout``). Four int64 words, no lock: each is written by one
thread and a torn read only delays detection by one look.
"""

from __future__ import annotations

import time
from typing import Any

IDLE, PROCESS, PRODUCE, PACE = 0, 1, 2, 3
WHERE = {IDLE: "runner", PROCESS: "process", PRODUCE: "produce", PACE: "pace"}
FIRST_CALL_GRACE_S = 60.0  # a module's first call may load a model or connect to a camera
_BEAT, _WHERE, _FRAME, _CALLS = range(4)


class Heartbeat:
    """``words``: a shared ``RawArray("q", 4)`` (``create``), or any 4-item list for a runner
    nobody watches (tests)."""

    __slots__ = ("w",)

    def __init__(self, words: Any = None) -> None:
        self.w = [0, 0, 0, 0] if words is None else words

    @classmethod
    def create(cls, ctx) -> Heartbeat:
        """A new shared heartbeat from a multiprocessing context (pass ``.w`` to the child)."""
        return cls(ctx.RawArray("q", 4))

    def beat(self) -> None:
        """Alive, between calls into the module."""
        self.w[_BEAT] = time.monotonic_ns()

    def enter(self, where: int, frame_id: int = -1) -> None:
        """About to call the module (``PROCESS`` with the message's frame id, ``PRODUCE``...)."""
        w = self.w
        w[_FRAME] = frame_id if -(2**63) <= frame_id < 2**63 else -1
        w[_WHERE] = where
        w[_BEAT] = time.monotonic_ns()

    def leave(self) -> None:
        """The call returned (or raised)."""
        w = self.w
        w[_WHERE] = IDLE
        w[_CALLS] += 1
        w[_BEAT] = time.monotonic_ns()

    def stuck(self, deadline_s: float, now_ns: int | None = None) -> dict | None:
        """None while healthy; else where it is stuck: ``{"where", "frame_id", "stuck_s",
        "deadline_s"}``. A first call gets ``FIRST_CALL_GRACE_S`` if that is longer; a runner
        that never beat yet (starting) is not judged."""
        w = self.w
        beat = w[_BEAT]
        if beat == 0:
            return None
        where = w[_WHERE]
        limit = deadline_s
        if where != IDLE and w[_CALLS] == 0:
            limit = max(deadline_s, FIRST_CALL_GRACE_S)
        age = ((time.monotonic_ns() if now_ns is None else now_ns) - beat) / 1e9
        if age <= limit:
            return None
        out = {"where": WHERE.get(where, "runner"), "stuck_s": round(age, 2), "deadline_s": limit}
        if where == PROCESS and w[_FRAME] >= 0:
            out["frame_id"] = w[_FRAME]
        return out
