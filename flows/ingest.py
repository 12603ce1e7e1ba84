"""Flow: ingest new ABID metadata objects from the bucket into Parquet tables."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from tasks.ingest import ingest_new_metadata


@flow(name="ingest", flow_run_name=run_name("ingest"))
def ingest(
    source: str | None = None,
    output: str | None = None,
    limit: int | None = None,
    keys_from: str | None = None,
) -> dict:
    """Ingest metadata objects not ingested yet into bins, items and quarantine."""
    summary = ingest_new_metadata(source, output, limit, keys_from)
    return summary.as_dict()
