"""Task: build the versioned manifest."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.core.storage import Location
from bincount.data.manifest import (
    SPLITS,
    CountPolicy,
    ManifestSummary,
    build_manifest,
    load_manifest,
    read_benchmark_split,
)
from bincount.data.manifestdetails import ManifestDetails
from bincount.data.overrange import companion_manifest
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


@timed_task("step_timeout_s", name="build-companion-manifest", cache_policy=NO_CACHE)
def build_companion_manifest(output: str | None, manifest: str | None) -> ManifestDetails:
    """The manifest's ``open:K`` companion: its bins and those above K, for training only."""
    settings, _, output_location = locations(None, output)
    _, details = load_manifest(output_location, manifest)
    companion = companion_manifest(
        Location.source(settings, details.source), output_location, details.version
    )
    get_run_logger().info(
        "companion %s of manifest %s (%s): %d rows, %d train bins above %d",
        companion.version,
        details.version,
        companion.policy,
        companion.rows,
        companion.distribution["train"].get(details.max_count + 1, 0),
        details.max_count,
    )
    return companion
