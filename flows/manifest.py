"""Flow: build a versioned manifest of the valid bins."""

from __future__ import annotations

from prefect import flow

from bincount.data.manifest import DEFAULT_POLICY
from flows.naming import run_name
from tasks.manifest import build_versioned_manifest
from tasks.runtime import output_lease


@flow(name="manifest", flow_run_name=run_name("manifest"))
def manifest(
    source: str | None = None,
    output: str | None = None,
    policy: str = DEFAULT_POLICY,
    benchmark_split: str | None = None,
) -> dict:
    """Valid bins to a manifest: labels, deterministic splits, the ABID challenge split."""
    with output_lease(output, "manifest"):
        summary = build_versioned_manifest(source, output, policy, benchmark_split)
    return summary.to_dict()
