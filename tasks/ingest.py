"""Tasks: plan an ingestion, ingest one chunk, publish the run's summary."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.data.ingest import (
    ChunkOutcome,
    IngestPlan,
    IngestSummary,
    ingest_chunk,
    plan_ingest,
    read_key_list,
    settle_ingest_pending,
    summarize_ingest,
)
from bincount.reports.ingest import ingest_markdown
from tasks.runtime import current_run_id, locations, timed_task


@timed_task("step_timeout_s", name="plan-ingest", cache_policy=NO_CACHE)
def plan_metadata_ingest(
    source: str | None, output: str | None, limit: int | None, keys_from: str | None
) -> IngestPlan:
    """List the metadata objects and cut those not ingested yet into chunks."""
    settings, source_location, output_location = locations(source, output)
    keys = None
    if keys_from:
        with open(keys_from, encoding="utf-8") as handle:
            keys = read_key_list(handle.read())
    plan = plan_ingest(
        source_location,
        output_location,
        limit=limit,
        keys=keys,
        partitions=settings.list_partitions,
        chunk_size=settings.chunk_size,
    )
    get_run_logger().info(
        "%d listed, %d already ingested, %d to ingest in %d chunks",
        plan.listed,
        plan.already_ingested,
        plan.new,
        len(plan.chunks),
    )
    return plan


@timed_task(
    "chunk_timeout_s",
    name="ingest-chunk",
    task_run_name="ingest chunk of {objects.num_rows}",
    cache_policy=NO_CACHE,
)
def ingest_metadata_chunk(
    source: str | None, output: str | None, objects: pa.Table
) -> ChunkOutcome:
    """Fetch, parse and commit one chunk (a retry rewrites the same parts)."""
    settings, source_location, output_location = locations(source, output)
    started = time.perf_counter()
    outcome = ingest_chunk(
        source_location,
        output_location,
        objects,
        concurrency=settings.max_concurrency,
        limits=settings.metadata_limits(),
        run_id=current_run_id(),
        fault_share=settings.read_fault_share,
    )
    seconds = time.perf_counter() - started
    get_run_logger().info(
        "part %s: %d ingested, %d quarantined, %d pending (%.0f objects/s)",
        outcome.part,
        outcome.ingested,
        outcome.quarantined,
        outcome.pending,
        objects.num_rows / seconds if seconds else 0.0,
    )
    return outcome


@timed_task("step_timeout_s", name="ingest-summary", cache_policy=NO_CACHE)
def publish_ingest_summary(
    source: str | None, output: str | None, plan: IngestPlan, outcomes: list[ChunkOutcome]
) -> IngestSummary:
    """The run's figures, in the log and as the ``ingest-summary`` artifact."""
    _, source_location, output_location = locations(source, output)
    seconds = (datetime.now(UTC) - plan.started_at).total_seconds()
    settle_ingest_pending(output_location)
    summary = summarize_ingest(plan, outcomes, run_id=current_run_id(), seconds=seconds)
    get_run_logger().info("ingest summary: %s", summary.as_dict())
    create_markdown_artifact(
        key="ingest-summary",
        markdown=ingest_markdown(
            summary, source=source_location.uri("metadata"), output=output_location.uri()
        ),
        description="Metadata objects listed, new, ingested and quarantined",
    )
    return summary
