"""Synthetic pretraining (``TrainConfig.synthetic_bins``): a few epochs on rendered bins before
the real labels.

A bin rendered by :mod:`bincount.synth` holds exactly the items its label says, so the network
first learns to count on bins whose labels are never wrong, then the real photos teach it what
real bins look like. The rendered photos are decoded at the training size as the image cache
decodes real ones (squashed, never cropped) and kept in memory for the few epochs they are
needed; nothing is written to the output. Each model renders the same bins (a seed of their
own, not the model's), so the members of an ensemble differ only as their training does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from bincount.images.decode import decode_image
from bincount.images.shards import CachedSplit
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime
from bincount.model.networks import CountingModel
from bincount.model.optim import Schedule, TrainState, build_optimizer, train_epoch
from bincount.model.traindata import training_batches

logger = logging.getLogger(__name__)

# The synthetic bucket's seed for pretraining: fixed, so every model sees the same bins.
SYNTHETIC_SEED = 20_261_207
_CHUNK = 64


@dataclass
class InMemorySplit(CachedSplit):
    """A split whose images are held in one uint8 array (N, S, S, 3) rather than in shards."""

    images: np.ndarray | None = None

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            return self.images[indices]  # fancy indexing copies already
        np.take(self.images, indices, axis=0, out=out)
        return out


def synthetic_split(
    *, bins: int, size: int, max_count: int, seed: int = SYNTHETIC_SEED, workers: int | None = None
) -> InMemorySplit:
    """``bins`` synthetic bins (counts 0..``max_count`` as real bins are distributed), their
    photos decoded to ``size`` px, rendered by ``workers`` processes (default: every core)."""
    if bins < 1:
        raise ValueError(f"Expected at least 1 synthetic bin, but got {bins}")
    started = time.perf_counter()
    chunks = [range(start, min(start + _CHUNK, bins)) for start in range(0, bins, _CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    args = [(seed, chunk.start, chunk.stop, max_count, size) for chunk in chunks]
    images = np.empty((bins, size, size, 3), np.uint8)  # filled chunk by chunk: held once
    labels = np.empty(bins, np.int64)
    if workers == 1:
        parts = map(_render, *zip(*args, strict=True))
        _fill(images, labels, chunks, parts)
    else:
        # spawn, not fork: training may hold threads (Prefect, torch's pools).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            _fill(images, labels, chunks, pool.map(_render, *zip(*args, strict=True)))
    logger.info(
        "synthetic pretraining: %d bins rendered at %d px in %.0f s (counts %s)",
        bins,
        size,
        time.perf_counter() - started,
        np.bincount(labels, minlength=max_count + 1).tolist(),
    )
    return InMemorySplit(
        labels=labels,
        image_ids=[f"synthetic-{seed}-{ordinal}" for ordinal in range(bins)],
        shards=np.zeros(bins, np.int64),
        offsets=np.arange(bins, dtype=np.int64),
        size=size,
        images=images,
    )


def _fill(images: np.ndarray, labels: np.ndarray, chunks: list[range], parts) -> None:
    for chunk, (chunk_images, chunk_labels) in zip(chunks, parts, strict=True):
        images[chunk.start : chunk.stop] = chunk_images
        labels[chunk.start : chunk.stop] = chunk_labels


def _render(
    seed: int, first: int, stop: int, max_count: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    from bincount.synth import bin_id, make_bin

    images = np.empty((stop - first, size, size, 3), np.uint8)
    labels = np.empty(stop - first, np.int64)
    for row, ordinal in enumerate(range(first, stop)):
        record, jpeg, _ = make_bin(
            seed=seed, ordinal=ordinal, bin_id=bin_id(ordinal), max_count=max_count
        )
        images[row] = decode_image(jpeg, size)
        labels[row] = record.count
    return images, labels


def pretrain_on_synthetic(model: CountingModel, config: TrainConfig, runtime: Runtime) -> dict:
    """Train ``model`` for ``config.synthetic_epochs`` on ``config.synthetic_bins`` rendered
    bins with an optimiser and schedule of their own (warmup, cosine to zero; no label
    smoothing: these labels are exact); what it did, for the model's lineage."""
    from bincount.synth import MAX_COUNT_LIMIT

    max_count = min(model.max_count, MAX_COUNT_LIMIT)  # counts the head has, and synth draws
    split = synthetic_split(bins=config.synthetic_bins, size=config.image_size, max_count=max_count)
    loader = training_batches(model, split, config, runtime)
    schedule_config = config.model_copy(
        update={"epochs": config.synthetic_epochs, "max_minutes": None, "schedule": "cosine"}
    )
    optimizer = build_optimizer(model, schedule_config)
    schedule, state = Schedule(schedule_config, steps_per_epoch=len(loader)), TrainState()
    losses = []
    for epoch in range(config.synthetic_epochs):
        loader.epoch = epoch
        loss, _, _ = train_epoch(model, model, loader, optimizer, schedule, state, runtime)
        state.epoch += 1
        losses.append(round(loss, 4))
        logger.info(
            "synthetic pretraining epoch %d/%d: train loss %.4f",
            epoch + 1,
            config.synthetic_epochs,
            loss,
        )
    return {
        "bins": config.synthetic_bins,
        "epochs": config.synthetic_epochs,
        "seed": SYNTHETIC_SEED,
        "train_loss": losses,
        "seconds": round(state.train_seconds, 1),
    }
