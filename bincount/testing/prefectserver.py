"""A Prefect server of a test's own: ``prefect server start`` as an operator runs it, on a free
loopback port, over a database and a ``PREFECT_HOME`` the test chooses, which it can stop and
start again (same port, same database) mid-run. Prefect is run as a program, never imported.

For the tests that need more than the session's harness: a PostgreSQL database, or an outage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

from bincount.core import telemetry
from bincount.testing.s3server import free_port

PREFECT = Path(sys.executable).with_name("prefect")  # this environment's, not one on PATH


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with its state under ``home``; the database is
    ``database_url``, else SQLite in ``home``. A context manager (started on entry, stopped on
    exit), or started and stopped by hand for an outage drill. Each start logs to
    ``home/server-<n>.log``, whose tail any failure to start shows."""

    def __init__(
        self,
        home: Path,
        *,
        database_url: str | None = None,
        port: int | None = None,
        startup_timeout_s: float = 180,
        ui: bool = False,
        services: bool = True,
    ) -> None:
        self.home = Path(home)
        self.ui, self.services = ui, services
        self.database_url = database_url or f"sqlite+aiosqlite:///{self.home}/prefect.db"
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def __enter__(self) -> PrefectServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """The server's environment: this one's, less the settings meant for a client of some
        other API or for bincount's own runs, without telemetry (and without the UI unless
        asked: the UI calls the API where it is told to, else at port 4200)."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name != "PREFECT_API_URL" and not name.startswith("BINCOUNT_")
        }
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=self.database_url,
            PREFECT_SERVER_UI_ENABLED=str(self.ui).lower(),
        )
        if self.ui:
            env["PREFECT_UI_API_URL"] = self.api_url
        telemetry.quiet(env, force=True)
        return env

    def start(self) -> None:
        """Start the server and wait until its health endpoint answers; raises, with the log's
        tail, when it exits or stays silent for ``startup_timeout_s``."""
        if self.process is not None:
            raise RuntimeError(f"Expected a stopped server, but got one running on {self.port}")
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.services:  # the API and UI alone: nothing scheduled, nothing marked late
            command.append("--no-services")
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [str(part) for part in command],
                cwd=self.home,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group: stop() reaches whatever it started
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(
                    f"Expected the Prefect server up, but it exited {code}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"Expected the Prefect server up within {self.startup_timeout_s:g} s, but it did not "
            f"answer:\n{self.log()}"
        )

    def stop(self) -> None:
        """SIGTERM to its process group, as a restart by an operator or systemd sends it; then
        SIGKILL to whatever of the group is left after 30 s, so nothing outlives it."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with suppress(ProcessLookupError):  # the group's other members, the leader gone or not
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.home / f"server-{self.starts}.log"

    def log(self, size: int = 3000) -> str:
        """The tail of the latest start's log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-size:]
