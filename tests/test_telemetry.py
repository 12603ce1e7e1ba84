"""The telemetry switches are set in one place."""

from __future__ import annotations

import subprocess

from bincount.core import telemetry
from tests.conftest import REPO


def test_the_switches_are_set_only_by_telemetry_py_and_the_workers_environment():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    naming = {
        path
        for path in tracked
        if (REPO / path).is_file()
        and not path.startswith("tests/")
        and not path.endswith(".md")  # the guides tell a shell typing `prefect server start`
        and any(
            name in (REPO / path).read_text(errors="replace")
            for name in telemetry.QUIET_ENVIRONMENT
        )
    }
    # The deployments' workers run without the CLI: their environment carries the same switches.
    assert naming == {"bincount/core/telemetry.py", "deployments/prefect.yaml"}


def test_quiet_keeps_a_users_own_values_unless_forced():
    environ = {"DO_NOT_TRACK": "0"}
    telemetry.quiet(environ)
    assert environ == {**telemetry.QUIET_ENVIRONMENT, "DO_NOT_TRACK": "0"}
    telemetry.quiet(environ, force=True)
    assert environ == telemetry.QUIET_ENVIRONMENT
