"""Tasks: evaluate a model, and the promotion gate."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.model.evaluation import evaluate_model, report_markdown
from bincount.model.registry import (
    PromotionDecision,
    champion,
    decide_promotion,
    read_evaluation,
    record_decision,
)
from bincount.reports import charts as plots
from tasks.runtime import resolve_output, timed_task


@timed_task("long_timeout_s", name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_registered_model(
    output: str | None, model: str, split: str, manifest: str | None = None
) -> dict:
    """ABID metrics of a model on a frozen evaluation set, beside the ABID baseline."""
    output_location = resolve_output(output)
    report = evaluate_model(output_location, model, split=split, manifest_version=manifest)
    get_run_logger().info(
        "model %s on %s: accuracy %.4f, RMSE %.4f",
        report["model_version"],
        report["evaluation_set"]["id"],
        report["metrics"]["accuracy"],
        report["metrics"]["rmse"],
    )
    create_markdown_artifact(
        key=f"evaluation-{report['model_version']}",
        markdown=with_charts(report_markdown(report), report),
        description="ABID metrics beside the ResNet-34 baseline and the majority class",
    )
    return report


@timed_task("long_timeout_s", name="promotion-gate", cache_policy=NO_CACHE)
def promotion_gate(output: str | None, challenger_report: dict) -> PromotionDecision:
    """Promote the challenger only if it beats the champion on the same evaluation set."""
    output_location = resolve_output(output)
    current = champion(output_location)
    incumbent = None
    if current is not None:
        set_id = challenger_report["evaluation_set"]["id"]
        incumbent = read_evaluation(output_location, current["version"], set_id)
        if incumbent is None:  # judge both on the challenger's set, never on unlike sets
            evaluation = challenger_report["evaluation_set"]
            incumbent = evaluate_model(
                output_location,
                current["version"],
                split=evaluation["split"],
                manifest_version=evaluation["manifest_version"],
            )
    decision = decide_promotion(challenger_report, incumbent)
    record_decision(output_location, decision)
    get_run_logger().info("promotion: %s (%s)", decision.promote, decision.reason)
    create_markdown_artifact(
        key="promotion-decision",
        markdown=decision_markdown(decision),
        description="The champion/challenger comparison and its outcome",
    )
    return decision


def with_charts(markdown: str, report: dict) -> str:
    """The report with its pictures after the headline table: accuracy per count beside the
    ABID baseline, the confusion matrix as a heatmap, the reliability diagram."""
    ours = report["metrics"]
    names = plots.class_names(
        len(ours["per_class_accuracy"]), open_top=bool(report["model"].get("open_top"))
    )
    charts = [
        plots.markdown_image(
            "accuracy per recorded count beside the ABID ResNet-34",
            plots.per_count_accuracy(
                ours["per_class_accuracy"],
                report["abid_baseline"]["per_class_accuracy"],
                names=names,
            ),
        ),
        plots.markdown_image(
            "confusion matrix", plots.confusion_heatmap(ours["confusion"], names=names)
        ),
    ]
    calibration = report.get("calibration")
    if calibration:
        charts.append(
            plots.markdown_image(
                "reliability before and after the temperature",
                plots.reliability_diagram(
                    calibration["reliability_before"], calibration["reliability_after"]
                ),
            )
        )
    # Side by side where the page is wide enough; after the headline table, before the numbers.
    section = "\n" + " ".join(charts) + "\n"
    marker = "\nConfusion matrix"
    at = markdown.find(marker)
    return markdown + section if at < 0 else markdown[:at] + section + markdown[at:]


def decision_markdown(decision: PromotionDecision) -> str:
    verdict = "promoted" if decision.promote else "not promoted"
    lines = [
        f"# Challenger {decision.challenger}: {verdict}",
        "",
        f"{decision.reason}. Evaluation set `{decision.evaluation_set['id']}` "
        f"({decision.evaluation_set['size']:,} bins, {decision.evaluation_set['split']} split "
        f"of manifest `{decision.evaluation_set['manifest_version']}`).",
        "",
        "| model | accuracy | RMSE |",
        "|---|---:|---:|",
        f"| challenger {decision.challenger} | {decision.challenger_figures['accuracy']:.4f} "
        f"| {decision.challenger_figures['rmse']:.4f} |",
    ]
    if decision.champion_figures:
        lines.append(
            f"| champion {decision.champion} | {decision.champion_figures['accuracy']:.4f} "
            f"| {decision.champion_figures['rmse']:.4f} |"
        )
    return "\n".join(lines) + "\n"
