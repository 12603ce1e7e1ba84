"""Training input: batches read from the image cache, moved to the device, normalised as the
network expects and augmented there.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bincount.images.prefetch import Prefetched
from bincount.images.shards import CachedSplit
from bincount.model.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
)


# -- data --------------------------------------------------------------------------------------
class BatchLoader:
    """Batches of model input from a cached split, on the device: read ahead as uint8 in a
    background thread (into pinned memory when the device is CUDA), then copied without
    blocking and converted, augmented and normalised on the device, the whole batch at once.

    Augmentations cannot change the count: flips, and brightness and contrast jitter. No crop,
    since a crop can cut an item out of the frame. Every draw comes from a generator seeded by
    the loader's seed and epoch, so an epoch is the same again when resumed.

    On the CPU the conversion runs in the background thread too, beside the model; on a GPU it
    runs as kernels queued behind the copy, and the thread only reads.
    """

    def __init__(
        self,
        split: CachedSplit,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        augment: bool | str = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 3,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.split, self.batch_size, self.shuffle, self.augment = (
            split,
            batch_size,
            shuffle,
            _augment_choice(augment),
        )
        self.seed, self.rank, self.world_size, self.prefetch = seed, rank, world_size, prefetch
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        # Training drops a short last batch (batch norm cannot train on one image); the order
        # changes every epoch, so no image is left out for good.
        self.drop_last = drop_last and self._per_rank() >= batch_size
        self.epoch = 0
        self._prefetched: Prefetched | None = None

    def _per_rank(self) -> int:
        return math.ceil(len(self.split) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self._per_rank() // self.batch_size
        return math.ceil(self._per_rank() / self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's share of the epoch's order: the same for a seed and epoch, so resumable.

        A permutation of the whole split, not of shards: reads go straight to each image's
        place in its shard, so mixing the epoch fully costs no memory.
        """
        order = np.arange(len(self.split))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.split))
        per_rank = math.ceil(len(order) / self.world_size)
        padded = np.resize(order, per_rank * self.world_size)  # every rank gets as many steps
        return padded[self.rank :: self.world_size]

    def share_line(self) -> str:
        """This rank's share of the epoch, for the log of a distributed run: how many images in
        how many batches, and their ids' :func:`ids_fingerprint`, which the ranks' shares of an
        epoch add up to the split's when every image is trained on by exactly one rank."""
        ids = [self.split.image_ids[i] for i in self.indices()[: len(self) * self.batch_size]]
        return (
            f"rank {self.rank} of {self.world_size}, epoch {self.epoch + 1}: {len(ids)} of "
            f"{len(self.split)} training images in {len(self)} batches, ids fingerprint "
            f"{ids_fingerprint(ids)}"
        )

    def raw_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the epoch as uint8 images (N, S, S, 3) and counts, on the host
        (pinned when the device is CUDA)."""
        order = self.indices()
        pin = self.device.type == "cuda"
        size = self.split.size
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = order[start : start + self.batch_size]
            images = torch.empty((len(chosen), size, size, 3), dtype=torch.uint8, pin_memory=pin)
            self.split.read(chosen, out=images.numpy())
            counts = torch.from_numpy(self.split.labels[chosen])
            yield images, counts.pin_memory() if pin else counts

    def generator(self) -> torch.Generator | None:
        """The epoch's augmentation draws, on the device (None without augmentation)."""
        if self.augment == "none":
            return None
        seed = np.random.SeedSequence((self.seed, self.epoch, 1)).generate_state(1, np.uint64)
        return torch.Generator(device=self.device).manual_seed(int(seed[0]))

    def _on_device(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], augment: torch.Generator | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, counts in batches:
            yield (
                to_model_input(
                    images,
                    mean=self.mean,
                    std=self.std,
                    device=self.device,
                    augment=augment,
                    flips_only=self.augment == "hflip",
                ),
                counts.to(self.device, non_blocking=True),
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = self.generator()
        if self.device.type == "cpu":  # convert in the thread, overlapping the model
            self._prefetched = Prefetched(
                self._on_device(self.raw_batches(), augment),
                depth=self.prefetch,
                name="batch-prefetch",
            )
            return iter(self._prefetched)
        self._prefetched = Prefetched(self.raw_batches(), depth=self.prefetch, name="batch-read")
        return self._on_device(iter(self._prefetched), augment)

    @property
    def wait_seconds(self) -> float:
        """How long the last pass waited for batches."""
        return self._prefetched.wait_seconds if self._prefetched else 0.0


def ids_fingerprint(image_ids: Iterable[str]) -> str:
    """A fingerprint of image ids that ignores their order: the sum of each id's 64-bit BLAKE2b
    digest (big-endian) modulo 2**64, as 16 hex digits. Sums add, so the fingerprints of parts
    add up to the whole's: a rank's share is told apart from another's, and shares that hold
    each image of the split once sum to the split's fingerprint (but for a 2**-64 chance)."""
    total = sum(
        int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "big")
        for image_id in image_ids
    )
    return f"{total % 2**64:016x}"


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the model's backbone expects (ImageNet's unless it says)."""
    return (
        tuple(getattr(model, "input_mean", IMAGENET_MEAN)),
        tuple(getattr(model, "input_std", IMAGENET_STD)),
    )


def _normalization_of(model: nn.Module) -> dict[str, tuple[float, ...]]:
    mean, std = input_normalization(model)
    return {"mean": mean, "std": std}


def to_model_input(
    images: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    augment: torch.Generator | None = None,
    flips_only: bool = False,
) -> torch.Tensor:
    """uint8 images (N, S, S, 3) → the normalised float batch (N, 3, S, S) models take, on
    ``device`` (where the images are when None); the copy does not block from pinned memory.

    ``augment``: a generator on the same device to draw count-preserving augmentations from;
    with ``flips_only``, horizontal flips alone (the ABID baseline's augmentation).
    """
    batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[3] != 3:
        raise ValueError(
            f"Expected uint8 images (N, S, S, 3), but got {batch.dtype} {tuple(batch.shape)}"
        )
    if device is not None:
        batch = batch.to(device, non_blocking=True)
    # NHWC memory seen as NCHW: the float copy keeps that layout, which is channels_last.
    floats = batch.permute(0, 3, 1, 2).float().div_(255)
    if augment is not None:
        floats = augment_batch(floats, augment, flips_only=flips_only)
    shift, scale = _normalization_tensors(tuple(mean), tuple(std), floats.device)
    return floats.sub_(shift).div_(scale).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=16)
def _normalization_tensors(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) tensors on the device, made once: no small host copy before each batch."""
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1),
    )


def _augment_choice(augment: bool | str) -> str:
    if isinstance(augment, bool):  # the old switch: count-preserving augmentation or none
        return "count_preserving" if augment else "none"
    return augment


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, *, flips_only: bool = False
) -> torch.Tensor:
    """Random flips and per-image brightness/contrast of float images (N, 3, S, S) in [0, 1]:
    transformations that keep the count, drawn from ``generator`` on the images' device. With
    ``flips_only``, horizontal flips alone."""
    n = images.shape[0]
    draws = torch.rand((4, n, 1, 1, 1), generator=generator, device=images.device)
    images = torch.where(draws[0] < 0.5, images.flip(3), images)
    if flips_only:
        return images
    images = torch.where(draws[1] < 0.25, images.flip(2), images)
    brightness = 0.6 + 0.8 * draws[2]
    contrast = 0.7 + 0.6 * draws[3]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean * brightness).clamp_(0, 1)
