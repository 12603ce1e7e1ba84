"""A run whose process died without reporting its end stays Running in the Prefect API: a worker
reports the runs it started when their process dies, but a run started any other way
(``bincount`` on the command line, a script) has nobody watching it, and Prefect has no
heartbeat for it. Two ways it happens, both found by the next run that takes its lease:

* it was killed (SIGKILL, a lost machine, the OOM killer): it stopped renewing its lease,
  which expired;
* the Prefect API was unreachable when it ended (a server down for longer than the client's
  retries): it released its lease, but could not say how it ended, and its process is gone.

The run that takes the lease over marks such a run Crashed, saying why."""

from __future__ import annotations

import socket
import uuid

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from bincount.core.lease import Holder, LeaseRecord, process_alive


def report_crashed_holder(previous: LeaseRecord | None, successor: Holder, uri: str) -> None:
    """After taking a lease: mark the run that held it before Crashed, if it died unreported."""
    if previous is None or previous.holder.run_id == successor.run_id:
        return
    why = _why_gone(previous, uri)
    if why is None:
        return
    try:
        mark_crashed(previous, why, successor)
    except Exception:  # bookkeeping about another, dead run: tonight's run goes on without it
        get_run_logger().warning(
            "could not mark %s Crashed", previous.holder.describe(), exc_info=True
        )


def _why_gone(previous: LeaseRecord, uri: str) -> str | None:
    """Why ``previous``'s holder is known to have ended, or None when it may still run."""
    on = f"its {previous.stage} lease on {uri}"
    if not previous.released:  # taken over, so expired: it stopped renewing
        return (
            f"{on} expired at {previous.expires_at} without renewal "
            f"({previous.holder.describe()} stopped: killed or lost)"
        )
    # Released: it ended on its own, or a later stage of the same run goes on. Only where its
    # process can be seen to be gone does the API's "Running" say it could not report its end.
    if previous.holder.host == socket.gethostname() and not process_alive(previous.holder.pid):
        return (
            f"{on} was released at {previous.renewed_at} and its process is gone "
            f"({previous.holder.describe()}), but it never reported its end: the Prefect API "
            "was unreachable when it ended"
        )
    return None


def mark_crashed(previous: LeaseRecord, why: str, successor: Holder) -> bool:
    """Set the flow run that held ``previous`` Crashed when the API still shows it Running.
    True when it was marked."""
    try:
        run_id = uuid.UUID(previous.holder.run_id)
    except ValueError:
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:  # a run outside Prefect, or one on another server
            return False
        if run.state is None or not run.state.is_running():
            return False  # already final (a worker saw its process die), or never started
        message = f"{why[0].upper()}{why[1:]}; noticed by {successor.describe()}"
        result = client.set_flow_run_state(run_id, Crashed(message=message))
    accepted = result.status.value == "ACCEPT"
    get_run_logger().warning(
        "marked flow run %r (%s) %s: %s",
        run.name,
        run_id,
        "Crashed" if accepted else f"not Crashed ({result.status.value})",
        message,
    )
    return accepted
