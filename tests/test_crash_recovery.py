"""Crash recovery, as production runs it: a scoring run killed with SIGKILL midway (a
``bincount score`` process, or the flow process a deployment's worker started) or cut off from
its Prefect server (restarted mid-run, or down at the run's end). Each ends in a state that says
so in the Prefect API, its lease is released or expires, and the next run completes the night:
every image scored once and the queue decided once. What an operator sees is in
docs/operators/leases.md."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from contextlib import suppress

import pytest

from bincount.core.lease import LeaseHeld
from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.testing.prefectserver import PrefectServer
from tests.deployhelpers import BIN, deploy_the_file, environment
from tests.test_lease import (
    scored_ids,
    scoring_environment,
    start_scoring,
    stop_group,
    wait_for_parts,
)


def flow_run_state(run_id: str, api_url: str | None = None):
    """The flow run's state as the Prefect API (the current one, or ``api_url``) shows it, and
    the UI."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: api_url} if api_url else {}),
        get_client(sync_client=True) as client,
    ):
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
        # A ttl the refusal below comes well within on a loaded machine: the dead run's lease
        # outlives it by 13-20 s (renewed every third of it), a run's start takes a few.
        environment = scoring_environment(proxy.endpoint_url, lease_ttl_s="20")
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


# -- a worker's flow process killed: the deployment as production runs it -------------------------
def _start_worker(environment: dict, log_path) -> object:
    """``prefect worker start --pool bincount-cpu --run-once``: it takes the run waiting in the
    pool, runs it in a flow process of its own, reports how that process ended, and exits."""
    import subprocess

    return subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "bincount-cpu", "--run-once"],
        cwd=log_path.parent,
        env=environment,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its group: the clean-up reaches its flow process too
    )


def _flow_process(worker, run_id, timeout_s: float = 120):
    """The worker's child process that runs flow run ``run_id`` (``python -m prefect.engine``)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it started the flow run"
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"Expected a flow process for {run_id} within {timeout_s} s")


def _lease_records(out, stage: str) -> list:
    from bincount.core.lease import LeaseRecord

    folder = out / "_leases" / stage
    return [LeaseRecord.from_bytes(path.read_bytes()) for path in sorted(folder.glob("*.json"))]


def _assert_the_night_completed_once(out, bucket: str, ids: list[str]) -> None:
    assert scored_ids(out) == sorted(ids)  # every image exactly once (the trained 40 are not)
    scores = read_table(Location(str(out)), "scores", columns=["needs_review"])
    assert scores.column("needs_review").null_count == 0  # every bin ranked
    assert not list((out / "scores" / "_queues").glob("*.parquet"))  # no queue left pending
    queued = read_table(Location(str(out)), "review_queue").column("image_id").to_pylist()
    assert len(queued) == len(set(queued))  # no bin queued twice


def test_a_worker_s_flow_process_killed_mid_scoring_is_crashed_and_the_next_run_completes(
    prefect_api, trained, s3_server, bucket, tmp_path
):
    import time

    from prefect.deployments import run_deployment

    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from tests.builders import write_clean_bucket

    ids = write_clean_bucket(tmp_path / "bucket", 120, start=30000)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    deploy_the_file("nightly-scoring")  # with the process pool it names
    parameters = {"source": f"s3://{bucket}", "output": str(out), "batch_size": 4}
    with fault_proxy(s3_server.endpoint_url, latency_ms=80) as proxy:
        # The workers' environment, as the pool's machines would have it; a short lease.
        settings = scoring_environment(proxy.endpoint_url, lease_ttl_s="6", lease_wait_s="120")
        worker_env = environment(**settings)
        first = run_deployment("score/nightly-scoring", parameters=parameters, timeout=0)
        worker = _start_worker(worker_env, tmp_path / "worker-1.log")
        try:
            flow_process = _flow_process(worker, first.id)
            deadline = time.monotonic() + 240
            while len(list(out.rglob("scores/*/part-*"))) < 2:
                assert flow_process.is_running() and time.monotonic() < deadline, (
                    tmp_path / "worker-1.log"
                ).read_text()[-3000:]
                time.sleep(0.05)
            flow_process.send_signal(signal.SIGKILL)  # the flow's process alone, not the worker
            assert worker.wait(timeout=120) == 0  # the worker lives on to report it
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        committed = len(list(out.rglob("scores/*/part-*")))
        assert 2 <= committed < len(ids) // 20, "the kill should land midway"

        # The worker saw its flow process die and said so in the API.
        crashed = flow_run_state(first.id)
        assert crashed.is_crashed(), (tmp_path / "worker-1.log").read_text()[-3000:]
        assert "exited with status code: -9" in crashed.message and "SIGKILL" in crashed.message
        (dead,) = [r for r in _lease_records(out, "score") if r.holder.run_id == str(first.id)]
        assert not dead.released  # it never let go: its lease can only expire

        # The next run of the deployment waits out the dead run's lease and finishes the night.
        second = run_deployment("score/nightly-scoring", parameters=parameters, timeout=0)
        worker = _start_worker(worker_env, tmp_path / "worker-2.log")
        try:
            assert worker.wait(timeout=400) == 0
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    finished = flow_run_state(second.id)
    assert finished.is_completed(), (tmp_path / "worker-2.log").read_text()[-3000:]
    assert "took over the score lease" in (tmp_path / "worker-2.log").read_text()
    holders = [(r.holder.run_id, r.released) for r in _lease_records(out, "score")]
    assert holders == [(str(first.id), False), (str(second.id), True)]
    assert flow_run_state(first.id).is_crashed()  # the worker's verdict stands
    _assert_the_night_completed_once(out, bucket, ids)
    scores = read_table(Location(str(out)), "scores", columns=["image_id", "run_id"])
    by_run = {run: 0 for run in scores.column("run_id").to_pylist()}
    for run in scores.column("run_id").to_pylist():
        by_run[run] += 1
    assert by_run[str(first.id)] == 20 * committed
    assert by_run[str(second.id)] == len(ids) - 20 * committed


# -- the Prefect server restarted mid-run ---------------------------------------------------------
@pytest.mark.parametrize("outage", ["restart", "down-until-the-run-ends"])
def test_a_scoring_run_across_a_prefect_server_outage_ends_final_and_the_next_completes_it(
    outage, trained, s3_server, bucket, tmp_path
):
    import subprocess
    import time

    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from tests.builders import write_clean_bucket

    ids = write_clean_bucket(tmp_path / "bucket", 120, start=40000)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    server = PrefectServer(tmp_path / "prefect")  # SQLite in its home; restarted on its port
    server.start()
    try:
        with fault_proxy(s3_server.endpoint_url, latency_ms=80) as proxy:
            environment = {
                **scoring_environment(proxy.endpoint_url, lease_ttl_s="6", lease_wait_s="120"),
                "PREFECT_API_URL": server.api_url,
            }
            if outage != "restart":  # one retry, not five with backoff: minutes sooner, same end
                environment["PREFECT_CLIENT_MAX_RETRIES"] = "1"
            log = open(tmp_path / "first.log", "w")  # noqa: SIM115 (open while the run lasts)
            first = start_scoring(f"s3://{bucket}", str(out), environment, log)
            wait_for_parts(out, 2, first)
            (holding,) = [r for r in _lease_records(out, "score") if not r.released]
            server.stop()
            stopped_at = time.monotonic()
            if outage == "restart":
                time.sleep(5)  # down for a while, as a restart on a loaded machine is
            else:  # down past the run's end: it cannot tell the API how it ended
                with suppress(subprocess.TimeoutExpired):
                    first.wait(timeout=400)
            server.start()
            down_s = time.monotonic() - stopped_at
            try:
                exit_code = first.wait(timeout=400)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
            first_log = (tmp_path / "first.log").read_text()
            state = flow_run_state(holding.holder.run_id, server.api_url)
            print(f"server down {down_s:.0f} s; run exit {exit_code}; state {state!r}")
            if outage == "restart":
                # Back within the client's retries: the run never noticed beyond a delay.
                assert exit_code == 0 and state.is_completed(), (state, first_log[-3000:])
            else:
                # Down at its end: it failed on a call to the API (publishing the night's
                # drift artifact) and could not report it, so the API still shows it Running.
                assert exit_code != 0 and "ConnectError" in first_log, first_log[-3000:]
                assert state.is_running(), state
            (record,) = [r for r in _lease_records(out, "score") if r.token == holding.token]
            assert record.released  # it ended in its own time: it let its lease go

            # The next run finishes the night (or finds it finished) against the same server.
            log = open(tmp_path / "next.log", "w")  # noqa: SIM115 (open while the run lasts)
            following = start_scoring(f"s3://{bucket}", str(out), environment, log)
            assert following.wait(timeout=400) == 0, (tmp_path / "next.log").read_text()[-3000:]
        last = _lease_records(out, "score")[-1]
        assert last.token != holding.token and last.released
        assert flow_run_state(last.holder.run_id, server.api_url).is_completed()
        # The first run ends final either way: Completed, or Crashed by the run that followed.
        state = flow_run_state(holding.holder.run_id, server.api_url)
        if outage == "restart":
            assert state.is_completed(), state
        else:
            assert state.is_crashed(), state
            assert "Prefect API was unreachable when it ended" in state.message
            assert f"pid {first.pid})" in state.message
    finally:
        server.stop()
    _assert_the_night_completed_once(out, bucket, ids)


# -- a run stopped with SIGTERM ------------------------------------------------------------------
def test_a_scoring_run_stopped_with_sigterm_ends_crashed_lets_its_lease_go_and_its_server_stop(
    trained, s3_server, bucket, tmp_path
):
    """SIGTERM, what ``kill``, systemd and container runtimes send, ends a ``bincount`` command
    as Ctrl-C does: the run is marked Crashed, its lease is let go (the next run need not wait
    out its time to live), and the temporary Prefect server the command started stops with it,
    rather than running on as an orphan holding its port."""
    import sqlite3

    import psutil

    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from tests.builders import write_clean_bucket

    write_clean_bucket(tmp_path / "bucket", 120, start=30000)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    home = tmp_path / "prefect-home"
    log = open(tmp_path / "stopped.log", "w")  # noqa: SIM115 (open while the run lasts)
    with fault_proxy(s3_server.endpoint_url, latency_ms=80) as proxy:
        environment = scoring_environment(proxy.endpoint_url)
        del environment["PREFECT_API_URL"]  # no server given: the command starts its own
        environment["PREFECT_HOME"] = str(home)
        stopped = start_scoring(f"s3://{bucket}", str(out), environment, log)
        try:
            wait_for_parts(out, 2, stopped, timeout_s=600)  # a server to start first
            servers = [
                child
                for child in psutil.Process(stopped.pid).children(recursive=True)
                if "uvicorn" in " ".join(child.cmdline())
            ]
            assert servers, "the command should have started a temporary Prefect server"
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(timeout=120) == 128 + signal.SIGTERM
        finally:
            stop_group(stopped)
    _, running_on = psutil.wait_procs(servers, timeout=60)
    for server in running_on:  # the suite leaves no process behind, even when this fails
        with suppress(psutil.NoSuchProcess):
            server.kill()
    assert not running_on, "the temporary Prefect server outlived its command"

    (lease,) = _lease_records(out, "score")[-1:]
    assert lease.released and lease.holder.pid == stopped.pid
    # The run as the UI of that server would show it (its database stays in PREFECT_HOME).
    with sqlite3.connect(home / "prefect.db") as database:
        states = dict(
            database.execute(
                "SELECT flow.name, flow_run.state_type FROM flow_run "
                "JOIN flow ON flow.id = flow_run.flow_id"
            ).fetchall()
        )
    assert states == {"ingest": "COMPLETED", "score": "CRASHED"}  # stopped while scoring
    assert len(list(out.rglob("scores/*/part-*"))) < 120 // 20  # stopped midway
