"""A log line at most every few seconds, with a count of the ones held back.

Hot paths that refuse a peer's input (a bad link message, an oversized frame, a failing
handler) log through one of these: a hostile peer sending thousands a second must not flood
the log or spend the agent's CPU formatting lines.
"""

from __future__ import annotations

import logging
import time

EVERY_S = 10.0


class QuietLog:
    """``note(fmt, *args)`` logs at ``level`` at most once every ``every_s`` seconds; the
    lines skipped in between are counted and said with the next one."""

    __slots__ = ("_log", "_level", "_every", "last", "quiet")

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, every_s: float = EVERY_S) -> None:
        self._log, self._level, self._every = logger, level, every_s
        self.last, self.quiet = -every_s, 0

    def note(self, fmt: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < self._every:
            self.quiet += 1
            return
        more = f" ({self.quiet} more since the last report)" if self.quiet else ""
        self._log.log(self._level, fmt + "%s", *args, more, exc_info=exc_info)
        self.last, self.quiet = now, 0
