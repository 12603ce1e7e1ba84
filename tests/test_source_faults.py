"""Drills: a source that cannot be read for a while fails loudly and loses nothing.

On the moto S3 server, a bucket created public-read lists anonymously but answers 403 to an
anonymous GET of an object uploaded private: "list ok, GET denied", as a bucket policy
granting s3:ListBucket but not s3:GetObject does. Access returns by switching the run to signed
reads (``source_anonymous`` false) or by making the objects public.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from bincount.core.pending import read_pending
from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.testing.s3server import s3_client, upload_public, upload_tree
from tests.builders import write_clean_bucket


def _upload_private(endpoint: str, bucket: str, root: Path, prefix: str = "") -> list[str]:
    """Upload every file under ``root`` (keys under ``prefix``) as private objects: listed by
    anyone, readable only with credentials (moto lets anyone read an object put without an ACL
    in a public-read bucket, so the ACL is explicit)."""
    client = s3_client(endpoint)
    keys = []
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_file() and key.startswith(prefix):
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ACL="private")
            keys.append(key)
    return keys


def _make_public(endpoint: str, bucket: str, keys: list[str]) -> None:
    client = s3_client(endpoint)
    for key in keys:
        client.put_object_acl(Bucket=bucket, Key=key, ACL="public-read")


def _table(output: Path, name: str):
    return read_table(Location(str(output)), name)


def _of_bucket(table, column: str, bucket: str):
    return table.filter(pc.match_substring_regex(table.column(column), f"//{bucket}(/|$)"))


# -- scattered faults: pending, not quarantined, read again -----------------------------------
def test_scattered_faults_stay_pending_once_each_and_are_read_when_access_returns(
    s3_server, bucket, tmp_path
):
    from bincount.data.ingest import ingest_metadata

    local = tmp_path / "bucket"
    write_clean_bucket(local, 10)
    upload_tree(s3_server.endpoint_url, bucket, local)
    denied = ["metadata/00003.json", "metadata/00007.json"]
    client = s3_client(s3_server.endpoint_url)
    for key in denied:
        client.put_object_acl(Bucket=bucket, Key=key, ACL="private")
    source = Location(f"s3://{bucket}", endpoint_url=s3_server.endpoint_url, anonymous=True)
    output = Location(str(tmp_path / "out"))

    first = ingest_metadata(source, output, chunk_size=10)
    assert (first.ingested, first.quarantined, first.pending) == (8, 0, 2)
    again = ingest_metadata(source, output, chunk_size=10)
    assert (again.already_ingested, again.ingested, again.pending) == (8, 0, 2)
    pending = read_pending(output).sort_by("object_key").to_pylist()
    assert [(r["object_key"], r["reason_code"], r["tries"]) for r in pending] == [
        (key, "read_denied", 2) for key in denied
    ]  # one row per object, however many runs it waited
    assert pending[0]["first_seen"] < pending[0]["last_seen"]
    assert _table(tmp_path / "out", "quarantine").num_rows == 0

    _make_public(s3_server.endpoint_url, bucket, denied)
    fixed = ingest_metadata(source, output, chunk_size=10)
    assert (fixed.ingested, fixed.pending) == (2, 0)
    assert read_pending(output).num_rows == 0
    bins = _table(tmp_path / "out", "bins")
    assert sorted(bins.column("image_id").to_pylist()) == [f"{i:05d}" for i in range(1, 11)]


# -- every read denied: the run stops, the command exits 1, nothing is marked done ------------
@pytest.fixture
def drill(trained, tmp_path, s3_server, bucket) -> dict:
    """Twelve new bins in two buckets: ``bucket`` (objects private) and a public twin, and an
    output (with the trained champion) for each."""
    from bincount.testing.s3server import create_public_bucket

    local = tmp_path / "new"
    write_clean_bucket(local, 12, start=200)
    twin = f"{bucket}-twin"
    create_public_bucket(s3_server.endpoint_url, twin)
    upload_tree(s3_server.endpoint_url, twin, local)
    for name in ("out", "reference"):
        shutil.copytree(trained / "out", tmp_path / name)
    return {"local": local, "bucket": bucket, "twin": twin, "tmp": tmp_path}


def _reference(drill: dict) -> tuple:
    from flows.score import score

    score(source=f"s3://{drill['twin']}", output=str(drill["tmp"] / "reference"), batch_size=4)
    return _night(drill["tmp"] / "reference", drill["twin"])


def _night(output: Path, bucket: str) -> tuple:
    """The bins and scores of one bucket in an output, comparable across buckets."""
    bins = _of_bucket(_table(output, "bins"), "source", bucket)
    scores = _of_bucket(_table(output, "scores"), "image_uri", bucket)
    bin_rows = sorted(
        (r["image_id"], r["expected_quantity"], r["sku_count"], r["etag"])
        for r in bins.select(["image_id", "expected_quantity", "sku_count", "etag"]).to_pylist()
    )
    score_rows = sorted(
        (r["image_id"], r["predicted_count"], r["expected_quantity"], r["discrepancy"])
        for r in scores.select(
            ["image_id", "predicted_count", "expected_quantity", "discrepancy"]
        ).to_pylist()
    )
    probabilities = {
        r["image_id"]: np.array(r["count_probabilities"])
        for r in scores.select(["image_id", "count_probabilities"]).to_pylist()
    }
    return bin_rows, score_rows, probabilities


def _same_night(got: tuple, want: tuple) -> None:
    assert got[0] == want[0] and got[1] == want[1]
    assert sorted(got[2]) == sorted(want[2])
    for image_id, probabilities in want[2].items():
        np.testing.assert_allclose(got[2][image_id], probabilities, atol=1e-5)


def test_every_read_denied_fails_the_run_and_the_next_run_equals_one_that_could_read(
    prefect_api, settings_env, drill, s3_server, monkeypatch, capsys
):
    from bincount.core.settings import get_settings
    from flows.cli import console
    from flows.score import score

    keys = _upload_private(s3_server.endpoint_url, drill["bucket"], drill["local"])
    source, output = f"s3://{drill['bucket']}", drill["tmp"] / "out"
    before = {name: _table(output, name).num_rows for name in ("bins", "scores", "quarantine")}

    assert console(["score", "--source", source, "--output", str(output)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bincount score: ingest: 12 of 12 objects of a chunk could not be")
    assert "read_denied" in error and "--source-anonymous" in error
    after = {name: _table(output, name).num_rows for name in ("bins", "scores", "quarantine")}
    assert after == before  # nothing marked done
    pending = read_pending(Location(str(output)))
    assert sorted(pending.column("object_key").to_pylist()) == sorted(
        key for key in keys if key.startswith("metadata/")
    )

    # Access returns: the same run with signed reads.
    monkeypatch.setenv("BINCOUNT_SOURCE_ANONYMOUS", "false")
    get_settings.cache_clear()
    result = score(source=source, output=str(output), batch_size=4)
    assert result["scored"] == 12 and result["pending"] == 0 and result["quarantined"] == 0
    assert read_pending(Location(str(output))).num_rows == 0
    _same_night(_night(output, drill["bucket"]), _reference(drill))
    again = score(source=source, output=str(output))
    assert again["scored"] == 0 and again["already_scored"] == 12


# -- images denied, metadata readable: scoring stops, then scores every image once ------------
def test_images_denied_scoring_fails_then_scores_each_image_exactly_once(
    prefect_api, settings_env, drill, s3_server
):
    from bincount.core.faults import SourceUnreadable
    from flows.score import score

    endpoint = s3_server.endpoint_url
    metadata = sorted((drill["local"] / "metadata").glob("*.json"))
    files = {f"metadata/{path.name}": path.read_bytes() for path in metadata}
    upload_public(endpoint, drill["bucket"], files)
    images = _upload_private(endpoint, drill["bucket"], drill["local"], prefix="bin-images/")
    source, output = f"s3://{drill['bucket']}", drill["tmp"] / "out"

    with pytest.raises(SourceUnreadable, match=r"score: 12 of 12 objects .*read_denied"):
        score(source=source, output=str(output), batch_size=4)
    assert _of_bucket(_table(output, "bins"), "source", drill["bucket"]).num_rows == 12
    assert _of_bucket(_table(output, "scores"), "image_uri", drill["bucket"]).num_rows == 0
    quarantine = _table(output, "quarantine")
    assert not _of_bucket(quarantine, "object_key", drill["bucket"]).num_rows
    pending = read_pending(Location(str(output)))
    assert set(pending.column("stage").to_pylist()) == {"score"}
    assert pending.num_rows == 12

    _make_public(endpoint, drill["bucket"], images)
    result = score(source=source, output=str(output), batch_size=4)
    assert (result["scored"], result["pending"], result["quarantined"]) == (12, 0, 0)
    assert read_pending(Location(str(output))).num_rows == 0
    _same_night(_night(output, drill["bucket"]), _reference(drill))
    scores = _of_bucket(_table(output, "scores"), "image_uri", drill["bucket"])
    assert len(set(scores.column("image_uri").to_pylist())) == scores.num_rows == 12


# -- the training image cache: an image not read leaves its shard uncommitted -----------------
def test_an_image_gone_from_the_cache_build_is_pending_and_the_rebuild_equals_a_whole_one(
    tmp_path,
):
    from bincount.core.faults import SourceUnreadable
    from bincount.images.cache import build_image_cache
    from bincount.images.shards import load_cached_splits
    from tests.test_chunks import _all_images, _cache_bucket

    source, manifest = _cache_bucket(tmp_path, 10)
    build = dict(manifest_version="m1", size=16, shard_size=3, workers=1)
    reference = Location(str(tmp_path / "reference"))
    whole = build_image_cache(source, reference, manifest, **build)
    expected = load_cached_splits(reference, "m1", 16, ("train",))["train"]

    image = tmp_path / "bucket" / "bin-images" / "00007.jpg"
    kept = image.read_bytes()
    image.unlink()  # gone while the cache is built
    output = Location(str(tmp_path / "out"))
    with pytest.raises(SourceUnreadable, match=r"images: 1 of 3 objects .*read_gone"):
        build_image_cache(source, output, manifest, **build)
    assert not output.exists("cache/m1/16/_complete.json")
    pending = read_pending(output).to_pylist()
    assert [(r["stage"], r["image_id"], r["reason_code"]) for r in pending] == [
        ("images", "00007", "read_gone")
    ]
    assert "00007" not in read_table(output, "quarantine").column("image_id").to_pylist()

    image.write_bytes(kept)
    rebuilt = build_image_cache(source, output, manifest, **build)
    assert (rebuilt.images, rebuilt.quarantined) == (whole.images, whole.quarantined) == (9, 1)
    again = load_cached_splits(output, "m1", 16, ("train",))["train"]
    assert again.image_ids == expected.image_ids
    np.testing.assert_array_equal(_all_images(again), _all_images(expected))
    assert read_pending(output).num_rows == 0


# -- reads refused midway, after chunks committed: (b) access withdrawn, (d) credentials dying --
@pytest.mark.parametrize(
    ("signed", "denials", "answers"),
    [
        # (b) anonymous reads of a public bucket, then a policy that refuses them
        (False, ("AccessDenied", "AccessDenied"), ("access denied", "access denied")),
        # (d) signed reads of private objects, then a token that expires, a key revoked
        (
            True,
            ("ExpiredToken", "InvalidAccessKeyId"),
            ("The provided token has expired", "does not exist in our records"),
        ),
    ],
    ids=["access-withdrawn", "credentials-stop-working"],
)
def test_reads_refused_midway_keep_the_committed_chunks_and_the_next_run_completes_once(
    prefect_api, settings_env, drill, s3_server, monkeypatch, capsys, signed, denials, answers
):
    """Chunks of four: the first chunk of a night's ingest commits, then every read is refused
    (the run fails, naming what the source answered); the next night ingests the rest and its
    scoring is refused after one chunk; the night after, with access back, scores the rest:
    bins and scores equal a night that could read all along, each photo scored once."""
    from bincount.core.settings import get_settings
    from bincount.testing.proxycontrol import fault_proxy
    from flows.cli import console
    from flows.score import score

    endpoint, bucket = s3_server.endpoint_url, drill["bucket"]
    if signed:
        _upload_private(endpoint, bucket, drill["local"])
    else:
        upload_tree(endpoint, bucket, drill["local"])
    source, output = f"s3://{bucket}", drill["tmp"] / "out"
    location = Location(str(output))
    night = ["score", "--source", source, "--output", str(output), "--batch-size", "4"]
    with fault_proxy(endpoint, latency_ms=0) as proxy:
        monkeypatch.setenv("BINCOUNT_S3_ENDPOINT_URL", proxy.endpoint_url)
        monkeypatch.setenv("BINCOUNT_CHUNK_SIZE", "4")
        monkeypatch.setenv("BINCOUNT_SOURCE_ANONYMOUS", str(not signed).lower())
        get_settings.cache_clear()

        proxy.deny_reads(denials[0], after=4)  # ingest's first chunk reads, then none
        assert console(night) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("bincount score: ingest: 4 of 4 objects of a chunk could not")
        assert "read_denied" in error and answers[0] in error and "credentials" in error
        bins = _of_bucket(_table(output, "bins"), "source", bucket)
        assert sorted(bins.column("image_id").to_pylist()) == ["00200", "00201", "00202", "00203"]
        pending = read_pending(location).to_pylist()
        assert sorted((r["stage"], r["image_id"], r["reason_code"]) for r in pending) == [
            ("ingest", f"{n:05d}", "read_denied") for n in range(204, 208)
        ]

        proxy.deny_reads(denials[1], after=8 + 4)  # the rest of ingest, one chunk of scoring
        assert console(night) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("bincount score: score: 4 of 4 objects of a chunk could not")
        assert answers[1] in error
        bins = _of_bucket(_table(output, "bins"), "source", bucket)
        assert sorted(bins.column("image_id").to_pylist()) == [f"{n:05d}" for n in range(200, 212)]
        scores = _of_bucket(_table(output, "scores"), "image_uri", bucket)
        assert sorted(scores.column("image_id").to_pylist()) == ["00200", "00201", "00202", "00203"]
        pending = read_pending(location)
        assert set(pending.column("stage").to_pylist()) == {"score"} and pending.num_rows == 4
        assert not _of_bucket(_table(output, "quarantine"), "object_key", bucket).num_rows

        proxy.deny_reads(None)  # access (or a working key) is back
        assert proxy.stats().denied == 8
        result = score(source=source, output=str(output), batch_size=4)
        assert (result["scored"], result["pending"], result["quarantined"]) == (8, 0, 0)
        assert read_pending(location).num_rows == 0
        _same_night(_night(output, bucket), _reference(drill))
        scores = _of_bucket(_table(output, "scores"), "image_uri", bucket)
        assert len(set(scores.column("image_uri").to_pylist())) == scores.num_rows == 12
        again = score(source=source, output=str(output))
        assert (again["scored"], again["already_scored"]) == (0, 12)
