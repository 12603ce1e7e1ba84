"""Task: build the versioned manifest."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.data.manifest import (
    SPLITS,
    CountPolicy,
    ManifestSummary,
    build_manifest,
    read_benchmark_split,
)
from bincount.reports.manifest import distribution_markdown
from tasks.runtime import locations, timed_task


@timed_task("step_timeout_s", name="build-manifest", cache_policy=NO_CACHE)
def build_versioned_manifest(
    source: str | None, output: str | None, policy: str, benchmark_split: str | None
) -> ManifestSummary:
    """Valid bins to a content-versioned manifest with deterministic splits."""
    _, source_location, output_location = locations(source, output)
    benchmark = None
    if benchmark_split:
        with open(benchmark_split, encoding="utf-8") as handle:
            benchmark = read_benchmark_split(handle.read())
    summary = build_manifest(
        source_location,
        output_location,
        policy=CountPolicy.parse(policy),
        benchmark=benchmark,
        benchmark_name=benchmark_split,
    )
    get_run_logger().info(
        "manifest %s: %d rows (%s)",
        summary.version,
        summary.rows,
        "new" if summary.created else "unchanged",
    )
    create_markdown_artifact(
        key="manifest-class-distribution",
        markdown=distribution_markdown(summary),
        description=f"Class distribution per split of manifest {summary.version}",
    )
    for split in SPLITS:
        counts = summary.distribution[split]
        create_table_artifact(
            key=f"manifest-{split}-distribution",
            table=[{"label": label, "bins": n} for label, n in sorted(counts.items())],
            description=f"Bins per count in the {split} split of manifest {summary.version}",
        )
    return summary
