"""Flow: validate the EXPECTED_QUANTITY labels against the data contract."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from tasks.runtime import output_lease
from tasks.validate import validate_labels


@flow(name="validate", flow_run_name=run_name("validate"))
def validate(source: str | None = None, output: str | None = None) -> dict:
    """Check the current bins; quarantine failing rows; fail past the contract's thresholds."""
    with output_lease(output, "validate"):
        report = validate_labels(source, output)
    return report.to_dict()
