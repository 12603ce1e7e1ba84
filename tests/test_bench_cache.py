"""bench/cache.py at a tiny size (synthetic bins, copies under new ids, 32 px): the table's rows
and a cache that really holds every copy; bench/carry_abid.py on the real sample where present."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from bench import cache, carry_abid


def _table_rows(out: str) -> dict[int, list[str]]:
    """The table's rows by workers: lines that start with a worker count."""
    return {
        int(line.split()[0]): line.split()
        for line in out.splitlines()
        if re.match(r"^\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s", line)
    }


def _cache_index(kept) -> tuple[pq.ParquetFile, np.ndarray]:
    (folder,) = [path for path in (kept / "cache").glob("*/*") if path.is_dir()]
    index = pq.read_table(folder / "index.parquet")
    shards = np.concatenate([np.load(path) for path in sorted(folder.glob("shard-*.npy"))])
    return index, shards


def test_the_bench_times_each_worker_count_and_caches_every_copy(tmp_path, capsys):
    kept = tmp_path / "kept"
    argv = ["--synthetic", "40", "--copies", "2", "--image-size", "32", "--workers", "1,2"]
    assert cache.main([*argv, "--shard-size", "32", "--keep", str(kept)]) == 0
    out = capsys.readouterr().out

    assert "40 photos" in out and "80 images (2 key(s) per photo)" in out
    rows = _table_rows(out)
    assert sorted(rows) == [1, 2]
    for workers, fields in rows.items():
        images, seconds, rate = int(fields[1]), float(fields[2]), float(fields[3])
        assert images == 80, fields
        assert seconds > 0 and abs(rate * seconds - images) <= rate * 0.0006 + 0.06, fields
        assert fields[9] == "0", f"workers={workers}: images quarantined: {fields}"
        assert float(fields[6]) > 0  # CPU ms per image, the decoding processes' included
    assert "S3 fetching is excluded" in out and "535,234 images" in out
    assert "serial per shard" in out and "for 32 images" in out  # one shard fetched, written

    index, shards = _cache_index(kept)
    assert index.num_rows == 80 and shards.shape == (80, 32, 32, 3)
    ids = index.column("image_id").to_pylist()
    originals = [i for i in ids if not i.endswith("-c1")]
    assert len(set(ids)) == 80 and sorted(f"{i}-c1" for i in originals) == sorted(
        set(ids) - set(originals)
    )
    # A copy is the same photo under another key: its cached pixels equal the original's.
    where = {image_id: n for n, image_id in enumerate(ids)}
    first = originals[0]
    shard, offset = index.column("shard").to_pylist(), index.column("offset").to_pylist()
    assert shards[where[first]].any()
    np.testing.assert_array_equal(shards[where[first]], shards[where[f"{first}-c1"]])
    assert max(shard) == 2  # 80 images in shards of 32
    assert offset[where[first]] < 32


def test_without_great_expectations_the_manifest_is_read_from_the_metadata(tmp_path, capsys):
    kept = tmp_path / "kept"
    argv = ["--synthetic", "12", "--copies", "2", "--image-size", "32", "--workers", "1"]
    assert cache.main([*argv, "--manifest", "direct", "--keep", str(kept)]) == 0
    out = capsys.readouterr().out
    assert "manifest direct with 24 rows (read from the metadata (no validation)" in out
    assert int(_table_rows(out)[1][1]) == 24
    index, shards = _cache_index(kept)
    assert index.num_rows == 24 and shards.shape == (24, 32, 32, 3)
    ids, counts = index.column("image_id").to_pylist(), index.column("label").to_pylist()
    labels = dict(zip(ids, counts, strict=True))
    originals = [image_id for image_id in labels if not image_id.endswith("-c1")]
    assert len(originals) == 12 and len(set(labels.values())) > 1  # the records' own counts
    for image_id in originals:  # a copy carries its original's record
        assert labels[f"{image_id}-c1"] == labels[image_id]


def test_copies_of_an_unpadded_id_name_their_own_photo(tmp_path):
    photos = tmp_path / "photos"
    (photos / "bin-images").mkdir(parents=True)
    (photos / "metadata").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photos / "bin-images" / "121.jpg")
    document = {"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0, "image_fname": "121.jpg"}
    (photos / "metadata" / "121.json").write_text(json.dumps(document))

    assert cache.make_bucket(photos, tmp_path / "bucket", copies=3) == 3
    for new_id in ("121", "121-c1", "121-c2"):
        meta = json.loads((tmp_path / "bucket" / "metadata" / f"{new_id}.json").read_text())
        assert meta["image_fname"] == f"{new_id}.jpg"
        photo = tmp_path / "bucket" / "bin-images" / f"{new_id}.jpg"
        assert photo.read_bytes() == (photos / "bin-images" / "121.jpg").read_bytes()


def test_the_carry_holds_whole_pairs_within_its_budget_and_the_bench_reads_it(
    shared_abid, tmp_path, capsys
):
    dest = tmp_path / "carry"
    assert (
        carry_abid.main([str(dest), "--sample", str(shared_abid / "sample"), "--max-mb", "1"]) == 0
    )
    photos = sorted(p.stem for p in (dest / "bin-images").iterdir())
    metas = sorted(p.stem for p in (dest / "metadata").iterdir())
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert photos and photos == metas and total <= 1024 * 1024
    capsys.readouterr()
    assert carry_abid.main([str(dest), "--sample", str(shared_abid / "sample")]) == 2  # not empty

    kept = tmp_path / "kept"
    argv = ["--photos", str(dest), "--copies", "2", "--image-size", "32", "--workers", "1"]
    assert cache.main([*argv, "--keep", str(kept)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert int(rows[1][1]) == 2 * len(photos) and rows[1][9] == "0"
    index, shards = _cache_index(kept)
    assert index.num_rows == 2 * len(photos) and shards.shape[0] == 2 * len(photos)


def test_a_photo_that_does_not_decode_is_counted_and_its_reason_printed(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "bin-images").mkdir(parents=True)
    (photos / "metadata").mkdir()
    for n, image_id in enumerate(("00001", "00002", "00003")):
        Image.new("RGB", (64, 48), (40 * n, 90, 160)).save(
            photos / "bin-images" / f"{image_id}.jpg"
        )
    (photos / "bin-images" / "00004.jpg").write_bytes(b"not a photo at all")
    for image_id in ("00001", "00002", "00003", "00004"):
        document = {"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}
        (photos / "metadata" / f"{image_id}.json").write_text(json.dumps(document))

    argv = ["--photos", str(photos), "--copies", "2", "--image-size", "32", "--workers", "1"]
    assert cache.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 photos" in out and "1 unreadable" in out
    row = _table_rows(out)[1]
    assert int(row[1]) == 6 and row[9] == "2"  # both copies of the broken photo kept out
    reasons = [line for line in out.splitlines() if line.startswith("quarantined (workers=1)")]
    assert sorted(line.split(": ")[1] for line in reasons) == ["00004", "00004-c1"]
    assert all("undecodable_image" in line for line in reasons)
