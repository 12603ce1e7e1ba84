"""Decode each manifest image once, at the training resolution, into large shards.

``<output>/cache/<manifest version>/<size>/`` holds ``shard-<n>.npy`` files (uint8, N×S×S×3) and
an ``index.parquet`` (image_id, label, split, shard, offset), so epochs after the first never
touch the source bucket and a loader reads a few large objects instead of many small ones. An
image that does not decode becomes a quarantine row (stage ``images``) and is left out.
``_complete.json`` is written last: a cache without it is rebuilt.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from bincount.storage import Location
from bincount.tables import QUARANTINE, write_part

logger = logging.getLogger(__name__)

IMAGES_STAGE = {"stage": "images"}
INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int32()),
    ]
)


class UndecodableImage(ValueError):
    """An image that Pillow cannot decode completely."""


def decode_image(payload: bytes, size: int) -> np.ndarray:
    """JPEG (or any Pillow format) bytes → uint8 array (size, size, 3), aspect not kept.

    Squashing instead of cropping keeps every item in the frame: a crop could cut one out and
    change the count. ``draft`` lets libjpeg decode at a reduced scale, several times faster.
    """
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.draft("RGB", (size, size))
            rgb = image.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UndecodableImage(f"Expected a decodable image, but {error}") from None
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_or_reason(payload: bytes | Exception, size: int) -> np.ndarray | str:
    """The decoded image, or why there is none (a fetch error or undecodable bytes)."""
    if isinstance(payload, Exception):
        return f"Expected a readable image object, but got {payload!r}"
    try:
        return decode_image(payload, size)
    except UndecodableImage as error:
        return str(error)


def _decode_batch(payloads: list[bytes | Exception], size: int) -> list[np.ndarray | str]:
    return [decode_or_reason(payload, size) for payload in payloads]


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
    run_id: str = "",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CacheSummary:
    """Decode every manifest image once into shards (or return the complete cache)."""
    if size < 16:
        raise ValueError(f"Expected an image size of at least 16 px, but got {size}")
    folder = cache_folder(manifest_version, size)
    if output.exists(f"{folder}/_complete.json"):
        done = json.loads(output.read_bytes(f"{folder}/_complete.json"))
        return CacheSummary(**{**done, "created": False})

    rows = manifest.sort_by("image_id").to_pylist()
    root = source.uri() + "/"
    index: list[dict] = []
    rejects: list[dict] = []
    workers = workers or os.cpu_count() or 1
    shard = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(rows), shard_size):
            batch = rows[start : start + shard_size]
            keys = [_key_under(root, row["image_uri"]) for row in batch]
            payloads = source.fetch_many(keys, concurrency=concurrency)
            step = max(1, len(batch) // (workers * 4))
            parts = [payloads[i : i + step] for i in range(0, len(batch), step)]
            decoded = [
                item
                for part in pool.map(_decode_batch, parts, [size] * len(parts))
                for item in part
            ]
            arrays = []
            for row, result in zip(batch, decoded, strict=True):
                if isinstance(result, str):
                    rejects.append(_reject(row, result, run_id=run_id, now=clock()))
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
            if arrays:
                _write_npy(output, f"{folder}/shard-{shard:05d}.npy", np.stack(arrays))
                shard += 1
            logger.info("cached %d of %d images", start + len(batch), len(rows))

    if rejects:
        write_part(
            output, QUARANTINE, f"{manifest_version}-{size}", rejects, partition=IMAGES_STAGE
        )
    output.write_parquet(f"{folder}/index.parquet", pa.Table.from_pylist(index, INDEX_SCHEMA))
    summary = CacheSummary(
        uri=output.uri(folder),
        manifest_version=manifest_version,
        size=size,
        images=len(index),
        quarantined=len(rejects),
        shards=shard,
        created=True,
    )
    done = {k: v for k, v in summary.__dict__.items() if k != "created"}
    output.write_bytes(f"{folder}/_complete.json", json.dumps(done, indent=2).encode())
    return summary


def _key_under(root: str, uri: str) -> str:
    if not uri.startswith(root):
        raise ValueError(f"Expected image URIs under {root}, but got {uri}")
    return uri[len(root) :]


def _reject(row: dict, reason: str, *, run_id: str, now: datetime) -> dict:
    return undecodable_image_row(
        IMAGES_STAGE["stage"], row["image_uri"], row["image_id"], reason, run_id=run_id, now=now
    )


def undecodable_image_row(
    stage: str, image_uri: str, image_id: str, reason: str, *, run_id: str, now: datetime
) -> dict:
    """The quarantine row of an image that could not be read or decoded at ``stage``."""
    return {
        "stage": stage,
        "object_key": image_uri,
        "image_id": image_id,
        "etag": None,
        "reason_code": "undecodable_image",
        "reason": reason,
        "expectation": None,
        "run_id": run_id,
        "quarantined_at": now,
    }


def _write_npy(output: Location, key: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    output.write_bytes(key, buffer.getvalue())


@dataclass
class CachedSplit:
    """One split of a cache in memory: uint8 images (N, S, S, 3), labels and ids."""

    images: np.ndarray
    labels: np.ndarray
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_cached_splits(
    output: Location, manifest_version: str, size: int, splits: tuple[str, ...]
) -> dict[str, CachedSplit]:
    """The cached images of ``splits``; shards are memory-mapped when the output is local."""
    folder = cache_folder(manifest_version, size)
    if not output.exists(f"{folder}/_complete.json"):
        raise FileNotFoundError(
            f"Expected a complete image cache at {output.uri(folder)}: build it first"
        )
    index = output.read_parquet(f"{folder}/index.parquet").to_pylist()
    shards: dict[int, np.ndarray] = {}
    for number in sorted({row["shard"] for row in index}):
        shards[number] = _read_npy(output, f"{folder}/shard-{number:05d}.npy")
    loaded = {}
    for split in splits:
        rows = [row for row in index if row["split"] == split]
        images = (
            np.stack([shards[r["shard"]][r["offset"]] for r in rows])
            if rows
            else np.zeros((0, size, size, 3), np.uint8)
        )
        loaded[split] = CachedSplit(
            images=images,
            labels=np.array([r["label"] for r in rows], dtype=np.int64),
            image_ids=[r["image_id"] for r in rows],
        )
    return loaded


def _read_npy(output: Location, key: str) -> np.ndarray:
    if not output.is_s3:
        return np.load(output.path(key), mmap_mode="r", allow_pickle=False)
    with tempfile.TemporaryFile() as handle:
        handle.write(output.read_bytes(key))
        handle.seek(0)
        return np.load(handle, allow_pickle=False)
