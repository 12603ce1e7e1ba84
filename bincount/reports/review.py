"""Markdown for the review loop's artifacts: the review sheet, the recorded outcomes and the
queue's precision.
"""

from __future__ import annotations

from collections.abc import Sequence

from bincount.review.outcomes import RecordedVerdicts
from bincount.review.precision import QueuePrecision
from bincount.review.ranking import probability_text
from bincount.review.verdicts import Decided


def precision_markdown(rows: Sequence[QueuePrecision]) -> str:
    """The measured precision as a markdown table (newest night first)."""
    if not rows:
        return "No queue yet.\n"
    lines = [
        "| queued | model | flagged | reviewed | record wrong | precision |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in reversed(rows):
        shown = "-" if row.precision is None else f"{100 * row.precision:.0f}%"
        lines.append(
            f"| {row.queued_date} | `{row.model_version}` | {row.flagged} | {row.reviewed} | "
            f"{row.record_wrong} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def outcomes_markdown(decided: Sequence[Decided], recorded: RecordedVerdicts, where: str) -> str:
    """What a set of verdicts recorded, bin by bin."""
    lines = [
        "# Review outcomes",
        "",
        "| bin | recorded | counted | verdict | reviewer |",
        "|---|---:|---:|---|---|",
    ]
    for d in decided:
        verdict = (
            "judged before: not written"
            if d.entry.label in recorded.already_recorded
            else d.verdict
        )
        lines.append(
            f"| {d.entry.label} | {d.entry.expected_quantity} | {d.counted} | {verdict} | "
            f"{d.reviewer} |"
        )
    lines += [
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
        "| rank | bin | recorded | model | p_recorded | photo |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in shown:
        photo = f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-"
        predicted = f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''}"
        lines.append(
            f"| {row['review_rank']} | [{row['label']}]({row['link']}) | "
            f"{row['expected_quantity']} | {predicted} | {probability_text(row['p_recorded'])} | "
            f"{photo} |"
        )
    lines += ["", "## The queue's precision so far", "", precision_markdown(precision)]
    return "\n".join(lines)
