"""Flow: evaluate a registered model against a frozen evaluation set."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from tasks.evaluation import evaluate_registered_model


@flow(name="evaluate", flow_run_name=run_name("evaluate"))
def evaluate(
    output: str | None = None,
    model: str = "champion",
    split: str = "test",
    manifest: str | None = None,
) -> dict:
    """ABID metrics of a model (default: the champion) beside the ABID baseline."""
    return evaluate_registered_model(output, model, split, manifest)
