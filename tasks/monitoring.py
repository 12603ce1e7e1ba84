"""Task: compare a scoring run with the model's test set and recent nights; alert on drift."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from bincount.model.registry import model_folder
from bincount.nightly.inputdrift import keep_input_reference
from bincount.nightly.monitoring import DRIFT_EVENT, DriftCheck, DriftPolicy, monitor_night
from bincount.reports.drift import drift_markdown
from bincount.review.ranking import ReviewPolicy
from tasks.runtime import current_run_id, resolve_output, timed_task


@timed_task("step_timeout_s", name="monitor-drift", cache_policy=NO_CACHE)
def monitor_drift(
    output: str | None, model_version: str, review: ReviewPolicy, policy: DriftPolicy
) -> DriftCheck:
    """Write the night's monitoring row, chart the trend, and emit an event past a threshold."""
    output_location = resolve_output(output)
    check = monitor_night(
        output_location,
        run_id=current_run_id(),
        model_version=model_version,
        review=review,
        policy=policy,
    )
    logger = get_run_logger()
    create_markdown_artifact(
        key="drift-monitoring",
        markdown=drift_markdown(check, policy),
        description="Tonight's predictions against the model's test set and recent nights",
    )
    if check.drift:
        scored_by = output_location.uri(model_folder(model_version))  # the output and the model
        logger.warning("drift detected: %s", "; ".join(check.reasons))
        emit_event(
            event=DRIFT_EVENT,
            resource={
                "prefect.resource.id": f"bincount.output.{scored_by}",
                "prefect.resource.name": output_location.uri(),
                "bincount.model_version": model_version,
            },
            related=[
                {
                    "prefect.resource.id": f"bincount.model.{model_version}",
                    "prefect.resource.role": "model",
                }
            ],
            payload=check.event_payload(),
        )
    else:
        logger.info(
            "no drift: PSI %s against the test set, %s against recent nights",
            _figure(check.row["psi_reference"]),
            _figure(check.row["psi_recent"]),
        )
    return check


@timed_task("long_timeout_s", name="keep-input-reference", cache_policy=NO_CACHE)
def keep_model_input_reference(output: str | None, model_version: str, evaluation_set: str) -> int:
    """Compute (once) the image statistics of the model's evaluation photos, kept with it."""
    reference = keep_input_reference(resolve_output(output), model_version, evaluation_set)
    get_run_logger().info(
        "input reference of %s: %d images of set %s",
        model_version,
        reference.num_rows,
        evaluation_set,
    )
    return reference.num_rows


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
