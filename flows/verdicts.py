"""Flow: record verdicts reached outside the UI (a CSV or JSON file) as review outcomes."""

from __future__ import annotations

from prefect import flow

from bincount.review.outcomes import VIA_FILE
from flows.naming import run_name
from tasks.review import read_file_verdicts, record_review_verdicts


@flow(name="record-verdicts", flow_run_name=run_name("record-verdicts"))
def record_verdicts(verdicts: str, output: str | None = None, reviewer: str | None = None) -> dict:
    """Record a file of verdicts (bin, counted; empty when the record is right) once each."""
    decided = read_file_verdicts(output, verdicts, reviewer)
    recorded = record_review_verdicts(output, decided, VIA_FILE)
    return recorded.as_dict()
