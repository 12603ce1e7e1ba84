"""Flow: the nightly job, score newly arrived bin images and flag suspicious inventory."""

from __future__ import annotations

from prefect import flow, unmapped

from flows.ingest import ingest
from flows.naming import run_name
from tasks.runtime import chunk_runner
from tasks.scoring import plan_image_scoring, publish_scoring_summary, score_image_chunk


@flow(name="score", flow_run_name=run_name("score"))
def score(
    source: str | None = None,
    output: str | None = None,
    prefix: str = "bin-images/",
    model: str = "champion",
    limit: int | None = None,
    min_confidence: float = 0.5,
    batch_size: int = 64,
    ingest_first: bool = True,
    device: str | None = None,
    dask: str | None = None,
) -> dict:
    """Score images not scored yet; flag bins whose count disagrees with EXPECTED_QUANTITY."""
    if ingest_first:  # so that expected quantities of new bins are known
        ingest(source=source, output=output, dask=dask)
    plan = plan_image_scoring(source, output, prefix, model, limit)
    results = []
    if plan.chunks:
        with chunk_runner(dask) as runner:
            results = runner.map(
                score_image_chunk,
                {
                    "source": unmapped(source),
                    "output": unmapped(output),
                    "model_version": plan.model_version,
                    "keys": plan.chunks,
                    "min_confidence": min_confidence,
                    "batch_size": batch_size,
                    "device": unmapped(device),
                },
            ).result()
    summary = publish_scoring_summary(output, plan, results)
    return summary.as_dict()
