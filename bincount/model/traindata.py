"""What a training run feeds its model: cached images, or a frozen trunk's outputs computed
once (``frozen_blocks`` with ``cache_trunk``), for training and for the validation that picks
the best epoch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bincount.images.shards import CachedSplit
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime
from bincount.model.inputs import BatchLoader, input_normalization
from bincount.model.networks import CountingModel
from bincount.model.prediction import predict_split
from bincount.model.trunk import (
    TopOfModel,
    TrunkBatches,
    compute_trunk_outputs,
    predict_trunk_outputs,
)

logger = logging.getLogger(__name__)


def training_batches(
    model: CountingModel, split: CachedSplit, config: TrainConfig, runtime: Runtime
) -> BatchLoader:
    """The training order of ``split``'s images: shuffled by the config's seed, augmented as it
    says, in batches of its size (the last, partial one dropped), this rank's share."""
    mean, std = input_normalization(model)
    return BatchLoader(
        split,
        batch_size=config.batch_size,
        shuffle=True,
        augment=config.augment,
        seed=config.seed,
        drop_last=True,
        rank=runtime.rank,
        world_size=runtime.world_size,
        device=runtime.device,
        mean=mean,
        std=std,
    )


@dataclass
class TrainingInputs:
    """The module the optimiser trains, its batches, and the validation split's logits."""

    trained: nn.Module
    train: BatchLoader | TrunkBatches
    validation_logits: Callable[[], torch.Tensor]  # (V, N, ...), the model as it is now

    @classmethod
    def of(
        cls,
        model: CountingModel,
        splits: dict[str, CachedSplit],
        config: TrainConfig,
        runtime: Runtime,
    ) -> TrainingInputs:
        order = training_batches(model, splits["train"], config, runtime)
        if not config.frozen_blocks or not config.cache_trunk:
            # A trunk run on every batch: its weights take no gradient (freeze_trunk), so the
            # backward pass stops at the first trained block.

            def images() -> torch.Tensor:
                return predict_split(
                    model,
                    splits["val"],
                    runtime=runtime,
                    batch_size=config.batch_size,
                    flips=config.test_time_flips,
                )[0]

            return cls(trained=model, train=order, validation_logits=images)

        blocks = config.frozen_blocks
        # Training mirrors the trunk's output (TrunkBatches); validation runs the trunk on
        # every view the model is served with (the test-time flips), as scoring will.
        with runtime.autocast():
            train = compute_trunk_outputs(
                model,
                splits["train"],
                frozen_blocks=blocks,
                flips=False,
                batch_size=config.batch_size,
                device=runtime.device,
            )
            val = compute_trunk_outputs(
                model,
                splits["val"],
                frozen_blocks=blocks,
                flips=config.test_time_flips,
                batch_size=config.batch_size,
                device=runtime.device,
            )
        logger.info(
            "frozen trunk (stem and %d blocks): outputs of %d training images and %d "
            "validation images x %d views kept, %.0f MB",
            blocks,
            len(train),
            len(val),
            val.features.shape[0],
            (train.nbytes + val.nbytes) / 1e6,
        )
        flips = {"count_preserving": "both", "hflip": "horizontal", "none": "none"}[config.augment]
        shift = 1 if config.augment == "count_preserving" else 0

        def from_trunk() -> torch.Tensor:
            return predict_trunk_outputs(
                model, val, frozen_blocks=blocks, batch_size=config.batch_size
            )

        return cls(
            trained=TopOfModel(model, blocks),
            train=TrunkBatches(train, order, flips=flips, shift=shift),
            validation_logits=from_trunk,
        )
