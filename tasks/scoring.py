"""Tasks: plan a scoring run, score one chunk of images, rank the night's review queue, publish
the run's summary."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.core.settings import get_settings
from bincount.core.sources import sources_to_list
from bincount.core.storage import Location
from bincount.model.registry import resolve_version
from bincount.nightly.monitoring import DriftCheck
from bincount.nightly.plan import ScoringPlan, combined_plan, plan_scoring, settle_score_pending
from bincount.nightly.scorer import Scorer, load_scorer
from bincount.nightly.scoring import REVIEW_LIST_SIZE, score_chunk
from bincount.nightly.summary import ChunkResult, ScoringSummary, summarize
from bincount.reports.scoring import scoring_markdown
from bincount.review.queue import NightQueue, measure_against_truth, queue_reviews
from bincount.review.ranking import ReviewPolicy
from tasks.runtime import (
    current_run_id,
    locations,
    resolve_output,
    timed_task,
)


@timed_task("step_timeout_s", name="scoring-sources", cache_policy=NO_CACHE)
def resolve_scoring_sources(source: str | None, output: str | None) -> list[str]:
    """The sources to list new images in: the one given, else every source of the output."""
    settings = get_settings()
    given = source or settings.given_source()
    fallback = Location.source(settings)
    found = sources_to_list(
        resolve_output(output),
        Location.source(settings, given).url if given else None,
        fallback.url,
    )
    get_run_logger().info("listing new images in %s", ", ".join(found))
    return found


@timed_task("step_timeout_s", name="plan-scoring", cache_policy=NO_CACHE)
def plan_image_scoring(
    sources: list[str], output: str | None, prefix: str, model: str, limit: int | None
) -> list[ScoringPlan]:
    """Pin the model (``champion`` resolved once), list each source's images, leave out those
    scored; ``limit`` counts over all sources."""
    settings, _, output_location = locations(None, output)
    model_version = resolve_version(output_location, model)
    plans = []
    for source in sources:
        left = None if limit is None else max(0, limit - sum(plan.new for plan in plans))
        plan = plan_scoring(
            Location.source(settings, source),
            output_location,
            model_version=model_version,
            prefix=prefix,
            limit=left,
            chunk_size=settings.chunk_size,
            partitions=settings.list_partitions,
        )
        get_run_logger().info(
            "model %s, %s: %d images listed, %d already scored, %d to score in %d chunks",
            plan.model_version,
            plan.source,
            plan.listed - plan.not_images,
            plan.already_scored,
            plan.new,
            len(plan.chunks),
        )
        plans.append(plan)
    return plans


@lru_cache(maxsize=2)
def _scorer(output: str | None, version: str, device: str | None) -> Scorer:
    # Loaded once per process (a Dask worker scores many chunks with the same model).
    return load_scorer(resolve_output(output), version, device=device)


@timed_task(
    "chunk_timeout_s",
    name="score-chunk",
    task_run_name="score chunk of {keys[0]}..",
    cache_policy=NO_CACHE,
)
def score_image_chunk(
    source: str | None,
    output: str | None,
    model_version: str,
    keys: list[str],
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
        batch_size=batch_size,
        concurrency=settings.max_concurrency,
        limits=settings.image_limits(),
        run_id=current_run_id(),
        fault_share=settings.read_fault_share,
    )
    get_run_logger().info(
        "part %s: %d scored, %d quarantined, %d pending, %d records judged (%.1f images/s)",
        result.part,
        result.scored,
        result.quarantined,
        result.pending,
        result.judged,
        (result.scored + result.quarantined) / result.seconds if result.seconds else 0.0,
    )
    return result


@timed_task("step_timeout_s", name="rank-review-queue", cache_policy=NO_CACHE)
def rank_review_queue(
    output: str | None, review: ReviewPolicy, results: list[ChunkResult]
) -> NightQueue:
    """Rank the night's scored bins by evidence against their records; publish the queue."""
    queue = queue_reviews(
        resolve_output(output),
        review,
        run_id=current_run_id(),
        run_parts={result.part_key for result in results},
        top=REVIEW_LIST_SIZE,
    )
    get_run_logger().info(
        "review queue %s: %d of %d judged bins flagged (budget %d, p_recorded <= %g)",
        queue.queue_id,
        queue.flagged,
        queue.judged,
        queue.budget,
        review.max_p_recorded,
    )
    return queue


@timed_task("step_timeout_s", name="scoring-summary", cache_policy=NO_CACHE)
def publish_scoring_summary(
    output: str | None,
    plans: list[ScoringPlan],
    results: list[ChunkResult],
    queue: NightQueue,
    drift: DriftCheck | None = None,
) -> ScoringSummary:
    """The run's figures, the night's predicted counts (beside the model's test set) and the
    top of its review queue with thumbnails, as the ``scoring-summary`` artifact."""
    settings, _, output_location = locations(None, output)
    settle_score_pending(output_location)
    plan = combined_plan(plans)
    seconds = (datetime.now(UTC) - plan.started_at).total_seconds()
    summary = summarize(
        plan,
        [Location.source(settings, each.source) for each in plans],
        output_location,
        results,
        queue,
        seconds,
        limits=settings.image_limits(),
    )
    get_run_logger().info(
        "scored %d images (%d quarantined): %d flagged for review, %.1f images/s",
        summary.scored,
        summary.quarantined,
        summary.needs_review,
        summary.images_per_second,
    )
    create_markdown_artifact(
        key="scoring-summary",
        markdown=scoring_markdown(summary, drift),
        description="Images scored and the top of the night's review queue, with photos",
    )
    return summary


@timed_task("step_timeout_s", name="queue-against-truth", cache_policy=NO_CACHE)
def measure_queue_against_truth(output: str | None, truth: str, image_ids: list[str]) -> dict:
    """Precision and recall of the queue over ``image_ids`` against a synthetic truth table."""
    measured = measure_against_truth(
        resolve_output(output), Location.output(get_settings(), truth), image_ids
    )
    get_run_logger().info(
        "queue against the truth: %d flagged, precision %.2f, recall %.2f (%.2f of records off "
        "by 2 or more)",
        measured.flagged,
        measured.precision,
        measured.recall,
        measured.recall_by_2_or_more,
    )
    return measured.to_dict()
