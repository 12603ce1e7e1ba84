"""Run a producer ahead of its consumer in a background thread, so I/O and decoding overlap the
model. Used by the training loader and by scoring."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Prefetched(Generic[T]):
    """Iterate ``items`` up to ``depth`` ahead in a thread; errors reach the consumer intact.

    ``wait_seconds`` is how long the consumer waited for items: near zero when the producer
    keeps up, the whole gap when it is the bottleneck.
    """

    def __init__(self, items: Iterable[T], *, depth: int, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"Expected a prefetch depth >= 1, but got {depth}")
        self.items, self.depth, self.name = items, depth, name
        self.wait_seconds = 0.0

    def __iter__(self) -> Iterator[T]:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self.items:
                    if stop.is_set():
                        return
                    ready.put(item)
            except BaseException as error:  # handed to the consumer, never lost
                ready.put(error)
            ready.put(_DONE)

        thread = threading.Thread(target=produce, daemon=True, name=self.name)
        thread.start()
        self.wait_seconds = 0.0
        try:
            while True:
                started = time.perf_counter()
                item = ready.get()
                self.wait_seconds += time.perf_counter() - started
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # A consumer that stops early: let the producer finish its current put and exit.
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.1)
