"""A frozen trunk computed once: the ImageNet stem and first blocks of an EfficientNet-Lite,
run over every training image (and its mirrors) before the first epoch, so that an epoch runs
only the blocks above it, the ones that learn to count.

A model with ``frozen_blocks`` N keeps its stem and its first N blocks at the bundled ImageNet
weights, in evaluation mode (batch-norm statistics as loaded): their output for an image never
changes during training, so it is computed once per image and view and kept in memory as
float16. The saved model is the whole network; scoring runs it from the photo as any other.

What an epoch costs falls with the trunk: on 2 busy CPU cores (load 5-9) the top of a Lite0
with six frozen blocks (the last block and the head convolution) trained at 30-175 images/s at
224 px; the whole network does several times the work per image (by its layer sizes, not
timed). With ``cache_trunk`` false (the ``real`` recipe) only :func:`freeze_trunk` is used:
the trunk stays frozen but runs on every augmented batch, and the backward pass stops above it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bincount.core.progress import Progress
from bincount.images.shards import CachedSplit
from bincount.model.inputs import BatchLoader, input_normalization
from bincount.model.prediction import served_views

logger = logging.getLogger(__name__)


def blocks_of(model: nn.Module) -> nn.Sequential:
    """The backbone's stages (timm's EfficientNet ``blocks``), refusing a network without them."""
    blocks = getattr(model.backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model.backbone, "conv_stem"):
        raise ValueError(
            f"Expected a timm EfficientNet-style backbone (conv_stem, blocks) for frozen_blocks, "
            f"but got {model.arch}"
        )
    return blocks


def freeze_trunk(model: nn.Module, frozen_blocks: int) -> list[nn.Module]:
    """Freeze the stem and the first ``frozen_blocks`` stages of ``model``'s backbone: no
    gradient, batch norm as loaded. Returns the frozen modules, in order."""
    blocks = blocks_of(model)
    if not 0 < frozen_blocks < len(blocks):
        raise ValueError(
            f"Expected frozen_blocks within 1..{len(blocks) - 1} for {model.arch}, but got "
            f"{frozen_blocks}"
        )
    backbone = model.backbone
    trunk = [backbone.conv_stem, backbone.bn1, *blocks[:frozen_blocks]]
    for module in trunk:
        module.requires_grad_(False)
    model.frozen_modules = trunk
    model.train(model.training)
    return trunk


def run_trunk(model: nn.Module, images: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """The trunk's output for model-input images (N, 3, S, S)."""
    backbone = model.backbone
    features = backbone.bn1(backbone.conv_stem(images))
    for block in blocks_of(model)[:frozen_blocks]:
        features = block(features)
    return features


def run_top(model: nn.Module, features: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """The head's logits from the trunk's output: what ``model(images)`` computes after it."""
    backbone = model.backbone
    for block in blocks_of(model)[frozen_blocks:]:
        features = block(features)
    scores = backbone.forward_head(backbone.bn2(backbone.conv_head(features)))
    return model.head_logits(scores)


class TopOfModel(nn.Module):
    """The trained part of a model with a frozen trunk, as a module of its own (what the
    optimiser steps and DistributedDataParallel wraps)."""

    def __init__(self, model: nn.Module, frozen_blocks: int) -> None:
        super().__init__()
        self.model, self.frozen_blocks = model, frozen_blocks

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return run_top(self.model, features, self.frozen_blocks)


@dataclass
class TrunkOutputs:
    """The trunk's output for every image of a split and view: (views, N, C, H, W), float16."""

    features: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


@torch.no_grad()
def compute_trunk_outputs(
    model: nn.Module,
    split: CachedSplit,
    *,
    frozen_blocks: int,
    flips: bool,
    batch_size: int,
    device: torch.device,
) -> TrunkOutputs:
    """Run the frozen trunk once over a cached split: on each image, and with ``flips`` on each
    view a model with test-time flips is served (:func:`served_views`)."""
    mean, std = input_normalization(model)
    loader = BatchLoader(
        split, batch_size=batch_size, shuffle=False, seed=0, device=device, mean=mean, std=std
    )
    was_training = model.training
    model.eval()
    batches: list[list[torch.Tensor]] = []  # each batch's outputs, a tensor a view
    progress = Progress(logger, "frozen trunk's outputs, images", len(split))
    for images, _ in loader:
        views = served_views(images) if flips else [images]
        batches.append([run_trunk(model, view, frozen_blocks).half().cpu() for view in views])
        progress.advance(len(images))
    model.train(was_training)
    if not batches:
        raise ValueError("Expected images to run the trunk over, but the split is empty")
    features = torch.stack([torch.cat(view) for view in zip(*batches, strict=True)])
    return TrunkOutputs(features=features, labels=split.labels)


class TrunkBatches:
    """Training batches from the trunk's outputs, in the order of ``order`` (a
    :class:`BatchLoader` over the same split: its seeded, resumable permutation, this rank's
    share and batch count).

    Augmented as the loader augments images, on the trunk's output: mirrored as the images
    would be (horizontally half the time, vertically a quarter, as ``augment_batch``; a
    convolution of a mirrored image is close to the mirrored output, and computing the
    mirrors' outputs too would triple the trunk's cost) and moved by up to ``shift`` cells (a
    trunk cell is 16 px at 224: a shift that cannot change the count)."""

    wait_seconds = 0.0  # nothing is read: the batches are in memory

    def __init__(
        self, outputs: TrunkOutputs, order: BatchLoader, *, flips: str = "both", shift: int = 1
    ) -> None:
        if len(outputs) != len(order.split):
            raise ValueError(
                f"Expected the trunk's outputs of the {len(order.split)} images of the split, "
                f"but got {len(outputs)}"
            )
        self.outputs, self.order, self.flips, self.shift = outputs, order, flips, shift

    @property
    def epoch(self) -> int:
        return self.order.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.order.epoch = epoch

    def __len__(self) -> int:
        return len(self.order)

    def share_line(self) -> str:
        return self.order.share_line()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.order.batch_size
        chosen_all = self.order.indices()[: len(self) * size]
        rng = np.random.default_rng((self.order.seed, self.epoch, 2))
        mirror = rng.random((2, len(chosen_all))) < np.array([[0.5], [0.25]])
        mirror[1] &= self.flips == "both"
        mirror[0] &= self.flips != "none"
        moves = rng.integers(-self.shift, self.shift + 1, (len(self), 2))
        labels = torch.from_numpy(self.outputs.labels)
        device = self.order.device
        for step in range(len(self)):
            chosen = torch.from_numpy(chosen_all[step * size : (step + 1) * size])
            batch = self.outputs.features[0, chosen].float()
            for dim, flipped in ((3, mirror[0]), (2, mirror[1])):
                flipped = torch.from_numpy(flipped[step * size : (step + 1) * size])
                if flipped.any():
                    batch[flipped] = batch[flipped].flip(dim)
            dy, dx = (int(move) for move in moves[step])
            if dy or dx:
                batch = shifted(batch, dy, dx)
            yield (
                batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                labels[chosen].to(device),
            )


def shifted(features: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``features`` (N, C, H, W) moved by (dy, dx) cells, the uncovered border zero (what a
    convolution's padding sees), nothing wrapped round."""
    out = torch.zeros_like(features)
    height, width = features.shape[2:]
    out[:, :, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = features[
        :, :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


@torch.no_grad()
def predict_trunk_outputs(
    model: nn.Module, outputs: TrunkOutputs, *, frozen_blocks: int, batch_size: int
) -> torch.Tensor:
    """Logits of every view (V, N, ...) from the trunk's outputs: what
    :func:`bincount.model.prediction.predict_split` gives for the same images and flips."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    views = []
    for view in outputs.features:
        chunks = [
            run_top(model, view[start : start + batch_size].float().to(device), frozen_blocks)
            .float()
            .cpu()
            for start in range(0, len(outputs), batch_size)
        ]
        views.append(torch.cat(chunks))
    model.train(was_training)
    return torch.stack(views)
