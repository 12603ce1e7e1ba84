"""Task: train a counting model, reporting every epoch to the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.config import TrainConfig
from bincount.manifest import load_manifest
from bincount.training import EpochMetrics, TrainResult, train_model
from tasks.runtime import current_run_id, resolve_output, timed_task


@timed_task("training_timeout_s", name="train-model", cache_policy=NO_CACHE)
def train_counting_model(
    output: str | None, manifest: str | None, config: TrainConfig, device: str | None = None
) -> TrainResult:
    """Train (resuming from the last checkpoint if a run was stopped) and register the model."""
    output_location = resolve_output(output)
    _, details = load_manifest(output_location, manifest)
    version = config.for_manifest(details).fingerprint(details["version"])
    logger = get_run_logger()

    def report(metrics: EpochMetrics, history: list[dict]) -> None:
        # The epoch's log line is the library's (bincount's logger, attached to the run's).
        create_table_artifact(  # one key: the artifact grows by a version every epoch
            key=f"training-{version}",
            table=[
                {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                for row in history
            ],
            description=f"Per-epoch loss, accuracy, RMSE, images/s and data wait of {version}",
        )

    result = train_model(
        output_location,
        config,
        manifest_version=details["version"],
        lineage={"run_id": current_run_id(), "manifest_source": details["source"]},
        on_epoch=report,
        device=device,
    )
    logger.info(
        "model %s: best epoch %d, val accuracy %.4f, RMSE %.4f",
        result.version,
        result.best_epoch,
        result.val_accuracy,
        result.val_rmse,
    )
    return result
