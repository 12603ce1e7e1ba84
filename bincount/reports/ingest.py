"""Markdown for an ingest run: every figure of its summary."""

from __future__ import annotations

from bincount.data.ingest import IngestSummary
from bincount.reports.markdown import table


def ingest_markdown(summary: IngestSummary, *, source: str, output: str) -> str:
    """The run's figures, as its summary names them, under where it read and wrote."""
    rows = [[name, value] for name, value in summary.as_dict().items()]
    return (
        f"# Ingest of {source}\n\nInto `{output}`.\n\n"
        + table(["measure", "value"], rows, "ll")
        + "\n"
    )
