"""Counting metrics exactly as the ABID challenge's ``counting/evaluate.py`` defines them.

For predictions ``p`` and ground truth ``g`` over counts ``0..K``:

* accuracy = mean(p == g); RMSE = sqrt(mean((p - g)^2));
* per-class accuracy and per-class RMSE are the same over the bins whose *ground truth* is
  that class (a class with no bins gives NaN, as the challenge's division by zero does).

>>> m = counting_metrics([0, 1, 2, 2], [0, 1, 1, 2], num_classes=3)
>>> m.accuracy, round(m.rmse, 4)
(0.75, 0.5)
>>> m.per_class_accuracy
[1.0, 0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The ABID ResNet-34 baseline on the moderate validation set (counts 0-5), from the challenge.
ABID_BASELINE = {
    "name": "ABID challenge ResNet-34 (moderate, counts 0-5)",
    "accuracy": 0.5567,
    "rmse": 0.930,
    "per_class_accuracy": [0.977, 0.834, 0.672, 0.549, 0.426, 0.449],
    "per_class_rmse": [0.187, 0.542, 0.710, 0.867, 1.025, 1.311],
}


@dataclass(frozen=True)
class CountingMetrics:
    """ABID metrics plus the confusion matrix (rows: truth, columns: prediction)."""

    n: int
    accuracy: float
    rmse: float
    per_class_accuracy: list[float]
    per_class_rmse: list[float]
    per_class_n: list[int]
    confusion: list[list[int]]


def counting_metrics(
    predictions: Sequence[int], targets: Sequence[int], *, num_classes: int
) -> CountingMetrics:
    """The challenge's metrics for integer count predictions against integer targets."""
    if len(predictions) != len(targets):
        raise ValueError(
            f"Expected as many predictions as targets, but got {len(predictions)} "
            f"and {len(targets)}"
        )
    if not targets:
        raise ValueError("Expected at least one target, but got none")
    if num_classes < 1:
        raise ValueError(f"Expected num_classes >= 1, but got {num_classes}")
    correct = [0] * num_classes
    squared = [0.0] * num_classes
    counts = [0] * num_classes
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for predicted, target in zip(predictions, targets, strict=True):
        predicted, target = int(predicted), int(target)
        if not 0 <= target < num_classes:
            raise ValueError(f"Expected targets in 0..{num_classes - 1}, but got {target}")
        correct[target] += predicted == target
        squared[target] += (predicted - target) ** 2
        counts[target] += 1
        confusion[target][min(max(predicted, 0), num_classes - 1)] += 1
    n = sum(counts)
    return CountingMetrics(
        n=n,
        accuracy=sum(correct) / n,
        rmse=math.sqrt(sum(squared) / n),
        per_class_accuracy=[c / k if k else math.nan for c, k in zip(correct, counts, strict=True)],
        per_class_rmse=[
            math.sqrt(s / k) if k else math.nan for s, k in zip(squared, counts, strict=True)
        ],
        per_class_n=counts,
        confusion=confusion,
    )


def majority_baseline(
    train_targets: Sequence[int], targets: Sequence[int], *, num_classes: int
) -> CountingMetrics:
    """What always predicting the most frequent training count scores on ``targets``."""
    if not train_targets:
        raise ValueError("Expected training targets to find the majority class, but got none")
    majority = max(range(num_classes), key=lambda c: (list(train_targets).count(c), -c))
    return counting_metrics([majority] * len(targets), targets, num_classes=num_classes)
