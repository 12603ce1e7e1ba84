"""What every task needs from the orchestrator: the run id and the resolved locations."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prefect import Task, get_run_logger
from prefect.runtime import flow_run, task_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bincount.core.lease import Holder, Lease, LeaseHeartbeat, LeaseRecord, LeaseTerms
from bincount.core.settings import Settings, get_settings
from bincount.core.storage import Location
from tasks.crashes import report_crashed_holder

# Chunks run in worker threads, processes or Dask workers, where Prefect's own timeout cannot
# interrupt a blocking read: tasks timed by this setting carry their own watchdog instead.
WATCHDOG_SETTING = "chunk_timeout_s"

# The library logs through "bincount" (epoch lines, progress, calibration). Prefect attaches its
# handlers to the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS but not a level, so without
# this the library's INFO lines never reach a run's log.
if logging.getLogger("bincount").level == logging.NOTSET:
    logging.getLogger("bincount").setLevel(logging.INFO)


class ChunkTimedOut(TimeoutError):
    """A chunk ran past ``chunk_timeout_s``: it was abandoned before its commit."""


class SettingsTimeoutTask(Task):
    """A task whose timeout is a setting read each time a run of it starts (never at import),
    so an operator tunes it with ``BINCOUNT_<NAME>`` or the command's ``--<name>`` option."""

    def __init__(self, fn: Callable, *, timeout_setting: str, **options: Any) -> None:
        if timeout_setting not in Settings.model_fields:
            raise ValueError(f"Expected a timeout setting, but got {timeout_setting!r}")
        self.timeout_setting = timeout_setting
        if timeout_setting == WATCHDOG_SETTING:
            fn = with_watchdog(fn, timeout_setting)
        super().__init__(fn, **options)

    @property
    def limit_s(self) -> float:
        """The timeout that holds for a run starting now, by Prefect or by the watchdog."""
        return float(getattr(get_settings(), self.timeout_setting))

    @property
    def timeout_seconds(self) -> float | None:
        if self.timeout_setting == WATCHDOG_SETTING:
            return None  # the watchdog holds it (Prefect's would only warn, in a worker thread)
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


def with_watchdog(fn: Callable, timeout_setting: str) -> Callable:
    """``fn`` run in a daemon thread that the caller stops waiting for after the setting's
    seconds, raising :class:`ChunkTimedOut` naming the task run, in whatever runs the task.

    The abandoned thread is left to the storage layer's read timeouts (``read_timeout_s``); it
    cannot hold the process open (a daemon), and it commits nothing the next run would not:
    a chunk's parts are named by its content.
    """

    @functools.wraps(fn)
    def watched(*args: Any, **kwargs: Any) -> Any:
        limit = float(getattr(get_settings(), timeout_setting))
        outcome: dict[str, Any] = {}
        context = contextvars.copy_context()  # the run's context: its logger, its run id

        def body() -> None:
            try:
                outcome["value"] = context.run(fn, *args, **kwargs)
            except BaseException as error:  # handed to the caller as it was
                outcome["error"] = error

        thread = threading.Thread(target=body, name=f"watched-{fn.__name__}", daemon=True)
        thread.start()
        thread.join(limit)
        if thread.is_alive():
            raise ChunkTimedOut(
                f"Expected chunk {task_run.name or fn.__name__!r} to finish within "
                f"{timeout_setting}={limit:g} s, but it was still running: abandoned before its "
                "commit, so the next run does it again"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return watched


@contextlib.contextmanager
def output_lease(output: str | None, stage: str) -> Iterator[LeaseRecord]:
    """Hold ``stage``'s lease on the output for a ``with`` block (the flow's writing stage):
    wait up to ``lease_wait_s`` for another run's, renew it while the block runs."""
    settings = get_settings()
    location = Location.output(settings, output)
    holder = Holder(
        run_id=str(flow_run.id or uuid.uuid4()),
        run_name=flow_run.name or "a run outside Prefect",
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    terms = LeaseTerms(
        ttl_s=settings.lease_ttl_s,
        wait_s=settings.lease_wait_s,
        poll_s=min(5.0, settings.lease_ttl_s / 4),
    )
    lease = Lease(location, stage, holder, terms)
    with LeaseHeartbeat(lease) as record:
        report_crashed_holder(lease.outnumbered(), holder, location.uri())
        get_run_logger().info(
            "holding the %s lease on %s (generation %d, renewed every %.0f s)",
            stage,
            location.uri(),
            record.generation,
            terms.ttl_s / 3,
        )
        yield record


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
