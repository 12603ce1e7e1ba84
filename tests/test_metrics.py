"""ABID metrics against hand-computed cases and a reference implementation of the challenge's
``counting/evaluate.py`` (per-class accumulators, as it computes them)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bincount.model.metrics import counting_metrics, majority_baseline


def reference_evaluate(predictions, targets, num_classes):
    """The challenge's evaluate.py, restated: accumulate per ground-truth class."""
    correct = np.zeros(num_classes)
    distance = np.zeros(num_classes)
    count = np.zeros(num_classes)
    for predicted, target in zip(predictions, targets, strict=True):
        correct[target] += int(predicted == target)
        distance[target] += (predicted - target) ** 2
        count[target] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return (
            correct.sum() / count.sum(),
            math.sqrt(distance.sum() / count.sum()),
            correct / count,
            np.sqrt(distance / count),
        )


def test_hand_computed_case():
    metrics = counting_metrics([0, 1, 3, 2, 5], [0, 1, 2, 2, 4], num_classes=6)
    assert metrics.accuracy == pytest.approx(3 / 5)
    assert metrics.rmse == pytest.approx(math.sqrt((1 + 1) / 5))
    assert metrics.per_class_accuracy[:5] == [
        1.0,
        1.0,
        0.5,
        pytest.approx(math.nan, nan_ok=True),
        0.0,
    ]
    assert metrics.per_class_rmse[2] == pytest.approx(math.sqrt(1 / 2))
    assert metrics.per_class_n == [1, 1, 2, 0, 1, 0]
    assert metrics.confusion[2] == [0, 0, 1, 1, 0, 0]
    assert metrics.confusion[4][5] == 1


@pytest.mark.parametrize("seed", range(8))
def test_matches_the_reference_implementation(seed):
    rng = random.Random(seed)
    targets = [rng.randint(0, 5) for _ in range(rng.randint(1, 300))]
    predictions = [min(5, max(0, t + rng.choice((-2, -1, 0, 0, 0, 1, 3)))) for t in targets]
    metrics = counting_metrics(predictions, targets, num_classes=6)
    accuracy, rmse, per_class_accuracy, per_class_rmse = reference_evaluate(predictions, targets, 6)
    assert metrics.accuracy == pytest.approx(accuracy)
    assert metrics.rmse == pytest.approx(rmse)
    np.testing.assert_allclose(metrics.per_class_accuracy, per_class_accuracy, equal_nan=True)
    np.testing.assert_allclose(metrics.per_class_rmse, per_class_rmse, equal_nan=True)
    assert sum(map(sum, metrics.confusion)) == len(targets)


def test_majority_baseline_predicts_the_most_frequent_training_count():
    metrics = majority_baseline([3, 3, 2, 1], [3, 2, 4], num_classes=6)
    assert metrics.accuracy == pytest.approx(1 / 3)
    assert metrics.rmse == pytest.approx(math.sqrt(2 / 3))


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="Expected as many predictions as targets"):
        counting_metrics([1], [1, 2], num_classes=3)
    with pytest.raises(ValueError, match=r"Expected targets in 0\.\.2"):
        counting_metrics([1], [3], num_classes=3)
