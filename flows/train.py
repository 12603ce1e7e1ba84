"""Flow: train a counting model on a manifest (decode the images once, then train)."""

from __future__ import annotations

from prefect import flow

from bincount.model.config import TrainConfig
from flows.naming import run_name
from tasks.images import cache_manifest_images
from tasks.runtime import output_lease
from tasks.training import train_counting_model


@flow(name="train", flow_run_name=run_name("train"))
def train(
    output: str | None = None,
    manifest: str | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (immutable: a frozen pydantic model)
    device: str | None = None,
) -> dict:
    """Cache the manifest's images at the training size, then train and register a model."""
    config = config.for_device(device)  # no recipe given: the device's; saved with the model
    cache_manifest_images(output, manifest, config.image_size)
    with output_lease(output, "register"):  # its checkpoints, then its model version
        result = train_counting_model(output, manifest, config, device)
    return result.__dict__
