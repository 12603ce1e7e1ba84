"""Markdown for a model's evaluation report and for the promotion decision.

The evaluation reads as sections: the headline beside the ABID baseline, the charts (when
drawn), the confusion matrix, the moderate task, calibration, finding wrong records. A chart is a
section of its own, placed by this order, not found by searching the text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bincount.reports import charts as plots
from bincount.reports.markdown import num, pct, table

if TYPE_CHECKING:
    from bincount.model.calibration import CalibrationReport
    from bincount.model.records import EvaluationReport, PromotionDecision, ReviewDetection


def evaluation_markdown(report: EvaluationReport, *, charts: str | None = None) -> str:
    """The report side by side with the ABID ResNet-34 baseline and the majority class, with
    ``charts`` (:func:`evaluation_charts`) after the headline table."""
    sections = [_headline(report)]
    if charts:
        sections.append(charts)
    sections.append(_confusion(report))
    if report.metrics_moderate:
        sections.append(_moderate(report))
    if report.calibration:
        sections.append(calibration_section(report.calibration))
    if report.review_detection:
        sections.append(detection_section(report.review_detection))
    return "\n\n".join(sections) + "\n"


def evaluation_charts(report: EvaluationReport) -> str:
    """The report's pictures, side by side where the page is wide enough: accuracy per count
    beside the ABID baseline, the confusion matrix as a heatmap, the reliability diagram."""
    ours = report.metrics
    names = plots.class_names(len(ours.per_class_accuracy), open_top=report.model.open_top)
    charts = [
        plots.markdown_image(
            "accuracy per recorded count beside the ABID ResNet-34",
            plots.per_count_accuracy(
                ours.per_class_accuracy,
                report.abid_baseline.per_class_accuracy,
                names=names,
            ),
        ),
        plots.markdown_image(
            "confusion matrix", plots.confusion_heatmap(ours.confusion, names=names)
        ),
    ]
    calibration = report.calibration
    if calibration:
        charts.append(
            plots.markdown_image(
                "reliability before and after the temperature",
                plots.reliability_diagram(
                    calibration.reliability_before, calibration.reliability_after
                ),
            )
        )
    return " ".join(charts)


def _headline(report: EvaluationReport) -> str:
    ours, majority, abid = report.metrics, report.majority_baseline, report.abid_baseline
    evaluated = report.evaluation_set
    # The moderate task is counts 0-5: a set that also holds "more than 5" is compared on its
    # bins within 0-5 (below the confusion matrix), not in this table.
    comparable = evaluated.is_abid_benchmark and evaluated.max_count == 5 and not evaluated.open_top
    rows = [
        ["accuracy", pct(ours.accuracy), pct(majority.accuracy), pct(abid.accuracy)],
        ["RMSE", num(ours.rmse), num(majority.rmse), num(abid.rmse)],
    ]
    top = report.model.max_count + 1 if report.model.open_top else None
    abid_acc, abid_rmse = abid.per_class_accuracy, abid.per_class_rmse
    for count in range(len(ours.per_class_accuracy)):
        name = f"more than {count - 1}" if count == top else f"count {count}"
        rows.append(
            [
                f"{name}: accuracy / RMSE (n={ours.per_class_n[count]})",
                f"{pct(ours.per_class_accuracy[count])} / {num(ours.per_class_rmse[count])}",
                f"{pct(majority.per_class_accuracy[count])} / "
                f"{num(majority.per_class_rmse[count])}",
                f"{pct(abid_acc[count]) if count < len(abid_acc) else '-'} / "
                f"{num(abid_rmse[count]) if count < len(abid_rmse) else '-'}",
            ]
        )
    return "\n".join(
        [
            f"# Evaluation of model {report.model_version}",
            "",
            f"Set `{evaluated.id}`: the {evaluated.split} split of manifest "
            f"`{evaluated.manifest_version}`, {evaluated.size:,} bins from "
            f"`{evaluated.source}`, policy {evaluated.policy}.",
            "",
            (
                "This set is the ABID challenge benchmark: the baseline column is comparable."
                if comparable
                else "**Not the ABID benchmark set**: the ABID column is for reference only; it "
                "was measured on the challenge's moderate validation set of real bins."
            ),
            "",
            table(["metric", "this model", "majority class", "ABID ResNet-34"], rows, "lrrr"),
        ]
    )


def _confusion(report: EvaluationReport) -> str:
    confusion = report.metrics.confusion
    size = len(confusion)
    return "Confusion matrix (rows: recorded count, columns: predicted):\n\n" + table(
        ["", *range(size)],
        ([f"**{count}**", *row] for count, row in enumerate(confusion)),
        "l" + "r" * size,
    )


def _moderate(report: EvaluationReport) -> str:
    moderate, abid = report.metrics_moderate, report.abid_baseline
    return (
        f"On the {moderate.n:,} bins recorded 0-5 (ABID's moderate task; this model also "
        f"predicts larger counts): accuracy {pct(moderate.accuracy)}, RMSE "
        f"{num(moderate.rmse)}"
        + (
            f", beside the ABID ResNet-34's {pct(abid.accuracy)} and {num(abid.rmse)}"
            " on the same task."
            if report.evaluation_set.is_abid_benchmark
            else " (not the ABID benchmark set: for reference only)."
        )
    )


def calibration_section(calibration: CalibrationReport) -> str:
    """ECE before and after the temperature, and the reliability table."""
    rows = [
        [
            f"{before.low:.1f}-{before.high:.1f}",
            before.n,
            pct(before.accuracy),
            after.n,
            pct(after.accuracy),
        ]
        for before, after in zip(
            calibration.reliability_before, calibration.reliability_after, strict=True
        )
    ]
    header = ["confidence", "bins (before)", "accuracy (before)", "bins (after)"]
    return (
        "## Calibration\n\n"
        f"Temperature {num(calibration.temperature)} (fitted on the validation split). On "
        f"this set: expected calibration error {num(calibration.ece_before)} before, "
        f"{num(calibration.ece_after)} after; negative log-likelihood "
        f"{num(calibration.nll_before)} before, {num(calibration.nll_after)} after.\n\n"
        + table([*header, "accuracy (after)"], rows, "lrrrr")
    )


def detection_section(detection: ReviewDetection) -> str:
    """Precision and recall of the review queue on simulated wrong records."""
    ours, rule = detection.p_recorded, detection.predicted_differs
    rows = [
        [
            f"{figures.percent:g}% ({figures.flagged})",
            pct(figures.precision),
            pct(figures.recall),
            " / ".join(
                pct(figures.recall_by_error.get(size, math.nan)) for size in ("1", "2", "3+")
            ),
            f"{pct(theirs.precision)} / {pct(theirs.recall)}",
        ]
        for figures, theirs in zip(ours.budgets, rule.budgets, strict=True)
    ]
    header = ["review budget", "precision", "recall", "recall off by 1 / 2 / 3+"]
    return (
        "## Finding wrong records\n\n"
        f"{100 * detection.simulated_error_rate:g}% of this set's records moved off the "
        f"truth ({ours.wrong} records: "
        + ", ".join(f"{n} off by {size}" for size, n in ours.wrong_by_error.items())
        + f"). Average precision: {num(ours.average_precision)} ranking by `p_recorded`, "
        f"{num(rule.average_precision)} flagging predicted ≠ recorded.\n\n"
        + table([*header, "predicted ≠ recorded: precision / recall"], rows, "rrrll")
    )


def decision_markdown(decision: PromotionDecision) -> str:
    """The champion/challenger comparison and its outcome."""
    verdict = "promoted" if decision.promote else "not promoted"
    rows = [
        [
            f"challenger {decision.challenger}",
            num(decision.challenger_figures.accuracy, 4),
            num(decision.challenger_figures.rmse, 4),
        ]
    ]
    if decision.champion_figures:
        rows.append(
            [
                f"champion {decision.champion}",
                num(decision.champion_figures.accuracy, 4),
                num(decision.champion_figures.rmse, 4),
            ]
        )
    evaluated = decision.evaluation_set
    return (
        f"# Challenger {decision.challenger}: {verdict}\n\n"
        f"{decision.reason}. Evaluation set `{evaluated.id}` ({evaluated.size:,} bins, "
        f"{evaluated.split} split of manifest `{evaluated.manifest_version}`).\n\n"
        + table(["model", "accuracy", "RMSE"], rows, "lrr")
        + "\n"
    )
