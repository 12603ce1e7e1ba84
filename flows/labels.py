"""Flow: the daily data refresh, ingest new metadata objects and validate the labels."""

from __future__ import annotations

from prefect import flow

from flows.ingest import ingest
from flows.naming import run_name
from flows.validate import validate


@flow(name="refresh-labels", flow_run_name=run_name("refresh-labels"))
def refresh_labels(
    source: str | None = None, output: str | None = None, dask: str | None = None
) -> dict:
    """Ingest metadata not ingested yet, then check every current label against the contract."""
    ingested = ingest(source=source, output=output, dask=dask)
    validated = validate(source=source, output=output)
    return {"ingest": ingested, "validate": validated}
