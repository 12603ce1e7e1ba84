"""The image cache build's moving parts: a shard decoded straight into shared memory, and its
commit overlapped with the next shard's decoding.

The one building process used to receive every decoded image pickled from the pool, stack them
and write them, one shard after another: about 1 ms of its own CPU per image, a bound on the
build however many decoding processes ran. Here the workers write pixels into a
:class:`ShardBlock` (one slot per image) and send back only the images they could not decode,
and a :class:`ShardWriter` commits a shard in one thread while the next one decodes. The commit
order of :mod:`bincount.core.chunks` is the caller's (``bincount.images.cache``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_or_reason

logger = logging.getLogger(__name__)

# Every block is named ``bincount-<pid>-<random>``: a leaked one is recognisable in /dev/shm,
# and by the process that made it (tests look for their own).
SHM_PREFIX = "bincount-"


class ShardBlock:
    """A shard's pixels, uint8 ``(images, size, size, 3)``, in a named shared memory segment the
    decoding processes write into. :meth:`release` closes and unlinks it; call it once, in a
    ``finally``, whoever ends up holding the block."""

    def __init__(self, images: int, size: int) -> None:
        if images < 1:
            raise ValueError(f"Expected a shard of at least 1 image, but got {images}")
        self.shape = (images, size, size, 3)
        self.memory = SharedMemory(
            name=f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}",
            create=True,
            size=int(np.prod(self.shape)),
        )

    @property
    def name(self) -> str:
        return self.memory.name

    def pixels(self) -> np.ndarray:
        """A view of the block: drop it before :meth:`release` (an mmap with views cannot close)."""
        return np.ndarray(self.shape, np.uint8, buffer=self.memory.buf)

    def release(self) -> None:
        # Unlink first: the name is gone from /dev/shm even when a view kept alive (by a
        # traceback's frame, say) stops the close; the pages go with the last mapping.
        with contextlib.suppress(FileNotFoundError):
            self.memory.unlink()
        try:
            self.memory.close()
        except BufferError:
            logger.debug("block %s still viewed: its mapping closes when collected", self.name)


def decode_into_block(
    pool: ProcessPoolExecutor,
    payloads: Sequence[bytes | Exception],
    *,
    size: int,
    limits: ImageLimits,
    workers: int,
) -> tuple[ShardBlock, dict[int, UndecodableImage]]:
    """Decode a shard's payloads in ``pool`` into a new block; the block and, by slot, the images
    not decoded (their slots are left zero). The block is released here if decoding fails."""
    block = ShardBlock(len(payloads), size)
    # Four batches per worker: the pool stays busy while a slow batch finishes.
    step = max(1, len(payloads) // (workers * 4))
    futures: list[Future] = []
    try:
        for start in range(0, len(payloads), step):
            batch = list(payloads[start : start + step])
            futures.append(pool.submit(_decode_into, block.name, start, batch, size, limits))
        failed: dict[int, UndecodableImage] = {}
        for future in futures:
            failed.update(future.result())
        return block, failed
    except BaseException:
        # No worker may still write into a block this process unlinks: cancel what has not
        # started and let the rest end.
        for future in futures:
            future.cancel()
        wait_futures(futures)
        block.release()
        raise


def _decode_into(
    name: str,
    start: int,
    payloads: list[bytes | Exception],
    size: int,
    limits: ImageLimits | None,
) -> dict[int, UndecodableImage]:
    """In a decoding process: decode ``payloads`` into slots ``start...`` of block ``name``;
    returns only the failures, so no pixels are pickled back."""
    # Attaching registers the name with the resource tracker the pool shares with the building
    # process (a set: registering twice is harmless); that process's unlink unregisters it.
    memory = SharedMemory(name=name)
    failed = {}
    try:
        slots = np.ndarray(
            (len(payloads), size, size, 3),
            np.uint8,
            buffer=memory.buf,
            offset=start * size * size * 3,
        )
        for i, payload in enumerate(payloads):
            result = decode_or_reason(payload, size, limits)
            if isinstance(result, UndecodableImage):
                failed[start + i] = result
            else:
                slots[i] = result
        del slots
    finally:
        memory.close()
    return failed


class ShardWriter:
    """Commits shards in one thread, in the order given, at most one in flight, while the
    building thread decodes the next. A commit's error is raised in the building thread, at its
    next :meth:`submit` or at the exit; an error leaving the ``with`` block waits for the commit
    in flight to finish (or fail: logged, the first error propagates) before it goes on."""

    def __init__(self, on_committed: Callable[[int], None] = lambda count: None) -> None:
        self.on_committed = on_committed
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-commit")
        self._pending: tuple[Future, int] | None = None

    def submit(self, commit: Callable[[ShardBlock], None], block: ShardBlock, count: int) -> None:
        """Commit ``block`` (``count`` images) with ``commit`` after the commit in flight; the
        block is this writer's from here, released once committed or not."""
        try:
            self._collect()
        except BaseException:
            block.release()
            raise
        self._pending = (self._thread.submit(_commit_then_release, commit, block), count)

    def _collect(self) -> None:
        if self._pending is None:
            return
        future, count = self._pending
        self._pending = None
        future.result()
        self.on_committed(count)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is None:
                self._collect()
            elif self._pending is not None:
                future, _ = self._pending
                self._pending = None
                if future.exception() is not None:  # waits; the building error goes on
                    logger.error("the shard commit in flight failed too: %r", future.exception())
        finally:
            self._thread.shutdown(wait=True)


def _commit_then_release(commit: Callable[[ShardBlock], None], block: ShardBlock) -> None:
    try:
        commit(block)
    finally:
        block.release()
