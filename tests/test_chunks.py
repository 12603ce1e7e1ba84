"""The exactly-once chunk protocol on its own, and the image cache that resumes by it."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from bincount.core.chunks import (
    ChunkProtocol,
    Parts,
    Rejection,
    Stage,
    cut,
    part_name,
    quarantine_row,
    totals,
)
from bincount.core.storage import Location
from bincount.core.tables import BINS, ITEMS, QUARANTINE, read_table
from bincount.data.ingest import chunk_id
from bincount.data.metadata import MalformedMetadata
from bincount.images.cache import build_image_cache, cache_protocol
from bincount.images.shards import load_cached_splits
from bincount.nightly.plan import chunk_part_name
from tests.builders import jpeg_bytes

NOW = datetime(2026, 1, 2, tzinfo=UTC)
PROTOCOL = ChunkProtocol(Stage.INGEST, marker=Parts(BINS), companions=(Parts(ITEMS),))


def _reference_name(lines: list[str], namespace: str | None = None) -> str:
    digest = hashlib.sha256()
    if namespace is not None:
        digest.update(f"{namespace}\x1d".encode())
    for line in lines:
        digest.update(f"{line}\x1e".encode())
    return digest.hexdigest()[:20]


def test_part_names_are_the_content_hashes_parts_were_always_named_by():
    objects = [{"key": "metadata/1.json", "etag": "a"}, {"key": "metadata/2.json", "etag": "b"}]
    assert chunk_id(objects, "s3://x") == _reference_name(
        ["metadata/1.json\x1fa", "metadata/2.json\x1fb"], "s3://x"
    )
    uris = ["s3://x/bin-images/1.jpg", "s3://x/bin-images/2.jpg"]
    assert chunk_part_name(uris) == _reference_name(uris)
    assert part_name(uris) != part_name(uris[::-1])  # a chunk is its items in order
    assert chunk_id(objects, "s3://x") != chunk_id(objects, "s3://y")


def test_cut_and_its_argument_checks():
    assert cut(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert cut(list(range(7)), 3, limit=4) == [[0, 1, 2], [3]]
    table = pa.table({"k": list(range(5))})
    assert [c.column("k").to_pylist() for c in cut(table, 2, limit=3)] == [[0, 1], [2]]
    assert cut([], 5) == []
    with pytest.raises(ValueError, match="Expected limit >= 0, but got -1"):
        cut([1], 1, limit=-1)
    with pytest.raises(ValueError, match="Expected chunk_size >= 1, but got 0"):
        cut([1], 0)


def test_one_quarantine_row_for_every_kind_of_reason():
    malformed = MalformedMetadata("too_deep", "Expected at most 4 levels, but got 9")
    row = quarantine_row(
        Stage.INGEST, "metadata/1.json", malformed, image_id="1", etag="e", run_id="r", now=NOW
    )
    assert (row["stage"], row["reason_code"], row["exception_type"], row["expectation"]) == (
        "ingest",
        "too_deep",
        "MalformedMetadata",
        None,
    )
    failed = Rejection("q_range", "Expected 0..250; got \udcff", expectation="expect_between")
    row = quarantine_row(
        Stage.VALIDATE, "metadata/1.json", failed, image_id="1", run_id="r", now=NOW
    )
    assert row["stage"] == "validate" and row["expectation"] == "expect_between"
    row["reason"].encode("utf-8")  # a lone surrogate in a reason still becomes valid UTF-8
    assert [stage.partition for stage in Stage] == [
        {"stage": "ingest"},
        {"stage": "validate"},
        {"stage": "images"},
        {"stage": "score"},
    ]


def _bin(key: str, etag: str) -> dict:
    return {
        "image_id": key.split("/")[-1].split(".")[0],
        "metadata_key": key,
        "image_key": "bin-images/x.jpg",
        "expected_quantity": 1,
        "sku_count": 1,
        "sku_quantity_sum": 1,
        "etag": etag,
        "size": 1,
        "last_modified": NOW,
        "ingested_at": NOW,
        "run_id": "r",
        "source": "s",
    }


def _reject(key: str, etag: str) -> dict:
    why = Rejection("unreadable", "Expected a readable object, but got 403")
    return quarantine_row(Stage.INGEST, key, why, image_id=None, etag=etag, run_id="r", now=NOW)


def test_a_chunk_without_its_marker_is_discarded_and_a_committed_one_is_done(tmp_path):
    output = Location(str(tmp_path / "out"))
    committed = PROTOCOL.commit(
        output, "a", [_bin("metadata/1.json", "e1")], rejects=[_reject("metadata/2.json", "e2")]
    )
    assert committed == "bins/part-a.parquet"
    # A run killed before its marker: companions and quarantine written, no bins part.
    Parts(ITEMS).write(output, "b", [])
    PROTOCOL.quarantine.write(output, "b", [_reject("metadata/3.json", "e3")])
    # Another stage's quarantine is not this protocol's to discard.
    other = ChunkProtocol(Stage.SCORE, marker=Parts("scores"))
    other.quarantine.write(output, "c", [])

    assert PROTOCOL.committed(output) == {"a"}
    assert sorted(
        PROTOCOL.done(output, ["metadata_key", "etag"], ["object_key", "etag"]).to_pylist(), key=str
    ) == [
        {"metadata_key": "metadata/1.json", "etag": "e1"},
        {"metadata_key": "metadata/2.json", "etag": "e2"},
        {"metadata_key": "metadata/3.json", "etag": "e3"},  # not yet discarded
    ]
    assert PROTOCOL.discard_uncommitted(output) == 2
    assert PROTOCOL.discard_uncommitted(output) == 0
    done = PROTOCOL.done(output, ["metadata_key", "etag"], ["object_key", "etag"])
    assert sorted(done.column("metadata_key").to_pylist()) == ["metadata/1.json", "metadata/2.json"]
    assert read_table(output, QUARANTINE).column("stage").to_pylist() == ["ingest"]
    assert output.exists("quarantine/stage=score/part-c.parquet")
    with pytest.raises(ValueError, match="Expected companions among"):
        PROTOCOL.commit(output, "d", [], companions={"scores": []})


def test_totals_sum_the_counters_of_a_runs_chunks():
    class Outcome:
        def __init__(self, a, b):
            self.a, self.b = a, b

    assert totals([Outcome(1, 0.5), Outcome(2, 1.0)], "a", "b") == {"a": 3, "b": 1.5}
    assert totals([], "a") == {"a": 0}


def _cache_bucket(tmp_path, count: int) -> tuple[Location, pa.Table]:
    root = tmp_path / "bucket" / "bin-images"
    root.mkdir(parents=True)
    rows = []
    for n in range(count):
        image_id = f"{n:05d}"
        (root / f"{image_id}.jpg").write_bytes(jpeg_bytes(shade=10 * n) if n != 5 else b"broken")
        uri = str(root / f"{image_id}.jpg")
        rows.append({"image_id": image_id, "image_uri": uri, "label": n % 3, "split": "train"})
    return Location(str(tmp_path / "bucket")), pa.Table.from_pylist(rows)


def test_a_resumed_cache_build_never_fetches_a_committed_shard_again(tmp_path, caplog):
    source, manifest = _cache_bucket(tmp_path, 10)
    output = Location(str(tmp_path / "out"))
    build = dict(manifest_version="m1", size=16, shard_size=3, workers=1)
    whole = build_image_cache(source, output, manifest, **build)
    assert (whole.images, whole.quarantined, whole.shards) == (9, 1, 4)
    expected = load_cached_splits(output, "m1", 16, ("train",))["train"]

    # The state a build killed while writing shard 1 (image 00005 is in it) leaves behind:
    # shard 0 committed; shard 1's .npy and quarantine part written, not its index part.
    protocol = cache_protocol("m1", 16)
    names = sorted(protocol.committed(output))
    output.delete(
        ["cache/m1/16/_complete.json", "cache/m1/16/index.parquet"]
        + [protocol.marker.key(name) for name in names[1:]]
        + [f"cache/m1/16/shard-{n:05d}.npy" for n in (2, 3)]
    )
    # A committed shard is never read again: its images may even be gone.
    for n in range(3):
        (tmp_path / "bucket" / "bin-images" / f"{n:05d}.jpg").unlink()

    with caplog.at_level(logging.INFO, logger="bincount"):
        resumed = build_image_cache(source, output, manifest, **build)
    assert "at shard 1: 1 of 4 shards already built" in caplog.text
    assert "cached images of manifest m1: 10 of 10" in caplog.text
    assert (resumed.images, resumed.quarantined, resumed.shards) == (9, 1, 4)
    again = load_cached_splits(output, "m1", 16, ("train",))["train"]
    assert again.image_ids == expected.image_ids
    np.testing.assert_array_equal(_all_images(again), _all_images(expected))
    quarantine = read_table(output, QUARANTINE).to_pylist()
    assert [(r["stage"], r["image_id"]) for r in quarantine] == [("images", "00005")]


def _all_images(split) -> np.ndarray:
    """Every image of a cached split, in its order (the reader streams them from the shards)."""
    return split.read(np.arange(len(split)))
