"""Flow: the nightly job, score newly arrived bin images and flag suspicious inventory."""

from __future__ import annotations

from prefect import flow, unmapped

from bincount.nightly.monitoring import DriftPolicy
from bincount.review.ranking import ReviewPolicy
from flows.ingest import ingest
from flows.naming import run_name
from tasks.monitoring import monitor_drift
from tasks.runtime import chunk_runner, output_lease
from tasks.scoring import (
    plan_image_scoring,
    publish_scoring_summary,
    rank_review_queue,
    resolve_scoring_sources,
    score_image_chunk,
)


@flow(name="score", flow_run_name=run_name("score"))
def score(
    source: str | None = None,
    output: str | None = None,
    prefix: str = "bin-images/",
    model: str = "champion",
    limit: int | None = None,
    review: ReviewPolicy = ReviewPolicy(),  # noqa: B008 (immutable: a frozen pydantic model)
    drift: DriftPolicy = DriftPolicy(),  # noqa: B008 (immutable: a frozen pydantic model)
    batch_size: int = 64,
    ingest_first: bool = True,
    device: str | None = None,
    dask: str | None = None,
) -> dict:
    """Score images not scored yet; queue the bins whose photo disagrees with their record;
    compare the night with the model's test set and recent nights (an event on drift)."""
    sources = resolve_scoring_sources(source, output)  # the given one, else the output's own
    if ingest_first:  # so that expected quantities of new bins are known
        for each in sources:
            ingest(source=each, output=output, dask=dask)
    # Planned under the lease: a plan made beside another run's would score its images again.
    with output_lease(output, "score"):
        plans = plan_image_scoring(sources, output, prefix, model, limit)
        chunks = [(plan.source, keys) for plan in plans for keys in plan.chunks]
        results = []
        if chunks:
            with chunk_runner(dask) as runner:
                results = runner.map(
                    score_image_chunk,
                    {
                        "source": [chunk_source for chunk_source, _ in chunks],
                        "output": unmapped(output),
                        "model_version": plans[0].model_version,
                        "keys": [keys for _, keys in chunks],
                        "batch_size": batch_size,
                        "device": unmapped(device),
                    },
                ).result()
        queue = rank_review_queue(output, review, results)
        monitored = monitor_drift(output, plans[0].model_version, review, drift)
        summary = publish_scoring_summary(output, plans, results, queue, monitored)
    return {**summary.as_dict(), "drift": monitored.event_payload() | {"drift": monitored.drift}}
