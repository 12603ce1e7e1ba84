"""Tasks: evaluate a model, and the promotion gate."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bincount.model.evaluation import evaluate_model
from bincount.model.records import EvaluationReport, PromotionDecision
from bincount.model.registry import champion, decide_promotion, read_evaluation, record_decision
from bincount.reports.evaluation import (
    decision_markdown,
    evaluation_charts,
    evaluation_markdown,
)
from tasks.runtime import resolve_output, timed_task


@timed_task("long_timeout_s", name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_registered_model(
    output: str | None, model: str, split: str, manifest: str | None = None
) -> EvaluationReport:
    """ABID metrics of a model on a frozen evaluation set, beside the ABID baseline."""
    output_location = resolve_output(output)
    report = evaluate_model(output_location, model, split=split, manifest_version=manifest)
    get_run_logger().info(
        "model %s on %s: accuracy %.4f, RMSE %.4f",
        report.model_version,
        report.evaluation_set.id,
        report.metrics.accuracy,
        report.metrics.rmse,
    )
    create_markdown_artifact(
        key=f"evaluation-{report.model_version}",
        markdown=evaluation_markdown(report, charts=evaluation_charts(report)),
        description="ABID metrics beside the ResNet-34 baseline and the majority class",
    )
    return report


@timed_task("long_timeout_s", name="promotion-gate", cache_policy=NO_CACHE)
def promotion_gate(output: str | None, challenger_report: EvaluationReport) -> PromotionDecision:
    """Promote the challenger only if it beats the champion on the same evaluation set."""
    output_location = resolve_output(output)
    current = champion(output_location)
    incumbent = None
    if current is not None:
        evaluation = challenger_report.evaluation_set
        incumbent = read_evaluation(output_location, current.version, evaluation.id)
        if incumbent is None:  # judge both on the challenger's set, never on unlike sets
            incumbent = evaluate_model(
                output_location,
                current.version,
                split=evaluation.split,
                manifest_version=evaluation.manifest_version,
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
