"""Flow: ingest new ABID metadata objects from the bucket into Parquet tables."""

from __future__ import annotations

from prefect import flow, unmapped

from flows.naming import run_name
from tasks.ingest import ingest_metadata_chunk, plan_metadata_ingest, publish_ingest_summary
from tasks.runtime import chunk_runner, output_lease


@flow(name="ingest", flow_run_name=run_name("ingest"))
def ingest(
    source: str | None = None,
    output: str | None = None,
    limit: int | None = None,
    keys_from: str | None = None,
    dask: str | None = None,
) -> dict:
    """Ingest metadata objects not ingested yet into bins, items and quarantine."""
    with output_lease(output, "ingest"):  # planned under it: no object ingested twice
        plan = plan_metadata_ingest(source, output, limit, keys_from)
        outcomes = []
        if plan.chunks:
            with chunk_runner(dask) as runner:
                outcomes = runner.map(
                    ingest_metadata_chunk,
                    {
                        "source": unmapped(source),
                        "output": unmapped(output),
                        "objects": plan.chunks,
                    },
                ).result()
        summary = publish_ingest_summary(source, output, plan, outcomes)
    return summary.as_dict()
