"""Markdown for a label validation run: its verdict and each expectation against its threshold."""

from __future__ import annotations

from bincount.data.validate import ValidationReport
from bincount.reports.markdown import num, table


def validation_markdown(report: ValidationReport) -> str:
    """Passed or failed, what was validated, and one row per expectation of the contract."""
    rows = [
        [
            o.code,
            o.description,
            f"`{o.column}`",
            f"{o.evaluated:,}",
            f"{o.failed:,}",
            num(o.failed_percent, 2),
            f"{o.max_failed_percent:g}",
            "yes" if o.within_threshold else ("ERROR: " + o.error if o.error else "no"),
        ]
        for o in report.outcomes
    ]
    header = ["code", "expectation", "column", "evaluated", "failed", "failed %", "threshold %"]
    return (
        "\n".join(
            [
                f"# Label validation: {'passed' if report.passed else 'FAILED'}",
                "",
                f"Suite `{report.suite}` over {report.rows:,} current bins (fingerprint "
                f"`{report.bins_fingerprint}`); {report.quarantined_rows:,} rows quarantined; "
                f"{report.images_without_metadata:,} of {report.images_listed:,} images have no "
                "metadata.",
                "",
                table([*header, "ok"], rows, "lllrrrrl"),
            ]
        )
        + "\n"
    )
