"""Decode each manifest image once, at the training resolution, into large shards.

``<output>/cache/<manifest version>/<size>/`` holds ``shard-<n>.npy`` files (uint8, N×S×S×3) and
an ``index.parquet`` (image_id, label, split, shard, offset), so epochs after the first never
touch the source bucket and a loader reads a few large objects instead of many small ones. An
image that does not decode becomes a quarantine row (stage ``images``) and is left out.
``_complete.json`` is written last: a cache without it is rebuilt.

Training reads a split image by image from the shards (:func:`load_cached_splits`), so its
memory does not grow with the cache; shards on S3 are staged once into a local spill folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image, JpegImagePlugin

from bincount.core.chunks import ChunkProtocol, Parts, Stage, cut, part_name, quarantine_row
from bincount.core.limits import ImageLimits
from bincount.core.progress import Progress
from bincount.core.sources import fetch_uris, open_sources
from bincount.core.storage import Location, ObjectTooLarge

logger = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int32()),
    ]
)


# What scoring and the cache decode: JPEG (ABID's format) and a few common formats. Anything
# else (EPS, PDF, ...) is refused rather than handed to a plugin that may shell out.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Frame markers of sequential JPEGs, which libjpeg decodes a row of blocks at a time.
_SEQUENTIAL_JPEG = (0xC0, 0xC1, 0xC9)


class UndecodableImage(ValueError):
    """An image that was not decoded: ``code`` is its stable reason code, ``exception_type``
    the error that decided it."""

    def __init__(self, code: str, reason: str, exception_type: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.exception_type = exception_type or type(self).__name__

    def __reduce__(self):  # returned from the cache's decoding processes
        return type(self), (self.code, self.reason, self.exception_type)


def decode_image(payload: bytes, size: int, limits: ImageLimits | None = None) -> np.ndarray:
    """JPEG (or PNG, WebP, ...) bytes → uint8 array (size, size, 3), aspect not kept.

    Squashing instead of cropping keeps every item in the frame: a crop could cut one out and
    change the count. ``draft`` lets libjpeg decode at a reduced scale, several times faster,
    and keeps a huge JPEG within ``limits.max_pixels``. Raises :class:`UndecodableImage`.
    """
    limits = limits or ImageLimits()
    if len(payload) > limits.max_bytes:
        raise UndecodableImage(
            "image_too_large",
            f"Expected an image of at most {limits.max_bytes:,} bytes, but got {len(payload):,}",
        )
    try:
        with _open_image(payload) as image:
            declared = image.size
            image.draft("RGB", (size, size))
            pixels = _pixels_held(image, declared, payload)
            if pixels > limits.max_pixels:
                raise UndecodableImage(
                    "image_too_many_pixels",
                    f"Expected an image that decodes to at most {limits.max_pixels:,} pixels, "
                    f"but {declared[0]}x{declared[1]} decodes to {pixels:,}",
                )
            rgb = image.convert("RGB")
            return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except UndecodableImage:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own bound, for formats it opens
        raise UndecodableImage(
            "image_too_many_pixels",
            f"Expected an image within Pillow's decompression bomb bound, but {error}",
            type(error).__name__,
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # Pillow's plugins raise many types for broken bytes
        raise UndecodableImage(
            "undecodable_image",
            f"Expected a decodable image, but {type(error).__name__}: {error}",
            type(error).__name__,
        ) from None


def _open_image(payload: bytes) -> Image.Image:
    """The image's header, not its pixels. A JPEG opens without Pillow's process-wide bomb
    check, which would refuse a huge JPEG that ``draft`` can still decode small; the pixel
    limit applies after ``draft`` instead."""
    if payload[:3] == b"\xff\xd8\xff":
        return JpegImagePlugin.JpegImageFile(io.BytesIO(payload))
    return Image.open(io.BytesIO(payload), formats=IMAGE_FORMATS)


def _pixels_held(image: Image.Image, declared: tuple[int, int], payload: bytes) -> int:
    """Pixels the decoder holds: a sequential, interleaved JPEG's at its draft scale; any other
    at full size (libjpeg keeps every coefficient of a progressive or multi-scan JPEG)."""
    width, height = image.size
    if image.format == "JPEG" and _decodes_row_by_row(payload):
        return width * height
    return declared[0] * declared[1]


def _decodes_row_by_row(payload: bytes) -> bool:
    """Whether a JPEG is sequential and its first scan holds every component (read from its
    frame and scan headers); anything unexpected answers no."""
    position, frame, components = 2, None, None
    while position + 4 < len(payload):
        if payload[position] != 0xFF:
            return False
        marker = payload[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = marker
            components = payload[position + 9] if position + 9 < len(payload) else None
        if marker == 0xDA:
            return frame in _SEQUENTIAL_JPEG and payload[position + 4] == components
        position += 2 + int.from_bytes(payload[position + 2 : position + 4], "big")
    return False


def decode_or_reason(
    payload: bytes | Exception, size: int, limits: ImageLimits | None = None
) -> np.ndarray | UndecodableImage:
    """The decoded image, or why there is none (a fetch error, the limits, undecodable bytes)."""
    if isinstance(payload, ObjectTooLarge):
        return UndecodableImage("image_too_large", str(payload), type(payload).__name__)
    if isinstance(payload, Exception):
        return UndecodableImage(
            "unreadable_image",
            f"Expected a readable image object, but got {payload!r}",
            type(payload).__name__,
        )
    try:
        return decode_image(payload, size, limits)
    except UndecodableImage as error:
        return error


def _decode_batch(
    payloads: list[bytes | Exception], size: int, limits: ImageLimits | None
) -> list[np.ndarray | UndecodableImage]:
    return [decode_or_reason(payload, size, limits) for payload in payloads]


@dataclass(frozen=True)
class CacheSummary:
    """A built (or found) image cache."""

    uri: str
    manifest_version: str
    size: int
    images: int
    quarantined: int
    shards: int
    created: bool


def cache_folder(manifest_version: str, size: int) -> str:
    return f"cache/{manifest_version}/{size}"


def build_image_cache(
    source: Location,
    output: Location,
    manifest: pa.Table,
    *,
    manifest_version: str,
    size: int,
    shard_size: int = 2048,
    concurrency: int = 64,
    workers: int | None = None,
    limits: ImageLimits | None = None,
    run_id: str = "",
    sources: Sequence[str] = (),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CacheSummary:
    """Decode every manifest image once into shards (or return the complete cache).

    Each shard is a chunk of the exactly-once protocol (:mod:`bincount.core.chunks`): its ``.npy``
    and quarantine part first, its index part last, so a killed build resumes at the shard it
    stopped in. Each image is read from the location its URI is under: ``source`` or one of
    ``sources`` (a manifest's ``sources``), opened the way ``source`` is.
    """
    limits = limits or ImageLimits()
    if size < 16:
        raise ValueError(f"Expected an image size of at least 16 px, but got {size}")
    folder = cache_folder(manifest_version, size)
    if output.exists(f"{folder}/_complete.json"):
        done = json.loads(output.read_bytes(f"{folder}/_complete.json"))
        return CacheSummary(**{**done, "created": False})

    chunks = cut(manifest.sort_by("image_id").to_pylist(), shard_size)
    names = [shard_part_name(manifest_version, size, n, chunk) for n, chunk in enumerate(chunks)]
    protocol = cache_protocol(manifest_version, size)
    protocol.discard_uncommitted(output)
    committed = protocol.committed(output)
    todo = [n for n, name in enumerate(names) if name not in committed]
    total = sum(len(chunk) for chunk in chunks)
    progress = Progress(logger, f"cached images of manifest {manifest_version}", total)
    if len(todo) < len(chunks):
        logger.info(
            "resuming the image cache %s at shard %d: %d of %d shards already built",
            output.uri(folder),
            todo[0] if todo else len(chunks),
            len(chunks) - len(todo),
            len(chunks),
        )
        progress.done = total - sum(len(chunks[n]) for n in todo)
    locations = open_sources(source, list(sources))
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n in todo:
            _cache_shard(
                output,
                protocol,
                pool,
                locations,
                chunks[n],
                folder=folder,
                shard=n,
                name=names[n],
                size=size,
                workers=workers,
                concurrency=concurrency,
                limits=limits,
                run_id=run_id,
                now=clock(),
            )
            progress.advance(len(chunks[n]))

    index = pa.concat_tables(
        [INDEX_SCHEMA.empty_table()]
        + [output.read_parquet(protocol.marker.key(name)).cast(INDEX_SCHEMA) for name in names]
    )
    # Quarantine parts of an earlier build cut into other shards are no longer this cache's.
    stale = set(protocol.quarantine.keys(output)) - set(names)
    output.delete([protocol.quarantine.key(name) for name in sorted(stale)])
    output.write_parquet(f"{folder}/index.parquet", index)
    summary = CacheSummary(
        uri=output.uri(folder),
        manifest_version=manifest_version,
        size=size,
        images=index.num_rows,
        quarantined=total - index.num_rows,
        shards=len(chunks),
        created=True,
    )
    done = {k: v for k, v in summary.__dict__.items() if k != "created"}
    output.write_bytes(f"{folder}/_complete.json", json.dumps(done, indent=2).encode())
    return summary


def cache_protocol(manifest_version: str, size: int) -> ChunkProtocol:
    """A cache's shards as chunks: the ``.npy`` and the quarantine part (stage ``images``, named
    after the cache) first, the shard's index part in ``_shards/`` last."""
    prefix = f"{manifest_version}-{size}-"
    return ChunkProtocol(
        Stage.IMAGES,
        marker=Parts(f"{cache_folder(manifest_version, size)}/_shards", contract=False),
        owns=lambda name: name.startswith(prefix),
    )


def shard_part_name(manifest_version: str, size: int, shard: int, rows: Sequence[dict]) -> str:
    """``<manifest>-<size>-<shard>-<content>``: the cache it belongs to, the shard it fills,
    and the images in it (a build cut into other shards never takes it for its own)."""
    content = part_name(row["image_uri"] for row in rows)[:12]
    return f"{manifest_version}-{size}-{shard:05d}-{content}"


def _cache_shard(
    output: Location,
    protocol: ChunkProtocol,
    pool: ProcessPoolExecutor,
    locations: dict[str, Location],
    rows: list[dict],
    *,
    folder: str,
    shard: int,
    name: str,
    size: int,
    workers: int,
    concurrency: int,
    limits: ImageLimits,
    run_id: str,
    now: datetime,
) -> None:
    """Fetch, decode and commit one shard: ``shard-<n>.npy`` (empty when nothing decoded) and
    its quarantine rows, then its index part."""
    payloads = fetch_uris(
        locations,
        [row["image_uri"] for row in rows],
        concurrency=concurrency,
        max_bytes=limits.max_bytes,
    )
    step = max(1, len(rows) // (workers * 4))
    batches = [payloads[i : i + step] for i in range(0, len(rows), step)]
    n = len(batches)
    results = pool.map(_decode_batch, batches, [size] * n, [limits] * n)
    decoded = [item for batch in results for item in batch]
    index, arrays, rejects = [], [], []
    for row, result in zip(rows, decoded, strict=True):
        if isinstance(result, UndecodableImage):
            rejects.append(
                quarantine_row(
                    Stage.IMAGES,
                    row["image_uri"],
                    result,
                    image_id=row["image_id"],
                    run_id=run_id,
                    now=now,
                )
            )
            continue
        index.append(
            {
                "image_id": row["image_id"],
                "label": row["label"],
                "split": row["split"],
                "shard": shard,
                "offset": len(arrays),
            }
        )
        arrays.append(result)
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    _write_npy(output, f"{folder}/shard-{shard:05d}.npy", images)
    protocol.commit(output, name, pa.Table.from_pylist(index, INDEX_SCHEMA), rejects=rejects)


def _write_npy(output: Location, key: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    output.write_bytes(key, buffer.getvalue())


# -- reading ------------------------------------------------------------------------------------
# A split is read image by image from the shard files (positional reads into the caller's
# buffer), never stacked into one array and never memory-mapped: pages a process maps and
# touches count in its resident memory, so an epoch over mapped shards ends up holding the whole
# cache. Read this way, the process holds only the batches in flight; the kernel's page cache
# (evictable, shared between ranks) keeps hot shards close. Shards on S3 are staged once into a
# local spill folder and read from there.
_IOV_MAX = 512  # buffers per preadv call, below the kernel's 1024


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
