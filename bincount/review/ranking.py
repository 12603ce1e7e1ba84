"""The review queue: which bins a person should look at tonight, ranked by evidence.

A bin deserves a look when the photo disagrees with its record. The model does not say "the
count is 4"; it says how likely each count is. The evidence against a record is how unlikely the
model finds the *recorded* count, ``p_recorded = P(count = EXPECTED_QUANTITY | photo)``, with
calibrated probabilities (``bincount.model.calibration``), so that a threshold reads plainly:
"flag a bin when the model gives its record at most a 10% chance".

* A model with an open top class ("more than K") agrees with any record above K when it sees
  more than K items: a bin recorded at 12 and seen as "6 or more" is not evidence of anything.
  A model without one cannot judge such a record: ``p_recorded`` is null and it is not ranked.
* ``discrepancy_score = -log10(p_recorded)``: 1 for a 10% chance, 2 for 1%, 3 for 0.1% (floored
  at 1e-6, so at most 6). Ranking by it is ranking by ``p_recorded``.
* Each night the bins scored are ranked by the score; ``needs_review`` is set on the top of the
  ranking, at most the policy's budget (a share and/or a number of bins) and only where the
  evidence passes the policy's threshold. Quiet nights flag few bins, or none.

The defaults (at most 10% of a night, each record given at most a 10% chance) were chosen on
real photos (bench/README.md "A real night"): the held-out bins of ../shared/abid with 8% of
their records of 1-5 items changed by 2 or 3, scored by the ``real`` champion. On the
validation night (the mean of 30 draws of the changed records) a 10% budget with any threshold
from 0.1 up flagged 9.9%, precision 0.46, recall 0.59, and the test night gave the same (0.46,
0.60); the earlier 5% chance, chosen on synthetic nights, flagged 6.8% there and found under
half (0.49). A 5% budget capped recall on bad nights, real or synthetic. On synthetic nights
0.1 lets the budget fill where 0.05 did not, at lower precision (bench/README.md "The
threshold tuned on real nights"): a team that reviews few bins sets a lower threshold.

Every function here is pure (arrays in, arrays out); ``bincount.nightly.scoring`` applies them.

>>> probabilities = np.array([[0.1, 0.8, 0.1], [0.02, 0.08, 0.9]])
>>> record_probability(probabilities, [1, 0], max_count=2, open_top=False).round(2).tolist()
[0.8, 0.02]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

P_FLOOR = 1e-6  # discrepancy scores stop at 6: beyond that the model's figures mean little


class ReviewPolicy(BaseModel):
    """How many bins a night's queue may hold, and how strong the evidence must be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_percent: float = Field(
        10.0,
        gt=0,
        le=100,
        description="at most this share (%) of the night's judged bins is flagged",
    )
    budget_count: int | None = Field(
        None, ge=0, description="and at most this many bins (None: no cap by number)"
    )
    max_p_recorded: float = Field(
        0.1,
        gt=0,
        le=1,
        description="flag a bin only if the model gives its recorded count at most this chance",
    )

    def budget(self, judged: int) -> int:
        """How many of ``judged`` bins tonight's queue may hold."""
        by_share = math.floor(judged * self.budget_percent / 100 + 1e-9)
        return by_share if self.budget_count is None else min(by_share, self.budget_count)


def record_probability(
    probabilities: np.ndarray,
    recorded: Sequence[int | None],
    *,
    max_count: int,
    open_top: bool,
) -> np.ndarray:
    """P(count = record) per bin (float64, NaN where the record is unknown or, for a model
    without an open top, beyond its range)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(recorded):
        raise ValueError(
            f"Expected probabilities (N, C) for {len(recorded)} records, but got shape "
            f"{probabilities.shape}"
        )
    width = max_count + 1 + int(open_top)
    if probabilities.shape[1] != width:
        raise ValueError(
            f"Expected {width} count probabilities (0..{max_count}"
            f"{' and more' if open_top else ''}), but got {probabilities.shape[1]}"
        )
    result = np.full(len(recorded), np.nan)
    for row, record in enumerate(recorded):
        if record is None or record < 0:
            continue
        if record > max_count:
            if not open_top:
                continue
            record = max_count + 1
        result[row] = probabilities[row, record]
    return result


def discrepancy_score(p_recorded: np.ndarray) -> np.ndarray:
    """-log10 of ``p_recorded`` floored at 1e-6 (NaN stays NaN): larger means more suspicious."""
    return -np.log10(np.clip(np.asarray(p_recorded, dtype=np.float64), P_FLOOR, 1.0))


def disagrees(
    predicted: Sequence[int], recorded: Sequence[int | None], *, max_count: int, open_top: bool
) -> list[bool | None]:
    """Whether the predicted count differs from the record (None where the record is unknown);
    the open top class agrees with every record above ``max_count``."""
    result: list[bool | None] = []
    for count, record in zip(predicted, recorded, strict=True):
        if record is None:
            result.append(None)
        elif open_top and count > max_count:
            result.append(record <= max_count)
        else:
            result.append(int(count) != record)
    return result


@dataclass(frozen=True)
class QueueDecision:
    """Tonight's ranking: a rank per bin (1 = most suspicious; None = not judged) and the flags."""

    review_rank: list[int | None]
    needs_review: list[bool]
    judged: int
    budget: int

    @property
    def flagged(self) -> int:
        return sum(self.needs_review)


def rank_queue(
    p_recorded: np.ndarray, image_ids: Sequence[str], policy: ReviewPolicy
) -> QueueDecision:
    """Rank the judged bins (``p_recorded`` not NaN) from the least to the most likely record,
    ties by id; flag the top of the ranking within the budget whose evidence passes."""
    p_recorded = np.asarray(p_recorded, dtype=np.float64)
    if len(p_recorded) != len(image_ids):
        raise ValueError(
            f"Expected one id per p_recorded, but got {len(image_ids)} ids and "
            f"{len(p_recorded)} values"
        )
    judged = [i for i in range(len(p_recorded)) if not math.isnan(p_recorded[i])]
    # Rank by the floored score, as stored, so that ranks agree with the published column.
    floored = np.clip(p_recorded, P_FLOOR, 1.0)
    order = sorted(judged, key=lambda i: (floored[i], image_ids[i]))
    budget = policy.budget(len(judged))
    ranks: list[int | None] = [None] * len(p_recorded)
    flags = [False] * len(p_recorded)
    for rank, row in enumerate(order, start=1):
        ranks[row] = rank
        flags[row] = rank <= budget and p_recorded[row] <= policy.max_p_recorded
    return QueueDecision(review_rank=ranks, needs_review=flags, judged=len(judged), budget=budget)


# -- measuring a queue ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetFigures:
    """Precision and recall of the queue's top ``percent``% (of every wrong record, and of the
    records off by each size)."""

    percent: float
    flagged: int
    precision: float
    recall: float
    recall_by_error: dict[str, float]


@dataclass(frozen=True)
class DetectionQuality:
    """How well a ranking finds wrong records, against known truth."""

    n: int
    wrong: int
    wrong_by_error: dict[str, int]
    average_precision: float
    budgets: list[BudgetFigures]


def error_size_label(error: int) -> str:
    """Buckets of the size of a record's error: ``1``, ``2``, ``3+``."""
    size = abs(int(error))
    return "3+" if size >= 3 else str(size)


def ranking(scores: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Indices from the largest score down; ties in a seeded random order, so a coarse score
    (a yes/no rule) is measured as a reviewer picking among its ties would fare."""
    scores = np.asarray(scores, np.float64)
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    return np.lexsort((tiebreak, -scores))


def average_precision(scores: np.ndarray, wrong: np.ndarray) -> float:
    """Mean precision at each wrong record's rank, ranking by ``scores`` (larger first)."""
    scores, wrong = np.asarray(scores, np.float64), np.asarray(wrong, bool)
    if not wrong.any():
        return math.nan
    hits = wrong[ranking(scores)]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def detection_quality(
    scores: np.ndarray,
    errors: np.ndarray,
    *,
    budgets_percent: Sequence[float] = (1.0, 2.0, 5.0),
) -> DetectionQuality:
    """Average precision and precision/recall at review budgets of a ranking by ``scores``
    (larger = more suspicious) against ``errors`` (record minus truth; 0 where right)."""
    scores, errors = np.asarray(scores, np.float64), np.asarray(errors, np.int64)
    if scores.shape != errors.shape:
        raise ValueError(f"Expected one error per score, but got {errors.shape} and {scores.shape}")
    wrong = errors != 0
    labels = np.array([error_size_label(e) if e else "" for e in errors])
    kinds = ("1", "2", "3+")
    order = ranking(scores)
    figures = []
    for percent in budgets_percent:
        top = order[: math.floor(len(scores) * percent / 100 + 1e-9)]
        caught = wrong[top].sum()
        figures.append(
            BudgetFigures(
                percent=percent,
                flagged=len(top),
                precision=float(caught / len(top)) if len(top) else math.nan,
                recall=float(caught / wrong.sum()) if wrong.any() else math.nan,
                recall_by_error={
                    kind: float((labels[top] == kind).sum() / (labels == kind).sum())
                    for kind in kinds
                    if (labels == kind).any()
                },
            )
        )
    return DetectionQuality(
        n=len(scores),
        wrong=int(wrong.sum()),
        wrong_by_error={kind: int((labels == kind).sum()) for kind in kinds},
        average_precision=average_precision(scores, wrong),
        budgets=figures,
    )


def simulate_record_errors(
    labels: np.ndarray,
    *,
    rate: float,
    seed: int,
    max_count: int,
    open_top: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Records for bins of known ``labels`` (training classes) with a share ``rate`` moved off the
    truth as ``bincount.synth`` moves a mismatched record (1-2 units, or 3-8). Returns the
    records and each record's error in classes (0 where right). A move that stays in the open
    top class ("more than K" to more still) is no visible error: such bins are left right."""
    from bincount.synth import mismatch_offset

    if not 0 <= rate <= 1:
        raise ValueError(f"Expected rate in [0, 1], but got {rate}")
    rng = np.random.default_rng(seed)
    top = max_count + 1 if open_top else max_count
    records = np.asarray(labels, np.int64).copy()
    for row in np.flatnonzero(rng.random(len(records)) < rate):
        moved = min(int(records[row]) + mismatch_offset(rng, int(records[row])), top)
        records[row] = moved if open_top else min(moved, max_count)
    return records, records - np.asarray(labels, np.int64)


@dataclass(frozen=True)
class QueueAgainstTruth:
    """A night's queue measured against what the photos really show (synthetic truth)."""

    judged: int  # bins ranked with a known record and a known true count
    wrong: int  # of those, records that disagree with the photo
    wrong_by_2_or_more: int
    flagged: int
    flagged_wrong: int
    caught_by_2_or_more: int

    @property
    def precision(self) -> float:
        return self.flagged_wrong / self.flagged if self.flagged else math.nan

    @property
    def recall(self) -> float:
        return self.flagged_wrong / self.wrong if self.wrong else math.nan

    @property
    def recall_by_2_or_more(self) -> float:
        if not self.wrong_by_2_or_more:
            return math.nan
        return self.caught_by_2_or_more / self.wrong_by_2_or_more

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "recall_by_2_or_more": self.recall_by_2_or_more,
        }


def flag_quality(flags: np.ndarray, errors: np.ndarray) -> QueueAgainstTruth:
    """Precision and recall of yes/no ``flags`` against ``errors`` (record minus truth; 0 where
    right), one per judged bin."""
    flags, errors = np.asarray(flags, bool), np.asarray(errors, np.int64)
    if flags.shape != errors.shape:
        raise ValueError(f"Expected one error per flag, but got {errors.shape} and {flags.shape}")
    wrong, large = errors != 0, np.abs(errors) >= 2
    return QueueAgainstTruth(
        judged=len(flags),
        wrong=int(wrong.sum()),
        wrong_by_2_or_more=int(large.sum()),
        flagged=int(flags.sum()),
        flagged_wrong=int((flags & wrong).sum()),
        caught_by_2_or_more=int((flags & large).sum()),
    )


def queue_against_truth(
    flagged: dict[str, bool], recorded: dict[str, int], true_counts: dict[str, int]
) -> QueueAgainstTruth:
    """Precision and recall of a queue (``flagged``: bin id → needs_review, for every bin the
    night judged) given each bin's record and the count its photo really shows."""
    judged = [i for i in flagged if i in recorded and i in true_counts]
    return flag_quality(
        np.array([flagged[i] for i in judged], bool),
        np.array([recorded[i] - true_counts[i] for i in judged], np.int64),
    )


def probability_text(p: float) -> str:
    """A probability as an operator reads it: ``2.3%``, ``0.041%``, ``<0.01%``."""
    return f"{100 * p:.2g}%" if p >= 0.0001 else "<0.01%"
