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
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from bincount.core.lease import process_alive
from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_or_reason

logger = logging.getLogger(__name__)

# Every block is named ``bincount-<pid>-<random>``: a leaked one is recognisable in /dev/shm
# (or the temporary folder), and by the process that made it (tests look for their own).
SHM_PREFIX = "bincount-"
SHM_FOLDER = "/dev/shm"
# Two blocks are alive at once (one decoding, one committing), with room to spare.
_ROOM_NEEDED = 2.5


class ShardBlock:
    """A shard's pixels, uint8 ``(images, size, size, 3)``, in memory the decoding processes
    write into: a named shared-memory segment, or, where /dev/shm has no room for it (Docker
    gives a container 64 MB unless told otherwise; a 224 px shard of 2,048 images is 308 MB), a
    file in the temporary folder mapped by every process, which the page cache serves alike.
    :meth:`release` closes and removes it; call it once, in a ``finally``, whoever ends up
    holding the block."""

    def __init__(self, images: int, size: int, *, in_memory: bool | None = None) -> None:
        if images < 1:
            raise ValueError(f"Expected a shard of at least 1 image, but got {images}")
        self.shape = (images, size, size, 3)
        nbytes = int(np.prod(self.shape))
        name = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if in_memory is None:
            in_memory = _shared_memory_room() >= _ROOM_NEEDED * nbytes
        self.memory: SharedMemory | None = None
        self.path: str | None = None
        if in_memory:
            self.memory = SharedMemory(name=name, create=True, size=nbytes)
        else:
            self.path = os.path.join(tempfile.gettempdir(), name)
            with open(self.path, "xb") as handle:
                handle.truncate(nbytes)

    @property
    def name(self) -> str:
        """What a decoding process attaches to: the segment's name, or the file's path."""
        return self.memory.name if self.memory is not None else str(self.path)

    def pixels(self) -> np.ndarray:
        """A view of the block: drop it before :meth:`release` (an mmap with views cannot close)."""
        if self.memory is not None:
            return np.ndarray(self.shape, np.uint8, buffer=self.memory.buf)
        return np.memmap(str(self.path), np.uint8, "r+", shape=self.shape)

    def release(self) -> None:
        if self.memory is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path))
            return
        # Unlink first: the name is gone from /dev/shm even when a view kept alive (by a
        # traceback's frame, say) stops the close; the pages go with the last mapping.
        with contextlib.suppress(FileNotFoundError):
            self.memory.unlink()
        try:
            self.memory.close()
        except BufferError:
            logger.debug("block %s still viewed: its mapping closes when collected", self.name)


# A block lives for one shard's decode and commit: seconds to minutes.
STALE_AFTER_S = 3600


def sweep_stale_blocks(folder: str, *, now: float | None = None) -> list[str]:
    """Remove the file-backed blocks in ``folder`` that a killed build left: named
    ``bincount-<pid>-*``, older than :data:`STALE_AFTER_S`, their process gone. (A segment in
    /dev/shm is the resource tracker's to remove; a file is nobody's.) Returns their names."""
    now = time.time() if now is None else now
    swept = []
    for entry in os.scandir(folder):
        pid = entry.name.removeprefix(SHM_PREFIX).split("-", 1)[0]
        if not entry.name.startswith(SHM_PREFIX) or not pid.isdigit() or process_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
                swept.append(entry.name)
    if swept:
        logger.info("removed %d image-cache blocks left by killed builds in %s", len(swept), folder)
    return swept


def _shared_memory_room() -> int:
    """Bytes free in /dev/shm; 0 where there is none (not Linux)."""
    try:
        found = os.statvfs(SHM_FOLDER)
    except OSError:
        return 0
    return found.f_bavail * found.f_frsize


def _attach(
    name: str, shape: tuple[int, int, int, int], start: int
) -> tuple[np.ndarray, SharedMemory | None]:
    """Slots ``start...`` of the block ``name`` (a segment, or a file's path), writable, and the
    segment to close once the view is dropped (None for a file)."""
    offset = start * int(np.prod(shape[1:]))
    if os.sep in name:  # a file: np.memmap maps it in this process
        return np.memmap(name, np.uint8, "r+", offset=offset, shape=shape), None
    memory = SharedMemory(name=name)
    return np.ndarray(shape, np.uint8, buffer=memory.buf, offset=offset), memory


def decode_into_block(
    pool: ProcessPoolExecutor,
    payloads: Sequence[bytes | Exception],
    *,
    size: int,
    limits: ImageLimits,
    workers: int,
    in_memory: bool | None = None,
) -> tuple[ShardBlock, dict[int, UndecodableImage]]:
    """Decode a shard's payloads in ``pool`` into a new block (``in_memory``: see
    :class:`ShardBlock`); the block and, by slot, the images not decoded (their slots are left
    zero). The block is released here if decoding fails."""
    block = ShardBlock(len(payloads), size, in_memory=in_memory)
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
    # Attaching a segment registers its name with the resource tracker the pool shares with the
    # building process (a set: registering twice is harmless); that process's unlink
    # unregisters it.
    slots, memory = _attach(name, (len(payloads), size, size, 3), start)
    failed = {}
    try:
        for i, payload in enumerate(payloads):
            result = decode_or_reason(payload, size, limits)
            if isinstance(result, UndecodableImage):
                failed[start + i] = result
            else:
                slots[i] = result
    finally:
        del slots
        if memory is not None:
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
