"""What every task needs from the orchestrator: the run id and the resolved locations."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bincount.core.settings import Settings, get_settings
from bincount.core.storage import Location

# The library logs through "bincount" (epoch lines, progress, calibration). Prefect attaches its
# handlers to the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS but not a level, so without
# this the library's INFO lines never reach a run's log.
if logging.getLogger("bincount").level == logging.NOTSET:
    logging.getLogger("bincount").setLevel(logging.INFO)


class SettingsTimeoutTask(Task):
    """A task whose timeout is a setting read each time a run of it starts (never at import),
    so an operator tunes it with ``BINCOUNT_<NAME>`` or the command's ``--<name>`` option."""

    def __init__(self, fn: Callable, *, timeout_setting: str, **options: Any) -> None:
        if timeout_setting not in Settings.model_fields:
            raise ValueError(f"Expected a timeout setting, but got {timeout_setting!r}")
        self.timeout_setting = timeout_setting
        super().__init__(fn, **options)

    @property
    def timeout_seconds(self) -> float:
        return float(getattr(get_settings(), self.timeout_setting))

    @timeout_seconds.setter
    def timeout_seconds(self, value: float | None) -> None:
        if value is not None:  # Task.__init__ sets None when no timeout is given
            raise TypeError("Expected the timeout from the settings, but got timeout_seconds")


def timed_task(timeout: str, **options: Any) -> Callable[[Callable], SettingsTimeoutTask]:
    """``@task(**options)`` that times out after the setting ``timeout`` (``step_timeout_s``,
    ``chunk_timeout_s``, ``long_timeout_s`` or ``training_timeout_s``).

    Every task times out: a hung run of a flow allowed one run at a time (the nightly score)
    would block every later one. Tasks do not retry: the storage layer below them retries
    transient faults (``bincount/core/storage.py``), so a retry here would repeat every attempt
    there, and a programming error would run three times before it failed.
    """

    def decorate(fn: Callable) -> SettingsTimeoutTask:
        return SettingsTimeoutTask(fn, timeout_setting=timeout, **options)

    return decorate


def current_run_id() -> str:
    """The Prefect flow run id, so every row written can be traced to its run in the UI."""
    return str(flow_run.id or uuid.uuid4())


def locations(source: str | None, output: str | None) -> tuple[Settings, Location, Location]:
    """Settings plus the source and output locations, with flow parameters taking precedence."""
    settings = get_settings()
    return settings, Location.source(settings, source), Location.output(settings, output)


def resolve_output(output: str | None) -> Location:
    """The output location alone, for steps that do not read the source bucket."""
    return Location.output(get_settings(), output)


def chunk_runner(dask: str | None) -> TaskRunner:
    """Where a flow's chunks run: one at a time in this process, or across a Dask cluster.

    ``dask`` is a scheduler address (``tcp://host:8786``), ``local`` (a local cluster of two
    worker processes) or ``local:N``. Workers report to the same Prefect API as the flow, so
    point ``PREFECT_API_URL`` at a real server when using one.
    """
    if not dask:
        # The chunks of one run share this machine's cores (and the model its accelerator).
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if dask == "local" or dask.startswith("local:"):
        workers = int(dask.partition(":")[2] or 2)
        if workers < 1:
            raise ValueError(f"Expected local:N with N >= 1, but got {dask!r}")
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    if "://" not in dask:
        raise ValueError(
            f"Expected a Dask scheduler address (tcp://host:8786) or local[:N], but got {dask!r}"
        )
    return DaskTaskRunner(address=dask)
