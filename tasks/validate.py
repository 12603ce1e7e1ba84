"""Task: check the labels against the data contract."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.data.validate import ValidationReport, validate_bins
from bincount.reports.validation import validation_markdown
from tasks.runtime import current_run_id, locations, timed_task


@timed_task("step_timeout_s", name="validate-labels", cache_policy=NO_CACHE)
def validate_labels(source: str | None, output: str | None) -> ValidationReport:
    """Validate the current bins, quarantine failing rows, fail past the contract's thresholds."""
    settings, source_location, output_location = locations(source, output)
    report = validate_bins(
        source_location,
        output_location,
        max_expected_quantity=settings.max_expected_quantity,
        partitions=settings.list_partitions,
        run_id=current_run_id(),
    )
    get_run_logger().info(
        "validated %d bins: %d quarantined, passed=%s",
        report.rows,
        report.quarantined_rows,
        report.passed,
    )
    create_markdown_artifact(
        key="label-validation",
        markdown=validation_markdown(report),
        description="Each expectation of the bins contract: evaluated, failed, percent",
    )
    create_table_artifact(
        key="label-validation-expectations",
        table=[
            {
                "code": o.code,
                "expectation": o.expectation,
                "evaluated": o.evaluated,
                "failed": o.failed,
                "failed_percent": round(o.failed_percent, 3),
                "threshold_percent": o.max_failed_percent,
                "ok": o.within_threshold,
            }
            for o in report.outcomes
        ],
        description="The same figures as a table",
    )
    report.raise_for_thresholds()
    return report
