"""Task: train a counting model, reporting every epoch to the Prefect UI."""

from __future__ import annotations

from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from bincount.data.manifest import load_manifest
from bincount.model.config import TrainConfig
from bincount.model.optim import EpochMetrics
from bincount.model.training import TrainResult, train_model
from bincount.reports.training import training_markdown
from tasks.runtime import current_run_id, resolve_output, timed_task


@timed_task("training_timeout_s", name="train-model", cache_policy=NO_CACHE)
def train_counting_model(
    output: str | None, manifest: str | None, config: TrainConfig, device: str | None = None
) -> TrainResult:
    """Train (resuming from the last checkpoint if a run was stopped) and register the model."""
    output_location = resolve_output(output)
    _, details = load_manifest(output_location, manifest)
    version = config.for_manifest(details).fingerprint(details.version)
    logger = get_run_logger()
    artifact: list[UUID] = []  # the run's one training artifact, redrawn in place every epoch

    def report(metrics: EpochMetrics, history: list[dict]) -> None:
        # The epoch's log line is the library's (bincount's logger, attached to the run's).
        markdown = training_markdown(version, history, epochs=config.epochs)
        if not artifact:
            artifact.append(
                create_markdown_artifact(
                    key=f"training-{version}",
                    markdown=markdown,
                    description=f"Loss, validation accuracy and RMSE per epoch of {version}",
                )
            )
        else:
            with get_client(sync_client=True) as client:
                client.update_artifact(artifact[0], ArtifactUpdate(data=markdown))

    result = train_model(
        output_location,
        config,
        manifest_version=details.version,
        lineage={"run_id": current_run_id(), "manifest_source": details.source},
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
