"""The image cache build's pipeline: pixels decoded into shared memory, commits overlapped with
decoding, and neither losing an offset nor leaving a segment behind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bincount.core.storage import Location
from bincount.core.tables import QUARANTINE, read_table
from bincount.images.cache import build_image_cache, cache_protocol
from bincount.images.cachebuild import SHM_PREFIX, ShardBlock, ShardWriter
from bincount.images.decode import decode_image
from bincount.images.shards import load_cached_splits
from tests.builders import jpeg_bytes


def _segments() -> set[str]:
    """This process's shard blocks in /dev/shm (other engineers' builds may run beside it)."""
    mine = f"{SHM_PREFIX}{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(mine)}


def _bucket(tmp_path: Path, count: int, broken: set[int]) -> tuple[Location, pa.Table, dict]:
    """``count`` photos of distinct colours and sizes; those in ``broken`` do not decode."""
    root = tmp_path / "bucket" / "bin-images"
    root.mkdir(parents=True)
    rows, payloads = [], {}
    for n in range(count):
        image_id = f"{n:05d}"
        payload = b"not a jpeg" if n in broken else jpeg_bytes(40 + 3 * n, 30 + n, shade=20 * n)
        (root / f"{image_id}.jpg").write_bytes(payload)
        payloads[image_id] = payload
        uri = str(root / f"{image_id}.jpg")
        rows.append({"image_id": image_id, "image_uri": uri, "label": n % 4, "split": "train"})
    return Location(str(tmp_path / "bucket")), pa.Table.from_pylist(rows), payloads


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_an_image_failing_midshard_leaves_the_right_offsets_and_no_segment(tmp_path):
    # Shards of 5: image 6 fails in the middle of shard 1, so the two decoded after it in that
    # shard move up one slot; shard 2 is whole.
    source, manifest, payloads = _bucket(tmp_path, 12, broken={6})
    output = Location(str(tmp_path / "out"))
    before = _segments()
    summary = build_image_cache(
        source, output, manifest, manifest_version="m1", size=16, shard_size=5, workers=2
    )
    assert _segments() == before
    assert (summary.images, summary.quarantined, summary.shards) == (11, 1, 3)

    index = output.read_parquet("cache/m1/16/index.parquet").to_pylist()
    assert [(r["image_id"], r["shard"], r["offset"]) for r in index] == [
        *((f"{n:05d}", 0, n) for n in range(5)),
        ("00005", 1, 0),
        ("00007", 1, 1),
        ("00008", 1, 2),
        ("00009", 1, 3),
        *((f"{n:05d}", 2, n - 10) for n in range(10, 12)),
    ]
    shards = [np.load(tmp_path / "out" / f"cache/m1/16/shard-{n:05d}.npy") for n in range(3)]
    assert [len(shard) for shard in shards] == [5, 4, 2]
    for row in index:  # every row points at its own photo's pixels
        expected = decode_image(payloads[row["image_id"]], 16)
        np.testing.assert_array_equal(shards[row["shard"]][row["offset"]], expected)
    split = load_cached_splits(output, "m1", 16, ("train",))["train"]
    assert "00006" not in split.image_ids and len(split) == 11
    quarantine = read_table(output, QUARANTINE).to_pylist()
    assert [(r["image_id"], r["reason_code"]) for r in quarantine] == [
        ("00006", "undecodable_image")
    ]


def test_a_failed_commit_fails_the_build_cleanly_and_the_rebuild_completes(tmp_path):
    """A shard's .npy that cannot be written (a folder squats its name): the error reaches the
    caller, the shards before it stay committed, that one is not, no block is left; once the
    obstacle is gone the build resumes and equals a whole one."""
    source, manifest, _ = _bucket(tmp_path, 12, broken={2})
    build = dict(manifest_version="m1", size=16, shard_size=4, workers=2)
    reference = Location(str(tmp_path / "reference"))
    build_image_cache(source, reference, manifest, **build)
    expected = load_cached_splits(reference, "m1", 16, ("train",))["train"]

    output = Location(str(tmp_path / "out"))
    squatter = tmp_path / "out" / "cache" / "m1" / "16" / "shard-00001.npy"
    squatter.mkdir(parents=True)
    before = _segments()
    with pytest.raises(OSError):
        build_image_cache(source, output, manifest, **build)
    assert _segments() == before
    committed = sorted(cache_protocol("m1", 16).committed(output))
    assert [name.split("-")[2] for name in committed] == ["00000"]
    assert not output.exists("cache/m1/16/_complete.json")

    squatter.rmdir()
    rebuilt = build_image_cache(source, output, manifest, **build)
    assert (rebuilt.images, rebuilt.quarantined, rebuilt.shards) == (11, 1, 3)
    again = load_cached_splits(output, "m1", 16, ("train",))["train"]
    assert again.image_ids == expected.image_ids
    everything = np.arange(len(again))
    np.testing.assert_array_equal(again.read(everything), expected.read(everything))
    assert _segments() == before


def test_the_writer_commits_in_order_one_at_a_time_and_finishes_before_an_error_goes_on():
    events: list[str] = []
    in_flight = threading.Semaphore(1)

    def commit(label: str):
        def run(block: ShardBlock) -> None:
            assert in_flight.acquire(blocking=False), "two commits in flight"
            try:
                block.pixels()[:] = 7  # the block is still there while it commits
                time.sleep(0.05)
                events.append(label)
            finally:
                in_flight.release()

        return run

    committed: list[int] = []
    before = _segments()
    failing_build = pytest.raises(RuntimeError, match="decoding failed")
    with failing_build, ShardWriter(on_committed=committed.append) as writer:
        for n in range(3):
            writer.submit(commit(f"shard {n}"), ShardBlock(n + 1, 4), n + 1)
        raise RuntimeError("decoding failed")  # while shard 2 commits
    assert events == ["shard 0", "shard 1", "shard 2"]  # the one in flight still finished
    assert committed == [1, 2]  # only those the building thread saw through
    assert _segments() == before

    def failing(block: ShardBlock) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), ShardWriter() as writer:
        writer.submit(failing, ShardBlock(1, 4), 1)
        writer.submit(commit("never"), ShardBlock(1, 4), 1)  # raises the first's error
    assert "never" not in events
    assert _segments() == before


def test_a_shard_file_is_byte_for_byte_what_np_save_writes(tmp_path):
    import io

    from bincount.images.cache import _write_npy

    rng = np.random.default_rng(0)
    arrays = {
        "whole": rng.integers(0, 256, (5, 16, 16, 3), np.uint8),
        "empty": np.zeros((0, 16, 16, 3), np.uint8),  # a shard in which nothing decoded
        "strided": rng.integers(0, 256, (6, 8, 8, 3), np.uint8)[::2],  # not contiguous
    }
    for name, array in arrays.items():
        _write_npy(Location(str(tmp_path)), f"{name}.npy", array)
        expected = io.BytesIO()
        np.save(expected, array, allow_pickle=False)
        assert (tmp_path / f"{name}.npy").read_bytes() == expected.getvalue(), name


def test_without_room_in_dev_shm_a_block_is_a_mapped_file_and_decodes_alike(tmp_path, monkeypatch):
    # Docker gives a container 64 MB of /dev/shm unless told otherwise: a 224 px shard of 2,048
    # images takes 308 MB. With no room there, the block is a file in the temporary folder.
    from concurrent.futures import ProcessPoolExecutor

    from bincount.core.limits import ImageLimits
    from bincount.images import cachebuild

    monkeypatch.setattr(cachebuild, "SHM_FOLDER", str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    payloads = [jpeg_bytes(40 + n, 30, shade=30 * n) for n in range(5)]
    payloads[2] = b"not a jpeg"
    with ProcessPoolExecutor(max_workers=2) as pool:
        block, failed = cachebuild.decode_into_block(
            pool, payloads, size=16, limits=ImageLimits(), workers=2
        )
    try:
        assert block.memory is None and Path(block.name).parent == tmp_path
        assert set(failed) == {2} and failed[2].code == "undecodable_image"
        pixels = block.pixels()
        for n in (0, 1, 3, 4):
            np.testing.assert_array_equal(pixels[n], decode_image(payloads[n], 16))
        assert not pixels[2].any()
        del pixels
    finally:
        block.release()
    assert not list(tmp_path.glob(f"{SHM_PREFIX}*"))  # the file is gone
    asked = ShardBlock(1, 4, in_memory=True)  # asked for: a segment, room or not
    try:
        assert asked.memory is not None
    finally:
        asked.release()


def test_a_block_file_a_killed_build_left_is_swept_by_the_next(tmp_path):
    import subprocess
    import sys

    from bincount.images.cachebuild import STALE_AFTER_S, sweep_stale_blocks

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead = int(gone.stdout)
    old = time.time() - STALE_AFTER_S - 60
    left = tmp_path / f"{SHM_PREFIX}{dead}-0123456789ab"
    recent = tmp_path / f"{SHM_PREFIX}{dead}-ba9876543210"
    live = tmp_path / f"{SHM_PREFIX}{os.getpid()}-aaaaaaaaaaaa"
    other = tmp_path / "bincount-notes.txt"
    for path in (left, recent, live, other):
        path.write_bytes(b"x")
    for path in (left, live, other):
        os.utime(path, (old, old))
    assert sweep_stale_blocks(str(tmp_path)) == [left.name]
    assert not left.exists() and recent.exists() and live.exists() and other.exists()
