"""Progress lines for long steps: what is done of how much, and how fast, every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Progress:
    """Logs ``<what>: <done> of <total> (<rate>/s)`` at most every ``every`` seconds, and once
    more when the last item is done."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int,
        *,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.what, self.total, self.every, self.clock = (
            logger,
            what,
            total,
            every,
            clock,
        )
        self.done = 0
        self.started = self.last = clock()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now - self.last >= self.every or (self.done >= self.total and self.last != now):
            self.last = now
            rate = self.done / (now - self.started) if now > self.started else 0.0
            self.logger.info(
                "%s: %d of %d (%.0f%%, %.1f/s)",
                self.what,
                self.done,
                self.total,
                100 * self.done / self.total if self.total else 100.0,
                rate,
            )
