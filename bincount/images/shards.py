"""Reading the image cache back: shards read image by image into the batch buffer, S3 shards staged
once in a spill folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bincount.core.storage import Location
from bincount.images.cache import cache_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardFile:
    """A cache shard on a local disk: a .npy of uint8 images (N, S, S, 3) and where they start."""

    path: str
    count: int
    image_shape: tuple[int, int, int]
    data_offset: int

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    @classmethod
    def open(cls, path: str) -> ShardFile:
        """Read the .npy header of ``path`` (not its pixels)."""
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            data_offset = handle.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] != 3:
            raise ValueError(
                f"Expected a C-ordered uint8 array (N, S, S, 3) in shard {path}, but got "
                f"{dtype} {shape}{' in Fortran order' if fortran else ''}"
            )
        return cls(path, int(shape[0]), tuple(int(n) for n in shape[1:]), data_offset)


class ShardReader:
    """Open shard files, read from by position: thread-safe (``pread`` moves no file offset)."""

    def __init__(self, files: dict[int, ShardFile]) -> None:
        self.files = files
        self._descriptors: dict[int, int] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._descriptors)

    def _descriptor(self, shard: int) -> int:
        with self._lock:
            if shard not in self._descriptors:
                self._descriptors[shard] = os.open(self.files[shard].path, os.O_RDONLY)
            return self._descriptors[shard]

    def read_into(self, out: np.ndarray, shards: np.ndarray, offsets: np.ndarray) -> None:
        """Image ``offsets[i]`` of shard ``shards[i]`` into ``out[i]``: runs of neighbouring
        images are read with one call, in file order."""
        order = np.lexsort((offsets, shards))
        start = 0
        while start < len(order):
            shard, first = int(shards[order[start]]), int(offsets[order[start]])
            end = start + 1
            while (
                end < len(order)
                and end - start < _IOV_MAX
                and shards[order[end]] == shard
                and offsets[order[end]] == first + (end - start)
            ):
                end += 1
            self._read_run(out, order[start:end], shard, first)
            start = end

    def _read_run(self, out: np.ndarray, targets: np.ndarray, shard: int, first: int) -> None:
        file = self.files[shard]
        if first + len(targets) > file.count:
            raise ValueError(
                f"Expected images {first}..{first + len(targets) - 1} in shard {file.path}, "
                f"but it holds {file.count}"
            )
        position = file.data_offset + first * file.image_bytes
        buffers = [memoryview(out[i]).cast("B") for i in targets]
        wanted = file.image_bytes * len(targets)
        got = os.preadv(self._descriptor(shard), buffers, position)
        while got < wanted:  # a short read (rare on local files): go on from where it stopped
            more = os.preadv(self._descriptor(shard), _rest(buffers, got), position + got)
            if more == 0:
                raise ValueError(
                    f"Expected {wanted} bytes at {position} in shard {file.path}, but it ends "
                    f"after {got}"
                )
            got += more

    def close(self) -> None:
        self._finalizer()


def _rest(buffers: list[memoryview], skip: int) -> list[memoryview]:
    rest = []
    for buffer in buffers:
        if skip >= len(buffer):
            skip -= len(buffer)
            continue
        rest.append(buffer[skip:])
        skip = 0
    return rest


def _close_all(descriptors: dict[int, int]) -> None:
    for descriptor in descriptors.values():
        os.close(descriptor)
    descriptors.clear()


@dataclass
class CachedSplit:
    """One split of a cache, read on demand: labels and ids in memory, images in the shards.

    Memory does not grow with the split: ``read`` fills a batch from the shard files.
    """

    labels: np.ndarray
    image_ids: list[str]
    shards: np.ndarray  # each image's shard number
    offsets: np.ndarray  # and its position in that shard
    size: int
    reader: ShardReader | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 images (len(indices), S, S, 3) of the split's ``indices``, in that order;
        into ``out`` when given (a pinned buffer, say)."""
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        if out.shape != (len(indices), self.size, self.size, 3) or out.dtype != np.uint8:
            raise ValueError(
                f"Expected a uint8 buffer {(len(indices), self.size, self.size, 3)}, but got "
                f"{out.dtype} {out.shape}"
            )
        if len(indices) and self.reader is not None:
            self.reader.read_into(out, self.shards[indices], self.offsets[indices])
        return out


def load_cached_splits(
    output: Location,
    manifest_version: str,
    size: int,
    splits: tuple[str, ...],
    *,
    spill: str | None = None,
) -> dict[str, CachedSplit]:
    """The cached images of ``splits``, read from the shards on demand.

    Local shards are read where they are; S3 shards are first staged into ``spill`` (default: a
    ``bincount-shards`` folder under the system's temporary folder), once: a staged copy whose
    object has not changed is reused by later runs and by every rank on the machine.
    """
    folder = cache_folder(manifest_version, size)
    if not output.exists(f"{folder}/_complete.json"):
        raise FileNotFoundError(
            f"Expected a complete image cache at {output.uri(folder)}: build it first"
        )
    index = output.read_parquet(f"{folder}/index.parquet")
    split_column = np.asarray(index.column("split").to_pylist(), dtype=object)
    shard_column = index.column("shard").to_numpy().astype(np.int32)
    offset_column = index.column("offset").to_numpy().astype(np.int64)
    wanted = np.isin(split_column, list(splits))
    numbers = sorted(int(n) for n in np.unique(shard_column[wanted]))
    # S3 shards download in parallel (a few at once: each is large and streams to disk).
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(numbers)))) as pool:
        paths = pool.map(
            lambda number: _local_shard(output, f"{folder}/shard-{number:05d}.npy", spill),
            numbers,
        )
        files = {number: ShardFile.open(path) for number, path in zip(numbers, paths, strict=True)}
    for number, file in files.items():
        if file.image_shape != (size, size, 3):
            raise ValueError(
                f"Expected {size}x{size} RGB images in shard {number} of "
                f"{output.uri(folder)}, but got {file.image_shape}"
            )
    reader = ShardReader(files)
    labels = index.column("label").to_numpy().astype(np.int64)
    ids = index.column("image_id").to_pylist()
    loaded = {}
    for split in splits:
        (rows,) = np.nonzero(split_column == split)
        loaded[split] = CachedSplit(
            labels=labels[rows],
            image_ids=[ids[i] for i in rows],
            shards=shard_column[rows],
            offsets=offset_column[rows],
            size=size,
            reader=reader,
        )
    return loaded


def default_spill_folder() -> str:
    """Where S3 shards are staged unless told otherwise (read when called, not at import)."""
    return os.path.join(tempfile.gettempdir(), "bincount-shards")


def _local_shard(output: Location, key: str, spill: str | None) -> str:
    """A local path holding shard ``key``: the file itself, or its staged copy."""
    if not output.is_s3:
        return output.path(key)
    info = output.fs.info(output.path(key))
    # Keyed by the object's URI, ETag and size: a rebuilt cache never reuses a stale copy.
    tag = f"{output.uri(key)}|{info.get('ETag', '')}|{info['size']}"
    digest = hashlib.sha256(tag.encode()).hexdigest()[:16]
    folder = os.path.join(
        spill or default_spill_folder(),
        hashlib.sha256(output.uri(key).encode()).hexdigest()[:16],
    )
    staged = os.path.join(folder, f"{digest}.npy")
    if os.path.exists(staged) and os.path.getsize(staged) == info["size"]:
        return staged
    os.makedirs(folder, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".staging-", suffix=".npy")
    os.close(handle)
    try:
        output.fs.get_file(output.path(key), partial)  # streamed to disk, not held in memory
        if os.path.getsize(partial) != info["size"]:
            raise OSError(
                f"Expected {info['size']} bytes of {output.uri(key)}, but staged "
                f"{os.path.getsize(partial)}"
            )
        os.replace(partial, staged)  # atomic: ranks staging the same shard never see half
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    for name in os.listdir(folder):  # copies of earlier versions of this object
        if name.endswith(".npy") and not name.startswith(".") and name != f"{digest}.npy":
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
    logger.info("staged %s in %s", output.uri(key), staged)
    return staged


# -- reading ------------------------------------------------------------------------------------
# A split is read image by image from the shard files (positional reads into the caller's
# buffer), never stacked into one array and never memory-mapped: pages a process maps and
# touches count in its resident memory, so an epoch over mapped shards ends up holding the whole
# cache. Read this way, the process holds only the batches in flight; the kernel's page cache
# (evictable, shared between ranks) keeps hot shards close. Shards on S3 are staged once into a
# local spill folder and read from there.
_IOV_MAX = 512  # buffers per preadv call, below the kernel's 1024
