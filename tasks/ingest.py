"""Task: ingest new metadata objects."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.ingest import IngestSummary, ingest_metadata, read_key_list
from tasks.runtime import current_run_id, locations


@task(name="ingest-metadata", retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def ingest_new_metadata(
    source: str | None, output: str | None, limit: int | None, keys_from: str | None
) -> IngestSummary:
    """List, fetch and write every metadata object not ingested yet (safe to retry)."""
    settings, source_location, output_location = locations(source, output)
    keys = None
    if keys_from:
        with open(keys_from, encoding="utf-8") as handle:
            keys = read_key_list(handle.read())
    summary = ingest_metadata(
        source_location,
        output_location,
        limit=limit,
        keys=keys,
        concurrency=settings.max_concurrency,
        partitions=settings.list_partitions,
        chunk_size=settings.chunk_size,
        run_id=current_run_id(),
    )
    get_run_logger().info("ingest summary: %s", summary.as_dict())
    rows = "\n".join(f"| {name} | {value} |" for name, value in summary.as_dict().items())
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"# Ingest of {source_location.uri('metadata')}\n\n"
            f"Into `{output_location.uri()}`.\n\n| measure | value |\n|---|---|\n{rows}\n"
        ),
        description="Metadata objects listed, new, ingested and quarantined",
    )
    return summary
