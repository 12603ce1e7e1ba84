"""The production database: Debian's PostgreSQL 15 started in a temporary folder, a Prefect
server on it, deployments/prefect.yaml deployed, a process worker, and the nightly scoring
deployment run twice: the second run adds nothing. The steps are docs/operators/postgres.md's."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.testing.prefectserver import PrefectServer
from bincount.testing.s3server import free_port
from tests.builders import write_clean_bucket
from tests.deployhelpers import BIN, check_against_the_file, deploy_the_file, environment

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's `postgresql` package puts them here
DATABASE = "prefect"


def _as_owner() -> tuple[list[str], str | None]:
    """The prefix that runs a PostgreSQL binary as a non-root user (it refuses to run as root),
    and that user; nothing and None when this process is not root."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
    pytest.skip("running as root, and neither a `postgres` nor a `nobody` user to run PostgreSQL")


@contextmanager
def postgresql() -> Iterator[tuple[str, int]]:
    """A PostgreSQL cluster in a temporary folder on a free loopback port, with an empty
    ``prefect`` database; yields (host, port). Stopped, and its folder removed, on exit."""
    missing = [name for name in ("initdb", "pg_ctl", "createdb") if not (PG_BIN / name).exists()]
    if missing:
        pytest.skip(f"PostgreSQL 15 not installed: no {', '.join(missing)} in {PG_BIN}")
    prefix, owner = _as_owner()
    with tempfile.TemporaryDirectory(prefix="bincount-pg-") as folder:
        if owner:
            shutil.chown(folder, owner)
        data, port = Path(folder) / "data", free_port()

        def pg(*command: str, **options) -> subprocess.CompletedProcess:
            # The folder as working directory: the owner may not be allowed into ours.
            return subprocess.run(
                [*prefix, *command], cwd=folder, capture_output=True, text=True, **options
            )

        # Trust on a loopback-only cluster that lives as long as the test; --no-sync because
        # the folder is thrown away (both would be wrong for production: see the docs page).
        made = pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            timeout=120,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        log = Path(folder) / "postgres.log"
        try:
            started = pg(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                timeout=90,
            )
            assert started.returncode == 0, started.stdout + started.stderr + _tail(log)
            created = pg(
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                DATABASE,
                timeout=60,
            )
            assert created.returncode == 0, created.stdout + created.stderr
            yield "127.0.0.1", port
        finally:
            _stop_postgresql(pg, data)


def _stop_postgresql(pg, data: Path) -> None:
    """``pg_ctl stop``; where it fails, SIGKILL the postmaster named in its pid file (pg_ctl
    daemonizes it, so no process group of ours holds it)."""
    stopped = pg(
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90
    )
    pid_file = data / "postmaster.pid"
    if stopped.returncode != 0 and pid_file.exists():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


@contextmanager
def _process_group(command: list, env: dict[str, str], log: Path, cwd: Path) -> Iterator:
    """``command`` in a process group of its own, SIGTERMed (then SIGKILLed) as a group on exit,
    so nothing it started outlives the test."""
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with suppress(ProcessLookupError):  # the group's other members, the leader gone or not
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _psql(host: str, port: int, query: str) -> list[list[str]]:
    """Rows of ``query`` run by psql on the cluster's Prefect database, read back as text."""
    done = subprocess.run(
        [
            PG_BIN / "psql",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            DATABASE,
            "-AtF",
            "\t",
            "-c",
            query,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


def test_a_postgresql_backed_server_runs_the_nightly_scoring_twice_the_second_adding_nothing(
    trained, tmp_path
):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shutil.copytree(trained, tmp_path / "data")
    write_clean_bucket(tmp_path / "data" / "bucket", 5, start=300)
    source, output = str(tmp_path / "data" / "bucket"), str(tmp_path / "data" / "out")
    # Any bin may be queued (max_p_recorded 1): the 10% budget fills, so a rerun that queued
    # again would show; the deployment's own 5% bar might leave tonight's queue empty.
    parameters = {
        "source": source,
        "output": output,
        "batch_size": 8,
        "review": {"budget_percent": 10.0, "budget_count": None, "max_p_recorded": 1.0},
    }
    with ExitStack() as stack:
        host, port = stack.enter_context(postgresql())
        url = f"postgresql+asyncpg://postgres@{host}:{port}/{DATABASE}"
        server = stack.enter_context(PrefectServer(tmp_path / "prefect-home", database_url=url))
        stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))

        check_against_the_file(deploy_the_file())

        worker_log = tmp_path / "worker.log"
        command = [BIN / "prefect", "worker", "start", "--pool", "bincount-cpu"]
        worker = stack.enter_context(_process_group(command, environment(), worker_log, tmp_path))

        nights = []
        for _ in range(2):
            run = run_deployment(
                "score/nightly-scoring", parameters=parameters, timeout=300, poll_interval=1
            )
            assert worker.poll() is None, _tail(worker_log)
            assert run.state.is_completed(), f"{run.state}\n{_tail(worker_log)}"
            scores = read_table(Location(output), "scores", columns=["image_uri", "run_id"])
            queue = read_table(Location(output), "review_queue", columns=["image_id"])
            nights.append((run.id, scores, queue))

        # What the server kept is in PostgreSQL: both runs, Completed, and every deployment.
        ids = ", ".join(f"'{run_id}'" for run_id, _, _ in nights)
        assert _psql(host, port, f"select state_type from flow_run where id in ({ids})") == [
            ["COMPLETED"],
            ["COMPLETED"],
        ]
        names = {name for (name,) in _psql(host, port, "select name from deployment")}
        assert {"nightly-scoring", "daily-ingest-validate", "weekly-retrain"} <= names
    assert not list((tmp_path / "prefect-home").rglob("*.db"))  # no SQLite beside it

    (first, scores, queue), (second, rescored, requeued) = nights
    assert scores.num_rows == 45  # the 40 bins the model was trained on and the 5 that arrived
    assert set(scores.column("run_id").to_pylist()) == {str(first)}
    assert len(set(scores.column("image_uri").to_pylist())) == 45  # each image once
    assert queue.num_rows == 4  # 10% of 45 bins
    # The second night adds nothing: the same score rows, the same queue, none of its own.
    assert rescored.sort_by("image_uri").equals(scores.sort_by("image_uri"))
    assert requeued.sort_by("image_id").equals(queue.sort_by("image_id"))
    assert str(second) not in set(rescored.column("run_id").to_pylist())
