"""Tasks: the operator's view of the quarantine and pending objects, and replaying them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bincount.core.replay import (
    QuarantineView,
    ReplayOutcome,
    quarantine_view,
    replay_quarantine,
    replay_stages,
)
from tasks.runtime import current_run_id, output_lease, resolve_output, timed_task


@contextlib.contextmanager
def replay_leases(output: str | None, stage: str | None) -> Iterator[None]:
    """Hold the lease of each stage a replay rewrites (ingest, score): a run of that stage
    plans from its watermark, which must not change under it."""
    with contextlib.ExitStack() as stack:
        for each in replay_stages(stage):
            if each.value in ("ingest", "score"):  # the image cache is built under none
                stack.enter_context(output_lease(output, each.value))
        yield


@timed_task("step_timeout_s", name="replay-quarantined", cache_policy=NO_CACHE)
def replay_quarantined(output: str | None, stage: str | None, reason: str | None) -> ReplayOutcome:
    """Make the chosen quarantined objects pending again, so their stage reads them again."""
    outcome = replay_quarantine(
        resolve_output(output),
        stage=stage,
        reason=reason,
        run_id=current_run_id(),
        now=datetime.now(UTC),
    )
    get_run_logger().info(
        "replayed %d quarantined objects (%s): pending again, read by the next run",
        outcome.objects,
        ", ".join(f"{s}/{c}: {n}" for (s, c), n in sorted(outcome.counts.items())),
    )
    return outcome


@timed_task("step_timeout_s", name="show-quarantine", cache_policy=NO_CACHE)
def publish_quarantine_view(output: str | None) -> QuarantineView:
    """Count the quarantine and the pending objects by stage and reason, as artifacts."""
    view = quarantine_view(resolve_output(output))
    create_markdown_artifact(
        key="quarantine-view",
        markdown=view.to_markdown(),
        description="Quarantined and pending objects by stage and reason, and the replays",
    )
    create_table_artifact(
        key="quarantine-counts",
        table=[{**group, "since": group["since"].isoformat()} for group in view.groups],
        description="The same counts as a table",
    )
    return view
