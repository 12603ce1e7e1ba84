"""Calibrated count probabilities: temperature scaling and how well they mean what they say.

A network trained with cross-entropy is usually over-confident. Temperature scaling (Guo et al.,
2017) divides its logits by one scalar T > 0 fitted on held-out data to minimise the negative
log-likelihood: the most probable count of a view never changes (a softmax's median can: it
reads the whole distribution), the probabilities do. For the review queue
that matters: "the model gives the recorded count a 2% chance" is only a reason to send a person
to the bin if, among bins given 2%, about 2% really hold that count.

Expected calibration error (ECE) is measured as usual on the top label: predictions are put in
``bins`` equal-width bins of confidence (the largest probability), and ECE is the mean over
predictions of ``|accuracy(bin) - confidence(bin)|``.

>>> import torch
>>> probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
>>> round(expected_calibration_error(probabilities, torch.tensor([0, 1, 1]), bins=10), 4)
0.3
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bincount.images.shards import CachedSplit
    from bincount.model.networks import CountingModel

logger = logging.getLogger(__name__)

# log T is searched over [-3, 3] (T from 0.05 to 20): a grid, then golden-section refinement.
_LOG_T_RANGE = (-3.0, 3.0)
_GRID = 61
_REFINE_STEPS = 40


def mean_probabilities(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    view_logits: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-count probabilities averaged over views (an image and its mirrors), shape (N, C),
    from logits of shape (V, N, ...) divided by ``temperature``."""
    return torch.stack([probabilities(view / temperature) for view in view_logits]).mean(0)


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log P(label), with probabilities floored at 1e-12."""
    chosen = probabilities[torch.arange(len(labels)), labels.long()]
    return float(-chosen.clamp_min(1e-12).log().mean())


def fit_temperature(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    view_logits: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """The temperature that minimises the NLL of the view-averaged probabilities of ``labels``."""
    if view_logits.ndim < 3 or view_logits.shape[1] != len(labels):
        raise ValueError(
            f"Expected view logits (V, N, ...) with N = {len(labels)} labels, but got shape "
            f"{tuple(view_logits.shape)}"
        )
    if not len(labels):
        raise ValueError("Expected labelled examples to fit a temperature, but got none")
    view_logits = view_logits.float()

    def loss(log_t: float) -> float:
        return negative_log_likelihood(
            mean_probabilities(probabilities, view_logits, math.exp(log_t)), labels
        )

    low, high = _LOG_T_RANGE
    grid = [low + (high - low) * i / (_GRID - 1) for i in range(_GRID)]
    best = min(range(_GRID), key=lambda i: loss(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, _GRID - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(_REFINE_STEPS):
        if loss_c < loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - ratio * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + ratio * (b - a)
            loss_d = loss(d)
    return math.exp((a + b) / 2)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of a reliability diagram."""

    low: float
    high: float
    n: int
    confidence: float
    accuracy: float


def reliability_table(
    probabilities: torch.Tensor, labels: torch.Tensor, *, bins: int = 10
) -> list[ReliabilityBin]:
    """Top-label confidence against accuracy in ``bins`` equal-width bins (empty bins kept,
    with NaN figures, so tables of two models line up)."""
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"Expected probabilities (N, C) for {len(labels)} labels, but got shape "
            f"{tuple(probabilities.shape)}"
        )
    confidence, predicted = probabilities.float().max(dim=1)
    return reliability_bins(confidence, predicted == labels.long(), bins=bins)


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, *, bins: int = 10
) -> list[ReliabilityBin]:
    """Any stated probability against how often its event happened (``correct``), in ``bins``
    equal-width bins of the probability (empty bins kept, with NaN figures): the top label's
    confidence, or the chance the model gives a bin's record against whether it is right."""
    if bins < 1:
        raise ValueError(f"Expected bins >= 1, but got {bins}")
    if confidence.ndim != 1 or confidence.shape != correct.shape:
        raise ValueError(
            f"Expected one outcome per probability, but got shapes {tuple(confidence.shape)} "
            f"and {tuple(correct.shape)}"
        )
    confidence, correct = confidence.float(), correct.float()
    # A confidence of exactly 1.0 belongs to the last bin.
    index = (confidence * bins).long().clamp(0, bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        table.append(
            ReliabilityBin(
                low=b / bins,
                high=(b + 1) / bins,
                n=n,
                confidence=float(confidence[inside].mean()) if n else math.nan,
                accuracy=float(correct[inside].mean()) if n else math.nan,
            )
        )
    return table


def reliability_error(table: Sequence[ReliabilityBin]) -> float:
    """The prediction-weighted mean gap between stated probability and outcome of a table."""
    total = sum(row.n for row in table)
    if not total:
        raise ValueError("Expected at least one prediction, but got none")
    return sum(row.n * abs(row.accuracy - row.confidence) for row in table if row.n) / total


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, *, bins: int = 15
) -> float:
    """Top-label ECE: the prediction-weighted mean gap between confidence and accuracy."""
    return reliability_error(reliability_table(probabilities, labels, bins=bins))


@dataclass(frozen=True)
class CalibrationReport:
    """A fitted temperature and what it did on the set it was measured on."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]


def calibration_report(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    view_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    *,
    bins: int = 10,
) -> CalibrationReport:
    """NLL, ECE and reliability tables of uncalibrated (T = 1) and calibrated probabilities."""
    before = mean_probabilities(probabilities, view_logits, 1.0)
    after = mean_probabilities(probabilities, view_logits, temperature)
    return CalibrationReport(
        temperature=temperature,
        n=len(labels),
        nll_before=negative_log_likelihood(before, labels),
        nll_after=negative_log_likelihood(after, labels),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        reliability_before=reliability_table(before, labels, bins=bins),
        reliability_after=reliability_table(after, labels, bins=bins),
    )


def calibrate(
    model: CountingModel, split: CachedSplit, view_logits: torch.Tensor
) -> CalibrationReport:
    """Fit the model's temperature on ``split`` (the validation split) and set it on the model,
    from the logits of its views (``TrainingInputs.validation_logits``, ``predict_split``).

    Fitted on the probabilities the model serves (averaged over the test-time flips when the
    config uses them), so what scoring reports is what was calibrated.
    """
    model.temperature.fill_(1.0)
    labels = torch.from_numpy(split.labels).long()
    raw = functools.partial(model.probabilities, calibrated=False)
    temperature = fit_temperature(raw, view_logits, labels)
    model.temperature.fill_(temperature)
    report = calibration_report(raw, view_logits, labels, temperature)
    logger.info(
        "calibrated on %d validation images: temperature %.3f, ECE %.3f -> %.3f, NLL %.3f -> %.3f",
        report.n,
        temperature,
        report.ece_before,
        report.ece_after,
        report.nll_before,
        report.nll_after,
    )
    return report
