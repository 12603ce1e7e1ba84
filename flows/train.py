"""Flow: train a counting model on a manifest (decode the images once, then train)."""

from __future__ import annotations

from prefect import flow

from bincount.config import TrainConfig
from flows.naming import run_name
from tasks.images import cache_manifest_images
from tasks.training import train_counting_model


@flow(name="train", flow_run_name=run_name("train"))
def train(
    output: str | None = None,
    manifest: str | None = None,
    arch: str = "resnet18",
    loss: str = "ce",
    max_count: int | None = None,
    image_size: int = 128,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_minutes: float | None = None,
    patience: int = 8,
    seed: int = 0,
    weights: str | None = None,
    device: str | None = None,
) -> dict:
    """Cache the manifest's images at the training size, then train and register a model."""
    config = TrainConfig(
        arch=arch,
        loss=loss,
        max_count=max_count,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_minutes=max_minutes,
        patience=patience,
        seed=seed,
        weights=weights,
    )
    cache_manifest_images(output, manifest, image_size)
    result = train_counting_model(output, manifest, config, device)
    return result.__dict__
