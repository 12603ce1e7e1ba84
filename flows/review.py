"""Flow: show the night's review queue to an operator, wait for the verdicts, record them."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from tasks.review import prepare_review_sheet, record_review_verdicts, wait_for_verdicts
from tasks.runtime import output_lease


@flow(name="review", flow_run_name=run_name("review"))
def review(
    output: str | None = None,
    queued_date: str | None = None,
    top: int = 10,
    reviewer: str | None = None,
    wait_minutes: float = 60.0,
) -> dict:
    """Show the queue's top unreviewed bins with photos; pause for an operator's verdicts."""
    sheet = prepare_review_sheet(output, queued_date, top)
    if not sheet.entries:
        return {"shown": 0, "written": 0}
    decided = wait_for_verdicts(output, sheet, reviewer, wait_minutes)  # the run pauses here
    with output_lease(output, "review"):  # only the writing: the wait above may take an hour
        recorded = record_review_verdicts(output, decided)
    return {"shown": len(sheet.entries), **recorded.as_dict()}
