"""Flow: see what was kept out (quarantine) or waits (pending), and replay a reason or stage."""

from __future__ import annotations

from prefect import flow

from bincount.core.replay import QuarantineView
from flows.naming import run_name
from tasks.quarantine import publish_quarantine_view, replay_leases, replay_quarantined


@flow(name="quarantine", flow_run_name=run_name("quarantine"))
def quarantine(
    output: str | None = None,
    replay_reason: str | None = None,
    replay_stage: str | None = None,
) -> dict:
    """List the quarantined and pending objects by stage and reason with counts, and the
    replays; with a reason or a stage to replay, make those quarantined objects pending again
    first, so the next run of their stage reads them again."""
    replayed = None
    if replay_reason is not None or replay_stage is not None:
        with replay_leases(output, replay_stage):
            replayed = replay_quarantined(output, replay_stage, replay_reason)
    view = publish_quarantine_view(output)
    return {"replayed": replayed.as_dict() if replayed else None, **view.as_dict()}


def quarantine_text(result: dict) -> str:
    """The ``bincount quarantine`` result as a table to read (the flow returns the data)."""
    view = QuarantineView(groups=result["groups"], replays=result["replays"])
    replayed = result["replayed"]
    if replayed is None:
        return view.to_text()
    done = ", ".join(
        f"{r['stage']}/{r['reason_code']}: {r['objects']}" for r in replayed["by_stage_and_reason"]
    )
    head = f"replayed {replayed['objects']} objects ({done}): pending, read by the next run"
    return f"{head}\n\n{view.to_text()}"
