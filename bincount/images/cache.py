"""Decode each manifest image once, at the training resolution, into large shards.

``<output>/cache/<manifest version>/<size>/`` holds ``shard-<n>.npy`` files (uint8, N×S×S×3) and
an ``index.parquet`` (image_id, label, split, shard, offset), so epochs after the first never
touch the source bucket and a loader reads a few large objects instead of many small ones. An
image that does not decode becomes a quarantine row (stage ``images``) and is left out.
``_complete.json`` is written last: a cache without it is rebuilt. The build is a pipeline
(:mod:`bincount.images.cachebuild`): the next shard is fetched while one decodes into shared
memory, and each shard commits in a writer thread while the next decodes.

Training reads a split image by image from the shards (:func:`load_cached_splits`), so its
memory does not grow with the cache; shards on S3 are staged once into a local spill folder.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from bincount.core.chunks import ChunkProtocol, Parts, Stage, cut, part_name, quarantine_row
from bincount.core.faults import FAULT_CODES, check_faults
from bincount.core.limits import ImageLimits
from bincount.core.pending import pending_row, record_pending, settle_pending
from bincount.core.progress import Progress
from bincount.core.sources import fetch_uris, open_sources
from bincount.core.storage import Location
from bincount.images.cachebuild import (
    ShardBlock,
    ShardWriter,
    decode_into_block,
    sweep_stale_blocks,
)
from bincount.images.decode import UndecodableImage
from bincount.images.prefetch import Prefetched

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
    sweep_stale_blocks(tempfile.gettempdir())  # file-backed blocks a killed build left
    # The next shard's photos are fetched while this one decodes, and this one commits while
    # the next decodes: the pool no longer idles through the fetch and the write.
    fetching = dict(concurrency=concurrency, max_bytes=limits.max_bytes)
    fetched = Prefetched(
        (
            (n, fetch_uris(locations, [row["image_uri"] for row in chunks[n]], **fetching))
            for n in todo
        ),
        depth=1,
        name="cache-fetch",
    )
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        ShardWriter(on_committed=progress.advance) as writer,
        contextlib.closing(iter(fetched)) as shards,
    ):
        for n, payloads in shards:
            block, failed = decode_into_block(
                pool, payloads, size=size, limits=limits, workers=workers
            )
            try:
                index, rejects = _sort_shard(
                    output, chunks[n], failed, shard=n, name=names[n], run_id=run_id, now=clock()
                )
            except BaseException:
                block.release()
                raise
            commit = functools.partial(
                _commit_shard,
                output,
                protocol,
                key=f"{folder}/shard-{n:05d}.npy",
                name=names[n],
                index=index,
                rejects=rejects,
                failed=sorted(failed),
            )
            writer.submit(commit, block, len(chunks[n]))

    index = pa.concat_tables(
        [INDEX_SCHEMA.empty_table()]
        + [output.read_parquet(protocol.marker.key(name)).cast(INDEX_SCHEMA) for name in names]
    )
    # Quarantine parts of an earlier build cut into other shards are no longer this cache's.
    stale = set(protocol.quarantine.keys(output)) - set(names)
    output.delete([protocol.quarantine.key(name) for name in sorted(stale)])
    output.write_parquet(f"{folder}/index.parquet", index)
    # Every shard is committed: each image is in the index or the quarantine, none pending.
    cached = [row["image_uri"] for chunk in chunks for row in chunk]
    settle_pending(output, Stage.IMAGES, pa.table({"object_key": pa.array(cached, pa.string())}))
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


def _sort_shard(
    output: Location,
    rows: list[dict],
    failed: dict[int, UndecodableImage],
    *,
    shard: int,
    name: str,
    run_id: str,
    now: datetime,
) -> tuple[pa.Table, list[dict]]:
    """A decoded shard's index part (each image's offset among those decoded) and quarantine
    rows; raises :class:`~bincount.core.faults.SourceUnreadable` when an image was not read."""
    unread = [(rows[i], why) for i, why in sorted(failed.items()) if why.code in FAULT_CODES]
    if unread:
        # A cache is complete or it is not one: a shard with an image not read is left
        # uncommitted (its images pending), the build fails, and the next build resumes here.
        record_pending(
            output,
            Stage.IMAGES,
            name,
            [
                pending_row(
                    Stage.IMAGES,
                    row["image_uri"],
                    fault,
                    image_id=row["image_id"],
                    run_id=run_id,
                    now=now,
                )
                for row, fault in unread
            ],
        )
        faults = [(row["image_uri"], fault) for row, fault in unread]
        check_faults(Stage.IMAGES, faults, len(rows), share=0.0)
    index, rejects = [], []
    for i, row in enumerate(rows):
        if i in failed:
            rejects.append(
                quarantine_row(
                    Stage.IMAGES,
                    row["image_uri"],
                    failed[i],
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
                "offset": len(index),
            }
        )
    return pa.Table.from_pylist(index, INDEX_SCHEMA), rejects


def _commit_shard(
    output: Location,
    protocol: ChunkProtocol,
    block: ShardBlock,
    *,
    key: str,
    name: str,
    index: pa.Table,
    rejects: list[dict],
    failed: list[int],
) -> None:
    """In the writer thread: ``shard-<n>.npy`` from the block (empty when nothing decoded; the
    failed slots dropped), its quarantine rows, then its index part, the shard's commit."""
    pixels = block.pixels()
    if failed:
        pixels = np.delete(pixels, failed, axis=0)  # a copy: only when some images failed
    try:
        _write_npy(output, key, pixels)
    finally:
        del pixels  # the block cannot close while a view of it lives
    protocol.commit(output, name, index, rejects=rejects)


def _write_npy(output: Location, key: str, array: np.ndarray) -> None:
    # The header, then the pixels joined to it in one copy: np.save into a BytesIO copies a
    # 300 MB shard three or four times (chunks, the buffer's growth, getvalue).
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    data = memoryview(array.reshape(-1).view(np.uint8))  # a view, not a copy
    output.write_bytes(key, b"".join((header.getvalue(), data)))
