"""Timeouts that hold: a read that never returns (a proxy that accepts the connection and sends
nothing) fails at the storage layer's read timeout, and a chunk stuck on one fails at its own
timeout in whatever runs it; the run ends naming the chunk, and the next run does it again."""

from __future__ import annotations

import shutil
import time

import pytest

from bincount.core.storage import Location
from bincount.testing.proxycontrol import fault_proxy
from bincount.testing.s3server import TEST_CREDENTIALS, upload_tree
from tests.builders import write_clean_bucket


@pytest.mark.parametrize("anonymous", [True, False], ids=["plain-http", "signed"])
def test_a_read_that_never_returns_fails_at_the_read_timeout(
    s3_server, bucket, tmp_path, anonymous
):
    write_clean_bucket(tmp_path / "bucket", 2)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    with fault_proxy(s3_server.endpoint_url, latency_ms=0, hang_reads=True) as proxy:

        def located(**options) -> Location:
            return Location(
                f"s3://{bucket}",
                endpoint_url=proxy.endpoint_url,
                anonymous=anonymous,
                key=None if anonymous else TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret=None if anonymous else TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                **options,
            )

        # Listings still answer (with the default read timeout: a loaded machine's moto can
        # take more than the second the hung read is given).
        assert located().list("bin-images").num_rows == 2
        source = located(max_attempts=2, read_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(Exception) as failed:  # s3fs and aiohttp raise their own kinds
            source.fetch_many(["bin-images/00001.jpg"], concurrency=1)
        elapsed = time.monotonic() - started
        hung = proxy.stats().hung
    assert "timeout" in repr(failed.value).lower() or "timed out" in str(failed.value).lower()
    # Two tries of one second each, with backoff. The upper bound only tells the configured
    # second from the default read timeout (30 s a try): wide, so a loaded machine keeps it.
    assert 1.0 <= elapsed < 30, elapsed
    assert hung >= 2  # every try reached the proxy and was held (s3fs adds a body retry)


def test_a_hung_scoring_chunk_fails_at_its_timeout_and_the_next_run_does_it(
    prefect_api, trained, s3_server, bucket, tmp_path, monkeypatch
):
    from bincount.core.settings import get_settings
    from bincount.core.tables import read_table
    from flows.score import score
    from tasks.runtime import ChunkTimedOut

    ids = write_clean_bucket(tmp_path / "bucket", 30, start=500)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = {
        "CHUNK_SIZE": "20",
        "CHUNK_TIMEOUT_S": "3",
        # Longer than the test: only the chunk's own timeout can end the hung read.
        "READ_TIMEOUT_S": "600",
        "LEASE_TTL_S": "5",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"BINCOUNT_{name}", value)
    with fault_proxy(s3_server.endpoint_url, latency_ms=0, hang_reads=True) as proxy:
        monkeypatch.setenv("BINCOUNT_S3_ENDPOINT_URL", proxy.endpoint_url)
        get_settings.cache_clear()
        started = time.monotonic()
        with pytest.raises(ChunkTimedOut) as timed_out:
            score(source=f"s3://{bucket}", output=str(out), batch_size=8, ingest_first=False)
        elapsed = time.monotonic() - started
        assert "score chunk of bin-images/00500.jpg.." in str(timed_out.value)
        assert "chunk_timeout_s=3 s" in str(timed_out.value)
        # Ended by the chunk's 3 s, not the 600 s read timeout: wide for a loaded machine.
        assert elapsed < 300, f"the run ended {elapsed:.0f} s after it started"
        assert not list(out.rglob("scores/*/part-*")), "a timed-out chunk commits nothing"

        proxy.hang_reads(False)  # the store answers again: the next run does the chunk
        # With room to score it: 3 s for a chunk of 20 is not enough on a loaded machine.
        monkeypatch.setenv("BINCOUNT_CHUNK_TIMEOUT_S", "600")
        get_settings.cache_clear()
        again = score(source=f"s3://{bucket}", output=str(out), batch_size=8, ingest_first=False)
    get_settings.cache_clear()

    assert again["scored"] == len(ids)
    scored = read_table(Location(str(out)), "scores").column("image_id").to_pylist()
    assert sorted(scored) == ids
