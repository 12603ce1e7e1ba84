"""The one storage layer over local folders and a real S3 endpoint."""

from __future__ import annotations

import pytest

from bincount.core.fetch import ObjectTooLarge
from bincount.core.settings import Settings
from bincount.core.storage import Location, key_range_bounds
from bincount.testing.s3server import TEST_CREDENTIALS, upload_public


@pytest.mark.parametrize("anonymous", [True, False])
def test_fetch_many_returns_bytes_in_order_and_missing_keys_as_errors(s3_server, bucket, anonymous):
    files = {f"metadata/{i:05d}.json": f'{{"n": {i}}}'.encode() for i in range(1, 40)}
    upload_public(s3_server.endpoint_url, bucket, files)
    location = Location(
        f"s3://{bucket}",
        endpoint_url=s3_server.endpoint_url,
        anonymous=anonymous,
        key=None if anonymous else TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=None if anonymous else TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [*files, "metadata/missing.json"]
    got = location.fetch_many(keys, concurrency=8)
    assert got[:-1] == list(files.values())
    assert isinstance(got[-1], FileNotFoundError)


LIMITED = {
    "m/empty.json": b"",
    "m/small.json": b"x" * 10,
    "m/exact.json": b"x" * 16,
    "m/over.json": b"x" * 17,
    "m/huge.json": b"y" * 300_000,
}


@pytest.mark.parametrize("kind", ["local", "s3-anonymous", "s3-signed"])
def test_a_read_limit_returns_what_fits_and_refuses_what_does_not(
    s3_server, bucket, tmp_path, kind
):
    if kind == "local":
        for key, data in LIMITED.items():
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(data)
        location = Location(str(tmp_path))
    else:
        upload_public(s3_server.endpoint_url, bucket, LIMITED)
        signed = kind == "s3-signed"
        location = Location(
            f"s3://{bucket}",
            endpoint_url=s3_server.endpoint_url,
            anonymous=not signed,
            key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"] if signed else None,
            secret=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] if signed else None,
        )

    got = location.fetch_many([*LIMITED, "m/missing.json"], concurrency=4, max_bytes=16)

    assert got[:3] == [b"", b"x" * 10, b"x" * 16]  # an empty object is read, not refused
    for refused, key in zip(got[3:5], ["m/over.json", "m/huge.json"], strict=True):
        assert isinstance(refused, ObjectTooLarge)
        assert (
            str(refused)
            == f"Expected at most 16 bytes at {location.uri(key)}, but the object is larger"
        )
    assert isinstance(got[5], FileNotFoundError)
    assert location.fetch_many(["m/huge.json"], concurrency=1) == [LIMITED["m/huge.json"]]


def test_a_prefix_inside_the_bucket_is_the_root(s3_server, bucket):
    upload_public(s3_server.endpoint_url, bucket, {"abid/v1/metadata/00001.json": b"{}"})
    location = Location(
        f"s3://{bucket}/abid/v1", endpoint_url=s3_server.endpoint_url, anonymous=True
    )
    assert location.list("metadata").column("key").to_pylist() == ["metadata/00001.json"]
    assert location.fetch_many(["metadata/00001.json"], concurrency=1) == [b"{}"]
    assert location.uri("metadata/00001.json") == f"s3://{bucket}/abid/v1/metadata/00001.json"


def test_local_writes_are_atomic_and_listings_skip_hidden_files(tmp_path):
    location = Location(f"file://{tmp_path}")
    location.write_bytes("a/b.bin", b"x" * 10)
    (tmp_path / "a" / ".partial.tmp").write_bytes(b"half")
    assert location.list("a").column("key").to_pylist() == ["a/b.bin"]
    assert location.read_bytes("a/b.bin") == b"x" * 10
    assert location.uri("a/b.bin") == str(tmp_path / "a" / "b.bin")


def test_bad_locations_and_secrets():
    with pytest.raises(ValueError, match="Expected a local path, file:// or s3:// URL"):
        Location("ftp://example.com/x")
    with pytest.raises(ValueError, match=r"Expected s3://bucket\[/prefix\]"):
        Location("s3://")
    settings = Settings(output="s3://out", aws_secret_access_key="do-not-show")
    location = Location.output(settings)
    assert "do-not-show" not in repr(location) and "do-not-show" not in repr(settings)


def test_key_ranges_are_sorted_and_distinct():
    for partitions in (1, 2, 7, 16, 100, 256):
        bounds = key_range_bounds(partitions)
        assert bounds == sorted(set(bounds))
        assert len(bounds) <= partitions - 1
