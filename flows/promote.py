"""Flow: send a model through the promotion gate."""

from __future__ import annotations

from prefect import flow

from bincount.model.evaluation import report_headline
from flows.naming import run_name
from tasks.evaluation import evaluate_registered_model, promotion_gate
from tasks.monitoring import keep_model_input_reference


@flow(name="promote", flow_run_name=run_name("promote"))
def promote(
    model: str,
    output: str | None = None,
    split: str = "test",
    manifest: str | None = None,
) -> dict:
    """Evaluate the challenger, then promote it only if it beats the champion on that set."""
    report = evaluate_registered_model(output, model, split, manifest)
    decision = promotion_gate(output, report)
    if decision.promote:  # the new champion's yardstick for input drift, computed once
        keep_model_input_reference(output, decision.challenger, decision.evaluation_set.id)
    return {**decision.model_dump(mode="json"), "evaluation": report_headline(report)}
