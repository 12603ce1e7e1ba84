"""Runs killed midway, as a crash leaves them: the command runs in a process group of its own, and
the whole group (the flow's process and whatever it started) is killed with SIGKILL once the
output shows enough committed work, so no child outlives the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress


def bincount_command(*arguments: str) -> list[str]:
    """The ``bincount`` command as a user runs it, in this interpreter."""
    return [sys.executable, "-m", "flows.cli", *arguments]


def kill_midway(
    command: Sequence[str],
    *,
    progress: Callable[[], int],
    at_least: int = 2,
    timeout_s: float = 180,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Start ``command``; once ``progress()`` reaches ``at_least``, SIGKILL its process group.
    Returns ``progress()`` after the kill. Raises when the command ends (or stalls) first."""
    process = subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,  # its own group: the kill reaches every process it started
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while progress() < at_least:
            if process.poll() is not None:
                raise AssertionError(
                    f"Expected {command[2:4]} to be running at the kill, but it ended with exit "
                    f"{process.returncode}: {process.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"Expected progress within {timeout_s} s, but got none")
            time.sleep(0.05)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    return progress()


def group_is_gone(pid: int) -> bool:
    """Whether no process of ``pid``'s group is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False
