"""Image caches written straight from generated pixels, in the layout ``build_image_cache``
writes: for tests and benchmarks of the reading side that need many images fast (decoding
40,000 synthetic JPEGs takes minutes on 2 cores; generating their pixels takes seconds).

Every image carries its number in its first pixel (three bytes, big-endian), so a reader's
output can be traced back to the image it came from: :func:`image_numbers`.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa

from bincount.core.storage import Location
from bincount.images.cache import INDEX_SCHEMA, cache_folder

SPLITS = ("train", "val", "test")


def write_generated_cache(
    output: Location,
    manifest_version: str,
    *,
    size: int,
    images: int,
    shard_size: int = 2048,
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_count: int = 5,
    seed: int = 0,
) -> None:
    """``images`` noise images (labels 0..max_count, splits mixed in every shard, as in a real
    cache), written one shard at a time: memory holds one shard, whatever ``images`` is."""
    if images >= 2**24:
        raise ValueError(f"Expected fewer than {2**24} images, but got {images}")
    folder = cache_folder(manifest_version, size)
    rng = np.random.default_rng(seed)
    rows = []
    for shard, start in enumerate(range(0, images, shard_size)):
        numbers = np.arange(start, min(start + shard_size, images))
        pixels = rng.integers(0, 256, (len(numbers), size, size, 3), dtype=np.uint8)
        pixels[:, 0, 0, :] = np.stack([(numbers >> s) & 0xFF for s in (16, 8, 0)], axis=1)
        buffer = io.BytesIO()
        np.save(buffer, pixels, allow_pickle=False)
        output.write_bytes(f"{folder}/shard-{shard:05d}.npy", buffer.getvalue())
        splits = rng.choice(len(SPLITS), size=len(numbers), p=split_shares)
        labels = rng.integers(0, max_count + 1, size=len(numbers))
        rows.extend(
            {
                "image_id": f"{number:07d}",
                "label": int(label),
                "split": SPLITS[split],
                "shard": shard,
                "offset": offset,
            }
            for offset, (number, split, label) in enumerate(
                zip(numbers, splits, labels, strict=True)
            )
        )
    output.write_parquet(f"{folder}/index.parquet", pa.Table.from_pylist(rows, INDEX_SCHEMA))
    done = {
        "uri": output.uri(folder),
        "manifest_version": manifest_version,
        "size": size,
        "images": images,
        "quarantined": 0,
        "shards": -(-images // shard_size),
    }
    output.write_bytes(f"{folder}/_complete.json", json.dumps(done).encode())


def image_numbers(images: np.ndarray) -> np.ndarray:
    """The numbers written into images (N, S, S, 3) by :func:`write_generated_cache`."""
    first = images[:, 0, 0, :].astype(np.int64)
    return (first[:, 0] << 16) | (first[:, 1] << 8) | first[:, 2]
