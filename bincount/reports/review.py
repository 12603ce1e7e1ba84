"""Markdown for the review loop's artifacts: the review sheet, the recorded outcomes and the
queue's precision.
"""

from __future__ import annotations

from collections.abc import Sequence

from bincount.reports.markdown import pct, table
from bincount.review.outcomes import RecordedVerdicts
from bincount.review.precision import QueuePrecision
from bincount.review.ranking import probability_text
from bincount.review.verdicts import Decided


def precision_markdown(rows: Sequence[QueuePrecision]) -> str:
    """The measured precision as a markdown table (newest night first)."""
    if not rows:
        return "No queue yet.\n"
    header = ["queued", "model", "flagged", "reviewed", "record wrong", "precision"]
    cells = [
        [
            row.queued_date,
            f"`{row.model_version}`",
            row.flagged,
            row.reviewed,
            row.record_wrong,
            pct(row.precision, 0),
        ]
        for row in reversed(rows)
    ]
    return table(header, cells, "llrrrr") + "\n"


def outcomes_markdown(decided: Sequence[Decided], recorded: RecordedVerdicts, where: str) -> str:
    """What a set of verdicts recorded, bin by bin."""
    rows = [
        [
            d.entry.label,
            d.entry.expected_quantity,
            d.counted,
            "judged before: not written"
            if d.entry.label in recorded.already_recorded
            else d.verdict,
            d.reviewer,
        ]
        for d in decided
    ]
    lines = [
        "# Review outcomes",
        "",
        table(["bin", "recorded", "counted", "verdict", "reviewer"], rows, "lrrll"),
        "",
        f"{recorded.written} written to `{where}`; the next manifest takes them as labels.",
        "",
    ]
    return "\n".join(lines)


def review_sheet_markdown(
    shown: Sequence[dict],
    precision: Sequence[QueuePrecision],
    *,
    problems: Sequence[str] = (),
) -> str:
    """What a reviewer reads: the bins (``shown``: :meth:`QueueEntry.as_dict` rows with a
    ``thumbnail`` data URI and a ``link``), how to answer, and the queue's precision so far."""
    lines = []
    if problems:
        lines += ["**The last answer was not recorded:**", ""]
        lines += [f"- {problem}" for problem in problems] + [""]
    queues = sorted({str(row["queued_date"]) for row in shown})
    models = sorted({row["model_version"] for row in shown})
    lines += [
        f"## {len(shown)} bins to check",
        "",
        "For each bin you checked, add a verdict: the bin and the number of items its photo "
        "shows. Leave the count empty when the record is right. Give your name as reviewer.",
        "",
        f"From the queue of {', '.join(queues)}, flagged by model "
        f"{', '.join(f'`{m}`' for m in models)}; rank 1 is the least likely record.",
        "",
        table(
            ["rank", "bin", "recorded", "model", "p_recorded", "photo"],
            (
                [
                    row["review_rank"],
                    f"[{row['label']}]({row['link']})",
                    row["expected_quantity"],
                    f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''}",
                    probability_text(row["p_recorded"]),
                    f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-",
                ]
                for row in shown
            ),
            "rlrrrl",
        ),
    ]
    lines += ["", "## The queue's precision so far", "", precision_markdown(precision)]
    return "\n".join(lines)
