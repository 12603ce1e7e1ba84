"""Markdown for a scoring run: its figures, tonight's predicted counts (with a drift check) and
the top of the night's review queue, each a section placed in that order."""

from __future__ import annotations

from bincount.nightly.monitoring import DriftCheck
from bincount.nightly.summary import ScoringSummary
from bincount.reports.drift import prediction_chart
from bincount.reports.markdown import table
from bincount.review.ranking import probability_text


def scoring_markdown(summary: ScoringSummary, drift: DriftCheck | None = None) -> str:
    """The run's figures, then the night's predicted counts and drift verdict (when ``drift``
    judged any bins), then the review queue with a thumbnail of each photo."""
    sections = [_figures(summary)]
    if drift is not None and drift.row["bins"]:
        sections.append(_predicted_counts(drift))
    sections.append(_queue(summary))
    return "\n\n".join(sections) + "\n"


def _figures(summary: ScoringSummary) -> str:
    queue = summary.queue
    measures = [
        ("images listed", summary.listed),
        ("already scored (skipped)", summary.already_scored),
        ("scored now", summary.scored),
        ("undecodable (quarantined)", summary.quarantined),
        ("not read: access denied or gone (pending, read again next run)", summary.pending),
        ("no metadata ingested (record unknown)", summary.unknown_expected),
        ("ranked tonight (records the model can judge)", queue.get("judged", 0)),
        ("carried over from a run stopped before ranking", queue.get("carried_over", 0)),
        ("review budget", queue.get("budget", 0)),
        ("flagged for review", summary.needs_review),
        ("predicted count differs from the record (not the queue)", summary.discrepancies),
        ("images/s", f"{summary.images_per_second:.1f}"),
        ("seconds", f"{summary.seconds:.1f}"),
    ]
    return "\n".join(
        [
            f"# Scoring with model {summary.model_version}",
            "",
            f"Images from `{summary.source}`, scores in `{summary.output}/scores/`, the queue in "
            f"`{summary.output}/review_queue/`.",
            "",
            table(
                ["measure", "value"],
                ([name, f"{v:,}" if isinstance(v, int) else v] for name, v in measures),
                "lr",
            ),
        ]
    )


def _predicted_counts(drift: DriftCheck) -> str:
    verdict = (
        "**drift detected** (" + "; ".join(drift.reasons) + ")"
        if drift.drift
        else "no drift detected"
    )
    chart = prediction_chart(drift)  # [image, ""], or nothing to draw
    return "\n".join(
        [
            "## Tonight's predicted counts",
            "",
            f"Against the model's test set and recent nights: {verdict}; the trend is in the "
            "`drift-monitoring` artifact.",
            *(["", chart[0]] if chart else []),
        ]
    )


def _queue(summary: ScoringSummary) -> str:
    policy = summary.queue.get("policy", {})
    lines = [
        f"## Review queue: the top {len(summary.review)} of {summary.needs_review:,}",
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
    if not summary.review:
        return "\n".join([*lines, "Nothing to review tonight: no record is unlikely enough."])
    rows = (
        [
            row["review_rank"],
            f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-",
            f"[{row['image_id']}]({row['link']})",
            row["expected_quantity"],
            f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''}",
            probability_text(row["p_recorded"]),
        ]
        for row in summary.review
    )
    header = ["rank", "photo", "bin", "recorded", "predicted", "p_recorded"]
    return "\n".join([*lines, table(header, rows, "rllrrr")])
