"""What a scoring run did, in figures and markdown for its artifact."""

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
from bincount.review.ranking import (
    probability_text,
)


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

    def to_markdown(self) -> str:
        policy = self.queue.get("policy", {})
        measures = [
            ("images listed", self.listed),
            ("already scored (skipped)", self.already_scored),
            ("scored now", self.scored),
            ("undecodable (quarantined)", self.quarantined),
            ("not read: access denied or gone (pending, read again next run)", self.pending),
            ("no metadata ingested (record unknown)", self.unknown_expected),
            ("ranked tonight (records the model can judge)", self.queue.get("judged", 0)),
            ("carried over from a run stopped before ranking", self.queue.get("carried_over", 0)),
            ("review budget", self.queue.get("budget", 0)),
            ("flagged for review", self.needs_review),
            ("predicted count differs from the record (not the queue)", self.discrepancies),
            ("images/s", f"{self.images_per_second:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        lines = [
            f"# Scoring with model {self.model_version}",
            "",
            f"Images from `{self.source}`, scores in `{self.output}/scores/`, the queue in "
            f"`{self.output}/review_queue/`.",
            "",
            "| measure | value |",
            "|---|---:|",
            *(
                f"| {name} | {value:,} |" if isinstance(value, int) else f"| {name} | {value} |"
                for name, value in measures
            ),
            "",
            f"## Review queue: the top {len(self.review)} of {self.needs_review:,}",
            "",
            f"Policy: at most {policy.get('budget_percent', '?')}% of the night's judged bins"
            + (
                f" and at most {policy['budget_count']}"
                if policy.get("budget_count") is not None
                else ""
            )
            + f", each with a recorded count the model gives at most "
            f"{100 * policy.get('max_p_recorded', 0):g}% (`p_recorded`). Ranked from the least "
            "likely record.",
            "",
        ]
        if self.review:
            lines += [
                "| rank | photo | bin | recorded | predicted | p_recorded |",
                "|---:|---|---|---:|---:|---:|",
            ]
            lines += [
                f"| {row['review_rank']} | "
                + (f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-")
                + f" | [{row['image_id']}]({row['link']}) | {row['expected_quantity']} | "
                f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''} | "
                f"{probability_text(row['p_recorded'])} |"
                for row in self.review
            ]
        else:
            lines.append("Nothing to review tonight: no record is unlikely enough.")
        return "\n".join(lines) + "\n"


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
