"""Tasks: one tuning trial, and the study's record."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.data.manifest import load_manifest
from bincount.model.config import TrainConfig
from bincount.model.training import train_model
from bincount.model.tuning import best_trial, trial_row, write_trials
from tasks.runtime import current_run_id, resolve_output, timed_task


@timed_task(
    "training_timeout_s", name="tuning-trial", task_run_name="trial {trial}", cache_policy=NO_CACHE
)
def run_trial(
    output: str | None, manifest: str, study: str, trial: int, config: TrainConfig
) -> dict:
    """Train one configuration; a failed trial is recorded with its error, not raised."""
    output_location = resolve_output(output)
    _, details = load_manifest(output_location, manifest)
    try:
        result = train_model(
            output_location,
            config,
            manifest_version=details.version,
            lineage={"run_id": current_run_id(), "study": study, "trial": trial},
        )
    except (ValueError, RuntimeError) as error:  # e.g. a size the architecture cannot take
        get_run_logger().warning("trial %d failed: %s", trial, error)
        return trial_row(study, trial, config, None, f"{type(error).__name__}: {error}")
    return trial_row(study, trial, config, result.__dict__, None)


@timed_task("step_timeout_s", name="record-study", cache_policy=NO_CACHE)
def record_study(output: str | None, study: str, rows: list[dict]) -> dict:
    """Write every trial to the tuning table, publish them, and return the best."""
    key = write_trials(resolve_output(output), study, rows)
    create_table_artifact(
        key=f"tuning-{study}",
        table=[{k: v for k, v in row.items() if k != "recorded_at"} for row in rows],
        description=f"Every trial of study {study} (stored at {key})",
    )
    return best_trial(rows)
