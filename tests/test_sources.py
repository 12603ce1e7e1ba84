"""Every bin remembers its source: two sources with the same keys stay two sets of bins, and an
output written before sources were recorded reads with the configured one."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from bincount.core.sources import recorded_sources, sources_to_list
from bincount.core.storage import Location
from bincount.core.tables import current_bins, read_table
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest
from bincount.data.validate import validate_bins
from bincount.testing.pipeline import defaults
from tests.builders import write_bin, write_clean_bucket

MAX = defaults().max_expected_quantity  # the contract's maximum when none is set


def test_the_same_keys_in_two_sources_are_two_sets_of_bins(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_clean_bucket(first, 6)
    write_clean_bucket(second, 4)
    write_bin(second, "00002", {"B1": 9})  # the same id as first's, another record
    output = Location(str(tmp_path / "out"))

    ingest_metadata(Location(str(first)), output)
    ingest_metadata(Location(str(second)), output)
    assert ingest_metadata(Location(str(second)), output).new == 0  # each source's watermark

    current = current_bins(output)
    assert current.num_rows == 10
    assert recorded_sources(output, "unused") == sorted(
        [Location(str(first)).url, Location(str(second)).url]
    )
    report = validate_bins(Location(str(first)), output, max_expected_quantity=MAX)
    assert report.passed and report.images_listed == 10 and report.images_without_metadata == 0
    build_manifest(Location(str(first)), output, policy=CountPolicy.parse("hard"))
    rows, details = load_manifest(output)
    labels = {
        (uri.rsplit("/bin-images/", 1)[0], label)
        for uri, label, image_id in zip(
            rows.column("image_uri").to_pylist(),
            rows.column("label").to_pylist(),
            rows.column("image_id").to_pylist(),
            strict=True,
        )
        if image_id == "00002"
    }
    assert labels == {(Location(str(first)).url, 2), (Location(str(second)).url, 9)}
    assert details.sources == sorted([Location(str(first)).url, Location(str(second)).url])


def test_an_output_without_recorded_sources_reads_with_the_configured_one(tmp_path):
    bucket = tmp_path / "bucket"
    write_clean_bucket(bucket, 5)
    output = Location(str(tmp_path / "out"))
    ingest_metadata(Location(str(bucket)), output)
    for part in (tmp_path / "out" / "bins").glob("part-*.parquet"):  # as an older version wrote
        pq.write_table(pq.read_table(part).drop_columns(["source"]), part)
    assert read_table(output, "bins").column("source").null_count == 5

    assert ingest_metadata(Location(str(bucket)), output).new == 0
    report = validate_bins(Location(str(bucket)), output, max_expected_quantity=MAX)
    assert report.passed and report.images_without_metadata == 0
    build_manifest(Location(str(bucket)), output, policy=CountPolicy.parse("hard"))
    rows, details = load_manifest(output)
    assert details.sources == [Location(str(bucket)).url]
    assert all(uri.startswith(str(bucket)) for uri in rows.column("image_uri").to_pylist())
    assert sources_to_list(output, None, Location(str(bucket)).url) == [Location(str(bucket)).url]


def test_no_source_to_list_is_an_error_that_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"Expected a source to list .* has no bins"):
        sources_to_list(Location(str(tmp_path / "empty")), None, "s3://aft-vbi-pds")
