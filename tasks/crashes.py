"""A run that stopped renewing its lease was killed (SIGKILL, a lost machine, the OOM killer).
A worker marks the runs it started Crashed when their process dies; a run started any other way
(``bincount`` on the command line, a script) has no one watching it, and Prefect would show it
Running forever. The run that takes its lease over marks it Crashed, saying why."""

from __future__ import annotations

import uuid

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from bincount.core.lease import Holder, LeaseRecord


def report_crashed_holder(expired: LeaseRecord | None, successor: Holder, uri: str) -> None:
    """After a takeover: mark the holder of the lease taken over Crashed, if it expired."""
    if expired is None or expired.released:
        return
    try:
        mark_expired_holder_crashed(expired, successor, uri)
    except Exception:  # bookkeeping about another, dead run: tonight's run goes on without it
        get_run_logger().warning(
            "could not mark %s Crashed", expired.holder.describe(), exc_info=True
        )


def mark_expired_holder_crashed(expired: LeaseRecord, successor: Holder, uri: str) -> bool:
    """Set the flow run that held ``expired`` (not released: it stopped renewing) to Crashed
    when the API still shows it Running. True when it was marked."""
    if expired.released:
        return False  # it let the lease go: it ended on its own and said how
    try:
        run_id = uuid.UUID(expired.holder.run_id)
    except ValueError:
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:  # a run outside Prefect, or one on another server
            return False
        if run.state is None or not run.state.is_running():
            return False  # already final (a worker saw its process die), or never started
        message = (
            f"Crashed: its {expired.stage} lease on {uri} expired at {expired.expires_at} "
            f"without renewal ({expired.holder.describe()} stopped: killed or lost); taken "
            f"over by {successor.describe()}"
        )
        result = client.set_flow_run_state(run_id, Crashed(message=message))
    get_run_logger().warning(
        "marked flow run %r (%s) %s: %s",
        run.name,
        run_id,
        "Crashed" if result.status.value == "ACCEPT" else f"not Crashed ({result.status.value})",
        message,
    )
    return result.status.value == "ACCEPT"
