"""Ingestion against a local folder and a real S3 endpoint (moto server on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.core.tables import read_table, write_part
from bincount.data.ingest import ingest_metadata
from bincount.testing.processes import bincount_command, kill_midway
from bincount.testing.proxycontrol import fault_proxy
from bincount.testing.s3server import upload_public, upload_tree
from tests.builders import write_bin, write_clean_bucket, write_malformed


def _counts(output: Location) -> dict[str, int]:
    return {name: read_table(output, name).num_rows for name in ("bins", "items", "quarantine")}


def test_real_sample_from_a_local_folder(shared_abid, tmp_path):
    source = Location(str(shared_abid / "sample"))
    output = Location(str(tmp_path / "out"))
    summary = ingest_metadata(source, output, chunk_size=500)

    assert (summary.listed, summary.ingested, summary.quarantined) == (1304, 1304, 0)
    bins = read_table(output, "bins")
    assert bins.schema.field("image_id").type == "string"
    expected = {}
    for path in (shared_abid / "sample" / "metadata").glob("*.json"):
        expected[path.stem] = json.loads(path.read_bytes())["EXPECTED_QUANTITY"]
    got = dict(
        zip(
            bins.column("image_id").to_pylist(),
            bins.column("expected_quantity").to_pylist(),
            strict=True,
        )
    )
    assert got == expected  # ids kept as strings: unpadded "121" and padded "00121" differ
    assert pc.all(pc.equal(bins["expected_quantity"], bins["sku_quantity_sum"])).as_py()
    items = read_table(output, "items")
    assert pc.sum(items["quantity"]).as_py() == sum(expected.values())

    again = ingest_metadata(source, output)
    assert (again.new, again.ingested) == (0, 0)
    assert read_table(output, "bins").num_rows == 1304


def test_malformed_objects_are_quarantined_with_reasons_and_never_stop_the_run(tmp_path):
    root = tmp_path / "bucket"
    good = write_clean_bucket(root, 20)
    codes = write_malformed(root)
    output = Location(str(tmp_path / "out"))

    summary = ingest_metadata(Location(str(root)), output, chunk_size=7)

    assert (summary.ingested, summary.quarantined) == (len(good), len(codes))
    quarantine = read_table(output, "quarantine").to_pylist()
    assert {row["image_id"]: row["reason_code"] for row in quarantine} == codes
    for row in quarantine:
        assert row["stage"] == "ingest"
        assert row["object_key"] == f"metadata/{row['image_id']}.json"
        assert row["reason"].startswith("Expected") and row["etag"]
    assert sorted(read_table(output, "bins").column("image_id").to_pylist()) == good

    rerun = ingest_metadata(Location(str(root)), output)
    assert (rerun.ingested, rerun.quarantined, rerun.new) == (0, 0, 0)
    assert _counts(output)["quarantine"] == len(codes)


def test_a_changed_object_is_ingested_again_and_becomes_current(tmp_path):
    from bincount.core.tables import current_bins

    root = tmp_path / "bucket"
    write_clean_bucket(root, 3)
    output = Location(str(tmp_path / "out"))
    ingest_metadata(Location(str(root)), output)
    time.sleep(0.01)
    write_bin(root, "00002", {"B1": 9})
    os.utime(root / "metadata" / "00002.json", ns=(time.time_ns(), time.time_ns() + 10**9))

    summary = ingest_metadata(Location(str(root)), output)

    assert (summary.new, summary.ingested) == (1, 1)
    current = {r["image_id"]: r["expected_quantity"] for r in current_bins(output).to_pylist()}
    assert current["00002"] == 9 and len(current) == 3
    assert read_table(output, "bins").num_rows == 4  # the history keeps both versions


def test_limit_and_keys_from(tmp_path):
    root = tmp_path / "bucket"
    ids = write_clean_bucket(root, 12)
    output = Location(str(tmp_path / "out"))

    first = ingest_metadata(Location(str(root)), output, limit=5)
    assert first.ingested == 5
    chosen = ingest_metadata(
        Location(str(root)), output, keys=["metadata/00011.json", "metadata/99999.json"]
    )
    assert (chosen.ingested, chosen.requested_missing) == (1, 1)
    rest = ingest_metadata(Location(str(root)), output)
    assert rest.ingested == 6
    assert sorted(read_table(output, "bins").column("image_id").to_pylist()) == ids


def test_parts_of_an_uncommitted_chunk_are_discarded(tmp_path):
    root = tmp_path / "bucket"
    write_clean_bucket(root, 4)
    output = Location(str(tmp_path / "out"))
    orphan = [
        {
            "image_id": "00001",
            "etag": "x",
            "sku": "S",
            "asin": "S",
            "name": None,
            "normalized_name": None,
            "quantity": 1,
            "height_in": None,
            "length_in": None,
            "width_in": None,
            "weight_lb": None,
        }
    ]
    write_part(output, "items", "deadbeef", orphan)  # as a killed run leaves it: no bins part

    summary = ingest_metadata(Location(str(root)), output)

    assert summary.discarded_orphan_parts == 1
    items = read_table(output, "items")
    assert "x" not in items.column("etag").to_pylist()


def test_real_sample_on_a_real_s3_endpoint_read_anonymously(
    shared_abid, s3_server, bucket, tmp_path
):
    files = {
        f"metadata/{p.name}": p.read_bytes()
        for p in sorted((shared_abid / "sample" / "metadata").glob("*.json"))
    }
    upload_public(s3_server.endpoint_url, bucket, files)
    source = Location(f"s3://{bucket}", endpoint_url=s3_server.endpoint_url, anonymous=True)
    output = Location(str(tmp_path / "out"))

    summary = ingest_metadata(source, output, partitions=8, chunk_size=400, concurrency=32)

    assert (summary.listed, summary.ingested, summary.quarantined) == (1304, 1304, 0)
    bins = read_table(output, "bins")
    assert sorted(bins.column("metadata_key").to_pylist()) == sorted(files)
    assert all(len(etag) == 32 for etag in bins.column("etag").to_pylist())  # real S3 ETags
    assert ingest_metadata(source, output).ingested == 0


def test_listing_partitions_cover_every_key_exactly_once(s3_server, bucket):
    odd = ["metadata/1.json", "metadata/05", "metadata/05.json", "metadata/99999.json"]
    odd += ["metadata/abc.json", "metadata/~x.json", "metadata/!first.json", "metadata/5"]
    keys = [f"metadata/{i:05d}.json" for i in range(0, 3000, 7)] + odd
    upload_public(s3_server.endpoint_url, bucket, {k: b"{}" for k in keys})
    upload_public(s3_server.endpoint_url, bucket, {"metadata-other/1.json": b"{}"})
    source = Location(f"s3://{bucket}", endpoint_url=s3_server.endpoint_url, anonymous=True)

    for partitions in (1, 3, 16, 64):
        for page_size in (1000, 25):  # small pages: the ranges and their pagination are used
            listed = source.list("metadata", partitions=partitions, page_size=page_size)
            assert listed.column("key").to_pylist() == sorted(keys), (partitions, page_size)


def test_transient_s3_faults_are_survived(s3_server, bucket, tmp_path):
    root = tmp_path / "bucket"
    write_clean_bucket(root, 120)
    upload_tree(s3_server.endpoint_url, bucket, root)
    with fault_proxy(s3_server.endpoint_url, latency_ms=5, fault_rate=0.25, seed=3) as proxy:
        source = Location(
            f"s3://{bucket}", endpoint_url=proxy.endpoint_url, anonymous=True, max_attempts=10
        )
        summary = ingest_metadata(
            source, Location(str(tmp_path / "out")), partitions=4, chunk_size=50, concurrency=16
        )
        stats = proxy.stats()

    assert (summary.ingested, summary.quarantined) == (120, 0)
    assert stats.faults > 20
    assert set(stats.faults_by_kind) == {"throttle", "error500", "drop", "truncate"}
    assert read_table(Location(str(tmp_path / "out")), "bins").num_rows == 120


def test_a_run_killed_midway_then_rerun_leaves_exactly_one_row_per_object(
    s3_server, bucket, tmp_path, cli_env
):
    """The exactly-once guarantee of the path production runs: ``bincount ingest`` (the flow,
    on the Prefect API) killed with SIGKILL midway, then run again."""
    root = tmp_path / "bucket"
    ids = write_clean_bucket(root, 400)
    upload_tree(s3_server.endpoint_url, bucket, root)
    out = tmp_path / "out"
    command = bincount_command("ingest", "--source", f"s3://{bucket}", "--output", str(out))
    # 30 ms per request and 4 in flight: ~10 chunks over a few seconds, so the kill lands midway.
    with fault_proxy(s3_server.endpoint_url, latency_ms=30) as proxy:
        env = cli_env(
            s3_endpoint_url=proxy.endpoint_url, chunk_size=40, max_concurrency=4, list_partitions=2
        )
        committed = kill_midway(
            command, env=env, progress=lambda: len(list((out / "bins").glob("part-*")))
        )
        assert 2 <= committed < 10, "the kill should land midway"
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, check=True)

    assert json.loads(rerun.stdout)["already_ingested"] >= 80
    bins = read_table(Location(str(out)), "bins")
    assert sorted(bins.column("image_id").to_pylist()) == ids  # no duplicate, no gap
    items = read_table(Location(str(out)), "items")
    expected_items = sum(1 for i in range(400) for q in (i % 4, i % 3) if q is not None)
    assert items.num_rows == expected_items
    pairs = zip(items["image_id"].to_pylist(), items["sku"].to_pylist(), strict=True)
    assert len(set(pairs)) == items.num_rows
    assert not [p for p in Path(out).rglob(".*") if p.is_file()], "no temporary file is left"


def test_what_the_parser_does_not_foresee_still_stops_only_its_own_object():
    from datetime import UTC, datetime

    from bincount.data.records import rows_from_objects

    now = datetime(2026, 1, 1, tzinfo=UTC)
    good = json.dumps({"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}).encode()
    objects = [
        {"key": f"metadata/{i}.json", "etag": "e", "size": 1, "last_modified": now}
        for i in range(3)
    ]
    objects[1]["etag"] = None  # a listing row the bins table cannot hold
    payloads = [good, good, "not bytes"]  # a payload the parser was never meant to get

    bins, items, rejects = rows_from_objects(objects, payloads, run_id="r", now=now)

    assert [row["image_id"] for row in bins] == ["0"] and not items
    assert [(r["image_id"], r["reason_code"], r["exception_type"]) for r in rejects] == [
        ("2", "parse_error", "AttributeError"),
        ("1", "unrepresentable", "ValueError"),
    ]
    assert all(r["reason"].startswith("Expected") for r in rejects)
