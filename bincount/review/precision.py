"""How good the queue was: per queued night and model, the share of reviewed bins whose record was
wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from bincount.core.storage import Location
from bincount.core.tables import REVIEW_QUEUE, read_table
from bincount.review.outcomes import REVIEW_OUTCOMES
from bincount.review.verdicts import CORRECTED, outcome_id


@dataclass(frozen=True)
class QueuePrecision:
    """How one night's queue (of one model) fared with the people who checked it."""

    queued_date: date
    model_version: str
    flagged: int
    reviewed: int
    record_wrong: int

    @property
    def precision(self) -> float | None:
        """The share of reviewed entries whose record was wrong (None before any review)."""
        return self.record_wrong / self.reviewed if self.reviewed else None

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision}


def queue_precision(output: Location) -> list[QueuePrecision]:
    """The queue's measured precision over time: per queued date and model, how many bins were
    flagged, how many reviewed, and how many of those had a wrong record. Oldest first."""
    queue = read_table(
        output, REVIEW_QUEUE, columns=["queued_date", "model_version", "queue_id", "image_uri"]
    ).to_pylist()
    outcomes = read_table(output, REVIEW_OUTCOMES, columns=["outcome_id", "verdict"])
    verdicts = dict(
        zip(
            outcomes.column("outcome_id").to_pylist(),
            outcomes.column("verdict").to_pylist(),
            strict=True,
        )
    )
    groups: dict[tuple[date, str], list[str | None]] = {}
    for row in queue:
        key = (row["queued_date"], row["model_version"])
        groups.setdefault(key, []).append(
            verdicts.get(outcome_id(row["queue_id"], row["image_uri"]))
        )
    return [
        QueuePrecision(
            queued_date=day,
            model_version=model,
            flagged=len(found),
            reviewed=sum(v is not None for v in found),
            record_wrong=sum(v == CORRECTED for v in found),
        )
        for (day, model), found in sorted(groups.items())
    ]
