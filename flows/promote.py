"""Flow: send a model through the promotion gate."""

from __future__ import annotations

from prefect import flow

from bincount.model.evaluation import report_headline
from flows.naming import run_name
from tasks.evaluation import evaluate_registered_model, promotion_gate


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
    return {**decision.to_dict(), "evaluation": report_headline(report)}
