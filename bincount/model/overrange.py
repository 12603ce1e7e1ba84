"""Bins above the top count as a class training learns and the served model drops.

With ``TrainConfig.over_range_class`` a model of counts 0..K trains on the manifest's
``open:K`` companion (``bincount.data.overrange``): its head has one more class, K+1, "more
than K", for the bins recorded with more items, so those photos teach the network too (what
a full bin looks like, and that it is not a 5). Everything that judges the model reads it as
it will be served, over 0..K alone: validation (which picks the best epoch) and calibration
see only the bins within range, with the class K+1 masked out of the logits, and the
registered model drops that class (:func:`close_top`), so its probabilities are the open
model's renormalised over 0..K. Softmax heads only: CORAL's thresholds have no class to drop.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from bincount.images.shards import CachedSplit
from bincount.model.networks import CountingModel

_MASKED = -1e9  # a logit whose probability is 0 (exp underflows) without -inf's NaN gradients


def within_range(split: CachedSplit, max_count: int) -> CachedSplit:
    """The images of ``split`` labelled 0..``max_count``, read from the same shards."""
    keep = split.labels <= max_count
    return replace(
        split,
        labels=split.labels[keep],
        image_ids=[i for i, kept in zip(split.image_ids, keep, strict=True) if kept],
        shards=split.shards[keep],
        offsets=split.offsets[keep],
    )


def mask_top(view_logits: torch.Tensor) -> torch.Tensor:
    """Logits (V, N, K+2) of an open model read as the served one: class K+1 impossible."""
    masked = view_logits.clone()
    masked[..., -1] = _MASKED
    return masked


@torch.no_grad()
def close_top(model: CountingModel) -> CountingModel:
    """Drop class K+1 from an open softmax model, in place: a model of counts 0..K."""
    if model.head != "ce" or not model.open_top:
        raise ValueError(
            f"Expected an open-top softmax model to close, but got head {model.head!r}, "
            f"open_top {model.open_top}"
        )
    classifier = model.classifier()
    if not isinstance(classifier, nn.Linear) or classifier.out_features != model.num_classes:
        raise ValueError(f"Expected a linear classifier of {model.num_classes} counts")
    kept = model.max_count + 1
    classifier.weight = nn.Parameter(classifier.weight[:kept].clone())
    if classifier.bias is not None:
        classifier.bias = nn.Parameter(classifier.bias[:kept].clone())
    classifier.out_features = kept
    model.open_top = False
    return model
