"""Crash recovery: a ``bincount score`` process killed with SIGKILL mid-scoring stops renewing
its lease; until it expires a new run is told who holds it, after it the next run takes the
lease over and completes the night, every image scored once and the queue decided once."""

from __future__ import annotations

import os
import shutil
import signal
import socket

import pytest

from bincount.core.lease import LeaseHeld
from bincount.core.storage import Location
from bincount.core.tables import read_table
from tests.test_lease import scored_ids, scoring_environment, start_scoring, wait_for_parts


def flow_run_state(run_id: str):
    """The flow run's state as the Prefect API shows it (and the UI)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_a_killed_scoring_run_s_lease_expires_and_the_next_run_completes_the_night(
    prefect_api, trained, s3_server, bucket, tmp_path, monkeypatch
):
    from bincount.core.settings import get_settings
    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from flows.score import score
    from tests.builders import write_clean_bucket

    ids = write_clean_bucket(tmp_path / "bucket", 120, start=20000)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (open while the run lasts)
    with fault_proxy(s3_server.endpoint_url, latency_ms=80) as proxy:
        environment = scoring_environment(proxy.endpoint_url, lease_ttl_s="6")
        killed = start_scoring(f"s3://{bucket}", str(out), environment, log)
        wait_for_parts(out, 2, killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        committed = len(list(out.rglob("scores/*/part-*")))
        assert 2 <= committed < len(ids) // 20, "the kill should land midway"
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

        # At once: the dead run's lease has not expired yet, and says whose it was.
        monkeypatch.setenv("BINCOUNT_LEASE_WAIT_S", "0")
        get_settings.cache_clear()
        with pytest.raises(LeaseHeld) as held:
            score(source=f"s3://{bucket}", output=str(out), batch_size=4, ingest_first=False)
        assert f"on host {socket.gethostname()}, pid {killed.pid}" in str(held.value)
        # Nothing watched the killed process: the API still shows its run Running.
        dead_run = held.value.holder.holder.run_id
        assert flow_run_state(dead_run).is_running()
        assert len(list(out.rglob("scores/*/part-*"))) == committed  # it wrote nothing

        # The next run waits out the time to live, takes the lease over, finishes the night.
        monkeypatch.setenv("BINCOUNT_LEASE_WAIT_S", "120")
        get_settings.cache_clear()
        night = score(source=f"s3://{bucket}", output=str(out), batch_size=4)
    get_settings.cache_clear()

    # The run that took the expired lease over marked the killed one Crashed, saying why.
    crashed = flow_run_state(dead_run)
    assert crashed.is_crashed(), crashed
    assert "score lease" in crashed.message and "expired" in crashed.message
    assert f"pid {killed.pid} stopped" in crashed.message

    assert (
        night["already_scored"] >= 2 * 20 and night["scored"] == len(ids) - night["already_scored"]
    )
    assert scored_ids(out) == sorted(ids)  # every image exactly once
    assert night["queue"]["carried_over"] >= 2  # the killed run's parts, ranked tonight
    scores = read_table(Location(str(out)), "scores")
    tonight = [uri for uri in scores.column("image_uri").to_pylist() if f"/{bucket}/" in uri]
    assert len(tonight) == len(ids)
    # The queue is decided once: every bin of the night ranked, in one queue, none pending.
    ranked = read_table(Location(str(out)), "scores", columns=["image_uri", "needs_review"])
    assert ranked.column("needs_review").null_count == 0
    assert not list((out / "scores" / "_queues").glob("*.parquet"))
    queued = read_table(Location(str(out)), "review_queue")
    assert queued.num_rows == len(set(queued.column("image_id").to_pylist()))
    assert set(queued.column("queue_id").to_pylist()) <= {night["queue"]["queue_id"]}
