"""Markdown for a built manifest: its bins per label and split, table and chart."""

from __future__ import annotations

from bincount.data.manifest import SPLITS, CountPolicy, ManifestSummary
from bincount.reports import charts as plots
from bincount.reports.markdown import pct, table


def distribution_markdown(summary: ManifestSummary) -> str:
    """The bins of each split per label (with the split's share), and the same as a chart."""
    labels = sorted({label for split in summary.distribution.values() for label in split})
    rows = []
    for split in SPLITS:
        counts = summary.distribution[split]
        total = sum(counts.values()) or 1
        cells = [
            f"{counts.get(label, 0):,} ({pct(counts.get(label, 0) / total, 1)})" for label in labels
        ]
        rows.append([split, *cells, f"{sum(counts.values()):,}"])
    lines = [
        f"# Manifest {summary.version} ({summary.policy})",
        "",
        f"{summary.rows:,} bins at `{summary.uri}`; excluded: {summary.excluded}.",
        "",
        table(["split", *labels, "total"], rows, "l" + "r" * (len(labels) + 1)),
    ]
    if summary.benchmark:
        lines += ["", f"Benchmark test split: {summary.benchmark}"]
    policy = CountPolicy.parse(summary.policy)
    names = [
        f">{policy.max_count}" if policy.open_top and label > policy.max_count else str(label)
        for label in labels
    ]
    if labels:
        chart = plots.count_bars(
            {
                split: [summary.distribution[split].get(label, 0) for label in labels]
                for split in SPLITS
            },
            names=names,
            title=f"bins per label, manifest {summary.version}",
            stacked=True,
        )
        lines += ["", plots.markdown_image("bins per label and split", chart)]
    return "\n".join(lines) + "\n"
