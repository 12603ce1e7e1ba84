"""Tasks: lay out the queue's bins for a reviewer, wait for the verdicts in the UI, record them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field, create_model

from bincount.core.sources import open_sources, recorded_sources
from bincount.reports.review import outcomes_markdown, precision_markdown, review_sheet_markdown
from bincount.review.outcomes import (
    REVIEW_OUTCOMES,
    VIA_UI,
    RecordedVerdicts,
    file_verdicts,
    pending_entries,
    record_outcomes,
)
from bincount.review.photos import with_thumbnails
from bincount.review.precision import queue_precision
from bincount.review.verdicts import (
    Decided,
    QueueEntry,
    VerdictError,
    decide,
    read_verdict_file,
    verdict_model,
)
from tasks.runtime import current_run_id, locations, timed_task

THUMBNAIL_SIZE = 192  # big enough to count items in, small enough to inline ten of
POLL_SECONDS = 2  # how soon a paused run sees that it was resumed


@dataclass(frozen=True)
class ReviewSheet:
    """The bins shown to a reviewer and the markdown that shows them (photos inline)."""

    entries: list[QueueEntry]
    rows: list[dict]  # each entry with its thumbnail and a link to the photo

    def markdown(self, precision, problems=()) -> str:
        return review_sheet_markdown(self.rows, precision, problems=problems)


@timed_task("step_timeout_s", name="review-sheet", cache_policy=NO_CACHE)
def prepare_review_sheet(output: str | None, queued_date: str | None, top: int) -> ReviewSheet:
    """The first ``top`` unreviewed bins of a night's queue with their photos, as the
    ``review-sheet`` artifact."""
    settings, source, output_location = locations(None, output)
    entries = pending_entries(output_location, source, queued_date=queued_date, top=top)
    sources = open_sources(source, recorded_sources(output_location, source.url))
    rows = with_thumbnails(
        list(sources.values()),
        [entry.as_dict() for entry in entries],
        size=THUMBNAIL_SIZE,
        limits=settings.image_limits(),
    )
    sheet = ReviewSheet(entries, rows)
    logger = get_run_logger()
    if not entries:
        logger.info("nothing to review: every queued bin has a verdict")
        create_markdown_artifact(
            key="review-sheet",
            markdown="# Nothing to review\n\nEvery bin of the queue has a verdict.\n\n"
            + precision_markdown(queue_precision(output_location)),
            description="The review queue's bins waiting for a verdict",
        )
        return sheet
    logger.info(
        "%d bins to review from the queue of %s", len(entries), entries[0].queued_date.isoformat()
    )
    create_markdown_artifact(
        key="review-sheet",
        markdown=f"# Review of the queue of {entries[0].queued_date}\n\n"
        + sheet.markdown(queue_precision(output_location)),
        description="The review queue's bins waiting for a verdict, with photos",
    )
    return sheet


def review_input(sheet: ReviewSheet) -> type[RunInput]:
    """The form a reviewer fills in to resume the run: their name and a verdict per bin checked
    (a bin must be one of those shown, a count 0 or more: the API refuses anything else)."""
    verdict = verdict_model([entry.label for entry in sheet.entries])
    return create_model(
        "ReviewInput",
        __base__=RunInput,
        reviewer=(str, Field(min_length=1, description="Your name, kept with each verdict")),
        verdicts=(
            list[verdict],
            Field(min_length=1, description="One per bin you checked"),
        ),
    )


def wait_for_verdicts(
    output: str | None, sheet: ReviewSheet, reviewer: str | None, wait_minutes: float
) -> list[Decided]:
    """Pause the run until a reviewer resumes it with verdicts (in the UI, or through the API).

    The form shows the sheet; an answer the form cannot refuse but that makes no sense (two
    different counts for one bin) pauses the run again with the problem on top, until
    ``wait_minutes`` have passed since the first pause.
    """
    logger = get_run_logger()
    _, _, output_location = locations(None, output)
    form = review_input(sheet)
    deadline = time.monotonic() + 60 * wait_minutes
    problems: list[str] = []
    while True:
        initial = {"reviewer": reviewer} if reviewer else {}
        description = sheet.markdown(queue_precision(output_location), problems)
        left = max(1, int(deadline - time.monotonic()))
        try:
            answer = pause_flow_run(
                wait_for_input=form.with_initial_data(description=description, **initial),
                timeout=left,
                poll_interval=POLL_SECONDS,
            )
        except FlowPauseTimeout as error:
            raise TimeoutError(
                f"Expected verdicts within {wait_minutes:g} minutes, but none came: nothing "
                "was recorded, and the bins wait for the next review"
            ) from error
        try:
            return decide(sheet.entries, answer.verdicts, reviewer=answer.reviewer)
        except VerdictError as error:
            problems = error.problems
            logger.error("verdicts refused, waiting for a corrected answer: %s", error)
            if time.monotonic() >= deadline:
                raise


@timed_task("step_timeout_s", name="record-verdicts", cache_policy=NO_CACHE)
def record_review_verdicts(
    output: str | None, decided: list[Decided], via: str = VIA_UI
) -> RecordedVerdicts:
    """Write the verdicts to ``review_outcomes`` once (a retry finds its own part), and show
    them with the queue's precision so far as the ``review-outcomes`` artifact."""
    _, _, output_location = locations(None, output)
    recorded = record_outcomes(output_location, decided, run_id=current_run_id(), via=via)
    get_run_logger().info(
        "recorded %d verdicts (%d records right, %d corrected); %d judged before, not written",
        recorded.written,
        recorded.record_correct,
        recorded.corrected,
        len(recorded.already_recorded),
    )
    markdown = outcomes_markdown(decided, recorded, output_location.uri(REVIEW_OUTCOMES))
    markdown += "\n## The queue's precision so far\n\n"
    markdown += precision_markdown(queue_precision(output_location))
    create_markdown_artifact(
        key="review-outcomes",
        markdown=markdown,
        description="Verdicts recorded and the queue's measured precision",
    )
    return recorded


@timed_task("step_timeout_s", name="read-verdicts", cache_policy=NO_CACHE)
def read_file_verdicts(output: str | None, verdicts: str, reviewer: str | None) -> list[Decided]:
    """A verdict file (CSV or JSON) matched to the queue entries it judges; every bad row is
    named and nothing is recorded."""
    _, source, output_location = locations(None, output)
    with open(verdicts, encoding="utf-8") as handle:
        rows = read_verdict_file(handle.read(), verdicts)
    decided = file_verdicts(output_location, source, rows, reviewer=reviewer)
    get_run_logger().info("%d verdicts read from %s", len(decided), verdicts)
    return decided
