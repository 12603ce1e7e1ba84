"""Synthetic pretraining (``TrainConfig.synthetic_bins``): a few epochs on rendered bins before
the real labels.

A bin rendered by :mod:`bincount.synth` holds exactly the items its label says, so the network
first learns to count on bins whose labels are never wrong, then the real photos teach it what
real bins look like. The rendered photos are squashed to the training size as the image cache
squashes real ones (never cropped) and held in memory as JPEG bytes, decoded batch by batch:
8,000 bins at 160 px take about 0.08 GB so, against 0.6 GB decoded. Nothing is written to the
output. Each model renders the same bins (a seed of their own, not the model's), so the members
of an ensemble differ only as their training does, and the last bins rendered are kept for the
next model of the process: the second member of an ensemble does not render them again.

With ``TrainConfig.synthetic_mix`` the rendered bins stay in the real epochs too: a share of
every real batch (:class:`MixedBatches`), so the exact labels keep pulling while the real
photos, whose records are sometimes wrong, are learned.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bincount.images.decode import decode_image
from bincount.images.shards import CachedSplit
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime
from bincount.model.inputs import BatchLoader
from bincount.model.networks import CountingModel
from bincount.model.optim import Schedule, TrainState, build_optimizer, train_epoch
from bincount.model.traindata import training_batches

logger = logging.getLogger(__name__)

# The synthetic bucket's seed for pretraining: fixed, so every model sees the same bins.
SYNTHETIC_SEED = 20_261_207
_CHUNK = 64
_QUALITY = 95  # of the JPEG (colour kept whole) a rendered photo is held as, once squashed


@dataclass
class EncodedSplit(CachedSplit):
    """A split whose images are held in memory as JPEG bytes at the split's size, decoded when
    read, rather than in shards."""

    photos: tuple[bytes, ...] = ()

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        for row, index in enumerate(indices):
            out[row] = decode_image(self.photos[index], self.size)
        return out


def synthetic_split(
    *, bins: int, size: int, max_count: int, seed: int = SYNTHETIC_SEED, workers: int | None = None
) -> EncodedSplit:
    """``bins`` synthetic bins (counts 0..``max_count`` as real bins are distributed), their
    photos squashed to ``size`` px, rendered by ``workers`` processes (default: every core);
    the same arguments again (workers too) get the bins already rendered."""
    if bins < 1:
        raise ValueError(f"Expected at least 1 synthetic bin, but got {bins}")
    photos, labels = _rendered(bins, size, max_count, seed, workers)
    return EncodedSplit(
        labels=labels,
        image_ids=[f"synthetic-{seed}-{ordinal}" for ordinal in range(bins)],
        shards=np.zeros(bins, np.int64),
        offsets=np.arange(bins, dtype=np.int64),
        size=size,
        photos=photos,
    )


@functools.lru_cache(maxsize=1)  # the last bins rendered: the next member of an ensemble's
def _rendered(
    bins: int, size: int, max_count: int, seed: int, workers: int | None
) -> tuple[tuple[bytes, ...], np.ndarray]:
    started = time.perf_counter()
    chunks = [range(start, min(start + _CHUNK, bins)) for start in range(0, bins, _CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    args = [(seed, chunk.start, chunk.stop, max_count, size) for chunk in chunks]
    if workers == 1:
        parts = list(map(_render, *zip(*args, strict=True)))
    else:
        # spawn, not fork: training may hold threads (Prefect, torch's pools).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = list(pool.map(_render, *zip(*args, strict=True)))
    photos = tuple(photo for chunk_photos, _ in parts for photo in chunk_photos)
    labels = np.concatenate([chunk_labels for _, chunk_labels in parts])
    labels.flags.writeable = False  # shared by every split made of these bins
    logger.info(
        "synthetic pretraining: %d bins rendered at %d px in %.0f s, %.0f MB held (counts %s)",
        bins,
        size,
        time.perf_counter() - started,
        sum(map(len, photos)) / 1e6,
        np.bincount(labels, minlength=max_count + 1).tolist(),
    )
    return photos, labels


def _render(
    seed: int, first: int, stop: int, max_count: int, size: int
) -> tuple[list[bytes], np.ndarray]:
    from bincount.synth import bin_id, make_bin

    photos = []
    labels = np.empty(stop - first, np.int64)
    for row, ordinal in enumerate(range(first, stop)):
        record, jpeg, _ = make_bin(
            seed=seed, ordinal=ordinal, bin_id=bin_id(ordinal), max_count=max_count
        )
        squashed = io.BytesIO()
        Image.fromarray(decode_image(jpeg, size)).save(
            squashed, "JPEG", quality=_QUALITY, subsampling=0
        )
        photos.append(squashed.getvalue())
        labels[row] = record.count
    return photos, labels


def _model_s_synthetic_bins(model: CountingModel, config: TrainConfig) -> EncodedSplit:
    """The synthetic bins ``model`` trains on under ``config``, its synthetic epochs and its
    mixed batches alike: one set, rendered once (``synthetic_split`` keeps the last)."""
    from bincount.synth import MAX_COUNT_LIMIT

    max_count = min(model.max_count, MAX_COUNT_LIMIT)  # counts the head has, and synth draws
    return synthetic_split(bins=config.synthetic_bins, size=config.image_size, max_count=max_count)


class MixedBatches:
    """Real batches, each with a fixed share of synthetic bins after it (``synthetic_mix``):
    the real bins' order as their own loader gives it (``epoch``, ``share_line``), and the
    synthetic bins drawn afresh every epoch, in an order of their own that the pretraining
    epochs never used, so a resumed epoch is the same again."""

    def __init__(self, real: BatchLoader, synthetic: BatchLoader) -> None:
        self.real, self.synthetic = real, synthetic

    @property
    def epoch(self) -> int:
        return self.real.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.real.epoch = epoch

    def __len__(self) -> int:
        return len(self.real)

    def share_line(self) -> str:
        return self.real.share_line()

    @property
    def wait_seconds(self) -> float:
        return self.real.wait_seconds + self.synthetic.wait_seconds

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with contextlib.closing(self._synthetic_batches()) as synthetic:
            for images, counts in self.real:
                more_images, more_counts = next(synthetic)
                yield torch.cat([images, more_images]), torch.cat([counts, more_counts])

    def _synthetic_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for cycle in itertools.count():  # a real epoch longer than the synthetic bins go round
            self.synthetic.epoch = (self.epoch + 1) * 1000 + cycle  # pretraining's: 0, 1, ...
            yield from self.synthetic


def mixed_batches(
    model: CountingModel, real: CachedSplit, config: TrainConfig, runtime: Runtime
) -> MixedBatches:
    """The real epochs' batches with ``config.synthetic_mix`` of each one synthetic bins, the
    same bins the synthetic epochs train on (rendered once), augmented as the real ones."""
    synthetic_share = round(config.batch_size * config.synthetic_mix)
    bins = _model_s_synthetic_bins(model, config)
    real_loader = training_batches(
        model,
        real,
        config.model_copy(update={"batch_size": config.batch_size - synthetic_share}),
        runtime,
    )
    synthetic_loader = training_batches(
        model, bins, config.model_copy(update={"batch_size": synthetic_share}), runtime
    )
    return MixedBatches(real_loader, synthetic_loader)


def pretrain_on_synthetic(
    model: CountingModel, config: TrainConfig, runtime: Runtime, *, real_steps: int
) -> dict:
    """Train ``model`` for ``config.synthetic_epochs`` on ``config.synthetic_bins`` rendered
    bins with an optimiser and schedule of their own (warmup, cosine to zero; no label
    smoothing: these labels are exact); what it did, for the model's lineage.

    With ``config.max_minutes`` the synthetic epochs take their share of it: their steps'
    share of theirs and the ``real_steps`` to follow (the same network, the same photo size:
    a step costs the same), their schedule following that budget as a run's follows its own,
    so a slow machine shortens both and the model keeps within its budget."""
    split = _model_s_synthetic_bins(model, config)
    loader = training_batches(model, split, config, runtime)
    steps = config.synthetic_epochs * len(loader)
    minutes = config.max_minutes and config.max_minutes * steps / (steps + real_steps)
    schedule_config = config.model_copy(
        update={"epochs": config.synthetic_epochs, "max_minutes": minutes, "schedule": "cosine"}
    )
    optimizer = build_optimizer(model, schedule_config)
    schedule, state = Schedule(schedule_config, steps_per_epoch=len(loader)), TrainState()
    losses = []
    for epoch in range(config.synthetic_epochs):
        if schedule.out_of_time(state.train_seconds):
            logger.info("synthetic pretraining: its %.1f minutes spent", minutes)
            break
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
        "budget_minutes": round(minutes, 2) if minutes else None,
    }


def real_epochs_budget(config: TrainConfig, synthetic: dict | None) -> TrainConfig:
    """``config`` with the minutes its synthetic epochs (``synthetic``, what
    :func:`pretrain_on_synthetic` did) left of ``max_minutes``: the real epochs' budget."""
    if not config.max_minutes or not synthetic:
        return config
    spent = synthetic["seconds"] / 60
    return config.model_copy(update={"max_minutes": max(config.max_minutes - spent, 0.01)})
