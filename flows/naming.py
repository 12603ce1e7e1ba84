"""Run names shown in the Prefect UI, built from a run's parameters when it starts."""

from __future__ import annotations

from collections.abc import Callable

from prefect.runtime import flow_run


def run_name(step: str) -> Callable[[], str]:
    """``ingest <output> 2026-11-21T0300``: what ran, into where, when."""

    def name() -> str:
        output = flow_run.parameters.get("output") or "default output"
        started = flow_run.scheduled_start_time
        stamp = started.strftime("%Y-%m-%dT%H%M") if started else ""
        return f"{step} {output} {stamp}".strip()

    return name
