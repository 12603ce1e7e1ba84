"""What a scoring run did, in figures (its artifact's markdown: ``bincount.reports.scoring``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bincount.core.chunks import (
    totals,
)
from bincount.core.limits import ImageLimits
from bincount.core.storage import Location
from bincount.nightly.plan import (
    ScoringPlan,
)
from bincount.review.photos import with_thumbnails
from bincount.review.queue import NightQueue


# -- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringSummary:
    """What one scoring run did, for logs, the summary artifact and the CLI; ``review`` is the
    top of the night's queue, each row with a link and a thumbnail of its photo."""

    source: str
    output: str
    model_version: str
    listed: int
    not_images: int
    already_scored: int
    new: int
    scored: int
    quarantined: int
    discrepancies: int
    judged: int
    needs_review: int
    unknown_expected: int
    seconds: float
    model_seconds: float
    parts: list[str]
    workers: list[str]
    queue: dict
    review: list[dict]
    discarded_orphan_parts: int = 0
    pending: int = 0

    @property
    def images_per_second(self) -> float:
        return (self.scored + self.quarantined) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        # The thumbnails are for the artifact; a JSON summary names the photos by link.
        review = [{k: v for k, v in row.items() if k != "thumbnail"} for row in self.review]
        return {
            **asdict(self),
            "review": review,
            "images_per_second": round(self.images_per_second, 1),
        }


def summarize(
    plan: ScoringPlan,
    source: Location | Sequence[Location],
    output: Location,
    results: Sequence[ChunkResult],
    queue: NightQueue,
    seconds: float,
    *,
    limits: ImageLimits | None = None,
) -> ScoringSummary:
    """One run's summary from its plan, the results of its chunks and the night's queue
    (``source``: the location, or locations, its images came from)."""
    return ScoringSummary(
        source=plan.source,
        output=output.uri(),
        model_version=plan.model_version,
        listed=plan.listed,
        not_images=plan.not_images,
        already_scored=plan.already_scored,
        new=plan.new,
        **totals(
            results,
            "scored",
            "quarantined",
            "discrepancies",
            "judged",
            "unknown_expected",
            "model_seconds",
            "pending",
        ),
        needs_review=queue.flagged,
        seconds=seconds,
        parts=[r.part for r in results],
        workers=sorted({r.worker for r in results}),
        queue={k: v for k, v in queue.as_dict().items() if k != "top"},
        review=with_thumbnails(source, queue.top, limits=limits),
        discarded_orphan_parts=plan.discarded_orphan_parts,
    )


# -- one chunk ---------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    """What scoring one chunk did; ``review`` is the top of its review list."""

    part: str
    scored: int
    quarantined: int
    discrepancies: int
    judged: int
    unknown_expected: int
    seconds: float
    model_seconds: float
    worker: str = ""
    part_key: str = ""
    pending: int = 0
