"""The lease on an output's stage: one of many racing runs takes it, a second run waits for it
or is told who holds it, a crashed holder's lease expires and is taken over, and two scoring
runs whose plans differ score every image exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import suppress

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
from bincount.testing.processes import bincount_command


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
    # It waited its 0.3 s and gave up, well before the holder's 60 s ttl; the upper bound is
    # wide for a loaded machine, where each look at the lease can take seconds.
    assert 0.3 <= time.monotonic() - started < 30
    message = str(held.value)
    assert "run 'nightly' (id-nightly) on host host-a, pid 4242" in message
    assert f"score lease on {output.uri()}" in message and "since " in message
    assert second.record is None and output.list("_leases/score").num_rows == listed


def test_a_waiting_run_takes_the_lease_once_its_holder_lets_go(output):
    first = Lease(output, "ingest", _holder("nightly"), LeaseTerms(ttl_s=60))
    first.acquire()
    letting_go = threading.Event()

    def let_go() -> None:
        letting_go.set()
        first.release()

    # By events, not elapsed time: the waiter got the lease after the holder began to let go,
    # and before its own wait (or the holder's ttl) ran out, however slow the machine.
    second = Lease(output, "ingest", _holder("manual"), LeaseTerms(ttl_s=60, wait_s=60, poll_s=0.1))
    releaser = threading.Timer(0.5, let_go)
    releaser.start()
    record = second.acquire()
    releaser.join()
    assert letting_go.is_set()
    assert record.generation == 2 and record.holder.run_name == "manual"


def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_out(output):
    crashed = Lease(output, "score", _holder("crashed"), LeaseTerms(ttl_s=0.5))
    crashed.acquire()
    # A wait far past the 0.5 s ttl: on a loaded machine the successor's looks at the lease are
    # slow, and only the expiry can let it in (no elapsed-time bound: the takeover is the check).
    successor = Lease(output, "score", _holder("next"), LeaseTerms(ttl_s=60, wait_s=60, poll_s=0.1))
    record = successor.acquire()  # no renewal from the crashed holder: it expires
    assert record.generation == 2
    with pytest.raises(LeaseLost, match="taken over by run 'next'"):
        crashed.renew()
    crashed.release()  # a no-op: the successor's record stands
    assert successor.current().holder.run_name == "next" and not successor.current().released


def test_a_heartbeat_holds_the_lease_past_its_time_to_live_and_releases_it(output):
    # A beat every second: the lease lapses only if no renewal lands for 3 s, a margin a loaded
    # machine keeps (at a 0.6 s ttl a renewal late by 0.4 s let another run in).
    terms = LeaseTerms(ttl_s=3, wait_s=0, poll_s=0.1)
    with LeaseHeartbeat(Lease(output, "manifest", _holder("long"), terms)):
        time.sleep(4.5)  # 1.5 times the time to live
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
    heartbeat = LeaseHeartbeat(lease)
    with pytest.raises(LeaseLost, match="taken over by run 'next'"), heartbeat:
        assert later.try_acquire() is None
        # The next beat finds the later generation: waited for, not slept on, so a beat that a
        # loaded machine delays still lands inside the block.
        deadline = time.monotonic() + 60
        while heartbeat.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert later.current().holder.run_name == "next" and not later.current().released


def test_bad_terms_and_stages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ttl_s > 0"):
        LeaseTerms(ttl_s=0)
    with pytest.raises(ValueError, match="wait_s >= 0"):
        LeaseTerms(ttl_s=1, wait_s=-1)
    with pytest.raises(ValueError, match="stage of"):
        Lease(Location(str(tmp_path)), "scores", _holder("x"), LeaseTerms(ttl_s=1))


# -- two scoring runs on one output ---------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def scoring_environment(endpoint_url: str, **settings: str) -> dict[str, str]:
    """The environment of a ``bincount score`` process: the harness's API, the test's S3
    endpoint and credentials, chunks of 20 fetched one at a time, and ``settings``."""
    from prefect.settings import PREFECT_API_URL

    from bincount.testing.s3server import TEST_CREDENTIALS

    environment = {k: v for k, v in os.environ.items() if not k.startswith("BINCOUNT_")}
    return {
        **environment,
        **TEST_CREDENTIALS,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the harness's: no server to start
        "BINCOUNT_S3_ENDPOINT_URL": endpoint_url,
        "BINCOUNT_CHUNK_SIZE": "20",
        "BINCOUNT_MAX_CONCURRENCY": "1",
        **{f"BINCOUNT_{name.upper()}": value for name, value in settings.items()},
    }


def start_scoring(source: str, output: str, environment: dict, log) -> subprocess.Popen:
    """``bincount score`` in its own process, as a nightly deployment or an operator runs it; in
    a process group of its own, so ``stop_group`` reaches whatever it started."""
    command = bincount_command("score", "--source", source, "--output", output)
    return subprocess.Popen(
        [*command, "--batch-size", "4"],
        env=environment,
        cwd=REPO,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of a run still going (a test that failed while it ran): the
    suite leaves no process behind."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for_parts(out, count: int, process, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(out.rglob("scores/*/part-*"))) < count:
        assert process.poll() is None, "scoring ended before the second run started"
        assert time.monotonic() < deadline, "scoring committed no chunk in time"
        time.sleep(0.05)


def scored_ids(out) -> list[str]:
    from bincount.core.tables import read_table

    return sorted(read_table(Location(str(out)), "scores").column("image_id").to_pylist())


def test_two_scoring_runs_whose_plans_differ_score_every_image_once(
    prefect_api, trained, s3_server, bucket, tmp_path, monkeypatch
):
    import shutil
    import socket

    from bincount.core.settings import get_settings
    from bincount.core.tables import read_table
    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from flows.score import score
    from tests.builders import write_clean_bucket

    first_ids = write_clean_bucket(tmp_path / "first", 160, start=10000)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "first")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    log = open(tmp_path / "nightly.log", "w")  # noqa: SIM115 (open while the run lasts)
    # 80 ms a request, one at a time: the nightly run scores for tens of seconds.
    with fault_proxy(s3_server.endpoint_url, latency_ms=80) as proxy:
        environment = scoring_environment(proxy.endpoint_url)
        nightly = start_scoring(f"s3://{bucket}", str(out), environment, log)
        try:
            wait_for_parts(out, 1, nightly)
            for name, value in environment.items():
                monkeypatch.setenv(name, value)

            # An operator's run that will not wait ends naming the nightly run, scoring nothing.
            # It goes straight to the score lease (no ingest, no new bins yet): the refusal must
            # come while the nightly run scores, and the nightly's remaining 7 chunks take at
            # least 11 s of the proxy's latency however fast the machine, far more than a run's
            # start on a loaded one.
            monkeypatch.setenv("BINCOUNT_LEASE_WAIT_S", "0")
            get_settings.cache_clear()
            before = len(scored_ids(out))
            with pytest.raises(LeaseHeld) as held:
                score(source=f"s3://{bucket}", output=str(out), batch_size=4, ingest_first=False)
            assert f"run 'score {out} " in str(held.value)
            assert f"on host {socket.gethostname()}, pid {nightly.pid}" in str(held.value)
            assert nightly.poll() is None, "the refusal should come while the nightly run scores"
            assert len(scored_ids(out)) < len(first_ids) and len(scored_ids(out)) >= before

            # New bins arrive after the nightly run's plan: ABID's 6-digit ids sort among its
            # 5-digit ones (100000 < 10001), so any plan made now differs from the nightly's.
            new_ids = write_clean_bucket(tmp_path / "new", 60, start=100000)
            upload_tree(s3_server.endpoint_url, bucket, tmp_path / "new")
            # One that waits starts once the nightly run lets go, and scores what is left.
            monkeypatch.setenv("BINCOUNT_LEASE_WAIT_S", "300")
            get_settings.cache_clear()
            manual = score(source=f"s3://{bucket}", output=str(out), batch_size=4)
            assert nightly.wait(timeout=300) == 0, (tmp_path / "nightly.log").read_text()[-3000:]
        finally:
            stop_group(nightly)
            log.close()
    get_settings.cache_clear()

    assert manual["scored"] == len(new_ids) and manual["already_scored"] == len(first_ids)
    assert scored_ids(out) == sorted(first_ids + new_ids)  # every image exactly once
    queued = read_table(Location(str(out)), "review_queue").column("image_id").to_pylist()
    assert len(queued) == len(set(queued))  # no bin queued twice
