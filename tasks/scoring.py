"""Tasks: plan a scoring run, score one chunk of images, publish the run's summary."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.registry import resolve_version
from bincount.scoring import (
    ChunkResult,
    Scorer,
    ScoringPlan,
    ScoringSummary,
    load_scorer,
    plan_scoring,
    score_chunk,
    summarize,
)
from tasks.runtime import current_run_id, locations, resolve_output


@task(name="plan-scoring", retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def plan_image_scoring(
    source: str | None, output: str | None, prefix: str, model: str, limit: int | None
) -> ScoringPlan:
    """Pin the model (``champion`` resolved once), list the images, leave out those scored."""
    settings, source_location, output_location = locations(source, output)
    plan = plan_scoring(
        source_location,
        output_location,
        model_version=resolve_version(output_location, model),
        prefix=prefix,
        limit=limit,
        chunk_size=settings.chunk_size,
        partitions=settings.list_partitions,
    )
    get_run_logger().info(
        "model %s: %d images listed, %d already scored, %d to score in %d chunks",
        plan.model_version,
        plan.listed - plan.not_images,
        plan.already_scored,
        plan.new,
        len(plan.chunks),
    )
    return plan


@lru_cache(maxsize=2)
def _scorer(output: str | None, version: str, device: str | None) -> Scorer:
    # Loaded once per process (a Dask worker scores many chunks with the same model).
    return load_scorer(resolve_output(output), version, device=device)


@task(
    name="score-chunk",
    task_run_name="score chunk of {keys[0]}..",
    retries=2,
    retry_delay_seconds=[10, 60],
    cache_policy=NO_CACHE,
)
def score_image_chunk(
    source: str | None,
    output: str | None,
    model_version: str,
    keys: list[str],
    min_confidence: float,
    batch_size: int,
    device: str | None,
) -> ChunkResult:
    """Score one chunk of images and commit its scores part (a retry rewrites the same part)."""
    settings, source_location, output_location = locations(source, output)
    result = score_chunk(
        source_location,
        output_location,
        _scorer(output, model_version, device),
        keys,
        min_confidence=min_confidence,
        batch_size=batch_size,
        concurrency=settings.max_concurrency,
        limits=settings.image_limits(),
        run_id=current_run_id(),
    )
    get_run_logger().info(
        "part %s: %d scored, %d quarantined, %d need review (%.1f images/s)",
        result.part,
        result.scored,
        result.quarantined,
        result.needs_review,
        (result.scored + result.quarantined) / result.seconds if result.seconds else 0.0,
    )
    return result


@task(name="scoring-summary", cache_policy=NO_CACHE)
def publish_scoring_summary(
    output: str | None, plan: ScoringPlan, results: list[ChunkResult]
) -> ScoringSummary:
    """The run's figures and the top of the review list, as the ``scoring-summary`` artifact."""
    seconds = (datetime.now(UTC) - plan.started_at).total_seconds()
    summary = summarize(plan, resolve_output(output), results, seconds)
    get_run_logger().info(
        "scored %d images (%d quarantined): %d discrepancies, %d need review, %.1f images/s",
        summary.scored,
        summary.quarantined,
        summary.discrepancies,
        summary.needs_review,
        summary.images_per_second,
    )
    create_markdown_artifact(
        key="scoring-summary",
        markdown=summary.to_markdown(),
        description="Images scored, discrepancies, review list with links to the images",
    )
    return summary
