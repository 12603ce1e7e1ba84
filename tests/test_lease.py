"""The lease on an output's stage: one of many racing runs takes it, a second run waits for it
or is told who holds it, a crashed holder's lease expires and is taken over, and two scoring
runs whose plans differ score every image exactly once."""

from __future__ import annotations

import threading
import time

import pytest

from bincount.core.lease import (
    Holder,
    Lease,
    LeaseHeartbeat,
    LeaseHeld,
    LeaseLost,
    LeaseTerms,
    create_exclusive,
)
from bincount.core.storage import Location


def _holder(name: str) -> Holder:
    return Holder(run_id=f"id-{name}", run_name=name, host="host-a", pid=4242)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> Location:
    """An output folder, on disk and on the moto S3 server (signed writes)."""
    if request.param == "local":
        return Location(str(tmp_path / "out"))
    from bincount.testing.s3server import TEST_CREDENTIALS

    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return Location(
        f"s3://{bucket}/out",
        endpoint_url=server.endpoint_url,
        key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def test_an_exclusive_create_keeps_the_first_writer(output):
    assert create_exclusive(output, "_leases/score/000000001.json", b"first")
    assert not create_exclusive(output, "_leases/score/000000001.json", b"second")
    assert output.read_bytes("_leases/score/000000001.json") == b"first"


def test_of_runs_racing_for_a_free_lease_exactly_one_takes_it(output):
    runs = [Lease(output, "score", _holder(f"run-{i}"), LeaseTerms(ttl_s=60)) for i in range(6)]
    start = threading.Barrier(len(runs))
    blockers: dict[int, object] = {}

    def race(i: int) -> None:
        start.wait()
        blockers[i] = runs[i].try_acquire()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [i for i, blocker in blockers.items() if blocker is None]
    assert len(winners) == 1
    (winner,) = winners
    assert runs[winner].record is not None
    assert all(
        blocker.holder.run_name == f"run-{winner}" for i, blocker in blockers.items() if i != winner
    )
    assert Lease(output, "score", _holder("reader"), LeaseTerms(ttl_s=1)).current().holder == (
        _holder(f"run-{winner}")
    )


def test_a_second_run_ends_naming_the_holder_and_writes_nothing(output):
    first = Lease(output, "score", _holder("nightly"), LeaseTerms(ttl_s=60))
    first.acquire()
    listed = output.list("_leases/score").num_rows
    second = Lease(output, "score", _holder("manual"), LeaseTerms(ttl_s=60, wait_s=0.3, poll_s=0.1))
    started = time.monotonic()
    with pytest.raises(LeaseHeld) as held:
        second.acquire()
    assert 0.3 <= time.monotonic() - started < 5
    message = str(held.value)
    assert "run 'nightly' (id-nightly) on host host-a, pid 4242" in message
    assert f"score lease on {output.uri()}" in message and "since " in message
    assert second.record is None and output.list("_leases/score").num_rows == listed


def test_a_waiting_run_takes_the_lease_once_its_holder_lets_go(output):
    first = Lease(output, "ingest", _holder("nightly"), LeaseTerms(ttl_s=60))
    first.acquire()
    releaser = threading.Timer(0.5, first.release)
    releaser.start()
    second = Lease(output, "ingest", _holder("manual"), LeaseTerms(ttl_s=60, wait_s=30, poll_s=0.1))
    started = time.monotonic()
    record = second.acquire()
    releaser.join()
    assert 0.4 <= time.monotonic() - started < 10
    assert record.generation == 2 and record.holder.run_name == "manual"


def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_out(output):
    crashed = Lease(output, "score", _holder("crashed"), LeaseTerms(ttl_s=0.5))
    crashed.acquire()
    successor = Lease(output, "score", _holder("next"), LeaseTerms(ttl_s=60, wait_s=10, poll_s=0.1))
    started = time.monotonic()
    record = successor.acquire()  # no renewal from the crashed holder: it expires
    assert time.monotonic() - started < 5
    assert record.generation == 2
    with pytest.raises(LeaseLost, match="taken over by run 'next'"):
        crashed.renew()
    crashed.release()  # a no-op: the successor's record stands
    assert successor.current().holder.run_name == "next" and not successor.current().released


def test_a_heartbeat_holds_the_lease_past_its_time_to_live_and_releases_it(output):
    terms = LeaseTerms(ttl_s=0.6, wait_s=0, poll_s=0.1)
    with LeaseHeartbeat(Lease(output, "manifest", _holder("long"), terms)):
        time.sleep(1.5)  # 2.5 times the time to live
        with pytest.raises(LeaseHeld, match="run 'long'"):
            Lease(output, "manifest", _holder("other"), terms).acquire()
    after = Lease(output, "manifest", _holder("other"), terms)
    assert after.acquire().holder.run_name == "other"  # released: no wait for the expiry


def test_a_holder_that_lost_its_lease_fails_its_block(output):
    from datetime import UTC, datetime, timedelta

    lease = Lease(output, "review", _holder("paused"), LeaseTerms(ttl_s=0.6))
    # A successor an hour ahead sees the lease long expired, as after a pause past its ttl.
    later = Lease(
        output,
        "review",
        _holder("next"),
        LeaseTerms(ttl_s=60),
        clock=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    with pytest.raises(LeaseLost, match="taken over by run 'next'"), LeaseHeartbeat(lease):
        assert later.try_acquire() is None
        time.sleep(0.8)  # the next beat finds the later generation
    assert later.current().holder.run_name == "next" and not later.current().released


def test_bad_terms_and_stages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ttl_s > 0"):
        LeaseTerms(ttl_s=0)
    with pytest.raises(ValueError, match="wait_s >= 0"):
        LeaseTerms(ttl_s=1, wait_s=-1)
    with pytest.raises(ValueError, match="stage of"):
        Lease(Location(str(tmp_path)), "scores", _holder("x"), LeaseTerms(ttl_s=1))
