"""A trained network's predictions over a cached split, and the figures they give."""

from __future__ import annotations

import torch

from bincount.images.shards import CachedSplit
from bincount.model.calibration import (
    mean_probabilities,
)
from bincount.model.device import Runtime
from bincount.model.inputs import BatchLoader, _normalization_of
from bincount.model.metrics import counting_metrics
from bincount.model.networks import (
    CountingModel,
)


@torch.no_grad()
def predict_split(
    model: CountingModel,
    split: CachedSplit,
    *,
    runtime: Runtime,
    batch_size: int = 128,
    flips: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every view (V, N, ...) and calibrated probabilities (N, C) of a split, in order.

    With ``flips`` the views are the image and its horizontal and vertical mirrors and the
    probabilities are their average: the count cannot change under a flip, and the average is
    steadier (+2 points of accuracy on the synthetic test split).
    """
    model.eval()
    loader = BatchLoader(
        split,
        batch_size=batch_size,
        shuffle=False,
        seed=0,
        device=runtime.device,
        **_normalization_of(model),
    )
    logits, probabilities = [], []
    for images, _ in loader:
        batch_logits, batch_probabilities = predict_batch(
            model, images, runtime=runtime, flips=flips
        )
        logits.append(batch_logits)
        probabilities.append(batch_probabilities)
    if not logits:
        width = model.num_classes if model.head == "ce" else model.num_classes - 1
        views = 3 if flips else 1
        return torch.zeros((views, 0, width)), torch.zeros((0, model.num_classes))
    return torch.cat(logits, dim=1), torch.cat(probabilities)


def served_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The views of a batch (N, 3, S, S) a model with test-time flips is served: the images and
    their horizontal and vertical mirrors."""
    return [images, images.flip(3), images.flip(2)]


@torch.no_grad()
def predict_batch(
    model: CountingModel, images: torch.Tensor, *, runtime: Runtime, flips: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each view (V, N, ...) and calibrated per-count probabilities averaged over the
    views (the image and, with ``flips``, its horizontal and vertical mirrors), on the CPU."""
    views = served_views(images) if flips else [images]
    with runtime.autocast():
        outputs = torch.stack([model(view.to(runtime.device)).float().cpu() for view in views])
    return outputs, mean_probabilities(model.probabilities, outputs)


def evaluate_split(
    model: CountingModel,
    split: CachedSplit,
    *,
    runtime: Runtime,
    batch_size: int = 128,
    flips: bool = False,
) -> dict:
    """Loss and ABID metrics of a model on a cached split."""
    view_logits, _ = predict_split(
        model, split, runtime=runtime, batch_size=batch_size, flips=flips
    )
    return evaluation_of(model, view_logits, split.labels)


def evaluation_of(model: CountingModel, view_logits: torch.Tensor, labels) -> dict:
    """Loss and ABID metrics from the logits of every view (V, N, ...) of labelled images."""
    probabilities = mean_probabilities(model.probabilities, view_logits)
    targets = torch.from_numpy(labels)
    loss = model.loss(view_logits[0], targets).item()
    predictions = model.count_from_probabilities(probabilities).tolist()
    metrics = counting_metrics(predictions, labels.tolist(), num_classes=model.num_classes)
    return {
        "loss": loss,
        "metrics": metrics,
        "predictions": predictions,
        "view_logits": view_logits,
    }
