"""Flow: the data half of the pipeline, ingest → validate → manifest."""

from __future__ import annotations

from prefect import flow

from bincount.data.manifest import DEFAULT_POLICY
from flows.ingest import ingest
from flows.manifest import manifest
from flows.naming import run_name
from flows.validate import validate


@flow(name="data-pipeline", flow_run_name=run_name("data-pipeline"))
def data_pipeline(
    source: str | None = None,
    output: str | None = None,
    limit: int | None = None,
    keys_from: str | None = None,
    policy: str = DEFAULT_POLICY,
    benchmark_split: str | None = None,
    dask: str | None = None,
) -> dict:
    """Ingest new metadata, validate the labels, and build the manifest."""
    ingested = ingest(source=source, output=output, limit=limit, keys_from=keys_from, dask=dask)
    validated = validate(source=source, output=output)
    built = manifest(source=source, output=output, policy=policy, benchmark_split=benchmark_split)
    return {"ingest": ingested, "validate": validated, "manifest": built}
