"""The night's review queue: rank the bins a scoring run scored, and publish the decision.

Chunks commit their scores parts as they finish, with ``needs_review`` null: only when every
chunk is in can the night be ranked as one queue. Ranking then writes, in this order:

1. the decision, ``scores/_queues/<queue id>.parquet`` (one row per ranked bin, with the part
   it lives in): from here on the night's queue is decided, whatever happens next;
2. ``review_queue/queued_date=<date>/part-<queue id>.parquet``, the flagged bins in rank order,
   with no rows when nothing passed the evidence bar: the night was judged, and a reader of the
   queue finds it empty, not missing; the first queue also starts ``review_outcomes`` (below);
3. every scores part of the night again, with ``review_rank`` and ``needs_review`` filled in;
4. the decision file is deleted.

A run stopped after (1) leaves its decision behind; the next run applies it first (2-4 are
idempotent rewrites), so a decided queue is never decided again. A run stopped before (1)
leaves parts with ``needs_review`` null; the next run ranks them with its own bins. Each scored
bin is thus in exactly one queue ranking.

The queue step decides two tables, which exist (possibly empty) from the first scoring run on:
``review_queue``, and ``review_outcomes``, whose first part, with no rows, goes in beside the
first queue: once a queue is published, "no verdict on it yet" is a fact, and an analyst's join
of the queue to its verdicts reads zero verdicts instead of failing. That part is in the
queue's date's ``reviewed_date`` partition (no verdict can come before the queue it judges).
A first night with nothing to rank writes an empty queue part of its own date for the same
reason; later nights with nothing to rank write none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bincount.core.chunks import part_name
from bincount.core.storage import Location
from bincount.core.tables import REVIEW_QUEUE, SCORES, read_table, start_table, write_part
from bincount.review.outcomes import REVIEW_OUTCOMES
from bincount.review.ranking import (
    QueueAgainstTruth,
    QueueDecision,
    ReviewPolicy,
    queue_against_truth,
    rank_queue,
)

logger = logging.getLogger(__name__)

DECISIONS = f"{SCORES}/_queues"
_QUEUE_COLUMNS = [
    "image_id",
    "image_uri",
    "expected_quantity",
    "predicted_count",
    "predicted_overflow",
    "p_recorded",
    "discrepancy_score",
    "confidence",
    "model_version",
    "run_id",
]


@dataclass(frozen=True)
class NightQueue:
    """What ranking one night did; ``top`` holds the first rows of its queue, in rank order."""

    queue_id: str | None
    ranked: int
    judged: int
    budget: int
    flagged: int
    policy: dict
    carried_over: int = 0  # bins of an earlier run that stopped before its queue was ranked
    decisions_applied: int = 0  # decisions of an earlier run finished now
    top: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def queue_reviews(
    output: Location,
    policy: ReviewPolicy,
    *,
    run_id: str = "",
    run_parts: set[str] | None = None,
    top: int = 25,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> NightQueue:
    """Rank every scored bin not ranked yet as tonight's queue and publish it.

    ``run_parts`` (the scores part keys this run wrote) tells carried-over bins from tonight's.
    """
    applied = apply_pending_decisions(output)
    decided = decide_queue(output, policy, run_id=run_id, clock=clock)
    if decided is None:
        queue_id, today = _queue_id([]), f"{clock():%Y-%m-%d}"
        start_table(output, REVIEW_QUEUE, queue_id, partition={"queued_date": today})
        _start_outcomes(output, queue_id, today)
        return NightQueue(None, 0, 0, 0, 0, policy.model_dump(), decisions_applied=applied)
    key, ranked, decision = decided
    flagged = _apply(output, key, ranked)
    parts = set(ranked.column("part_key").to_pylist())
    return NightQueue(
        queue_id=ranked.column("queue_id")[0].as_py(),
        ranked=ranked.num_rows,
        judged=decision.judged,
        budget=decision.budget,
        flagged=flagged.num_rows,
        policy=policy.model_dump(),
        carried_over=0 if run_parts is None else len(parts - run_parts),
        decisions_applied=applied,
        top=flagged.slice(0, top).to_pylist(),
    )


def decide_queue(
    output: Location,
    policy: ReviewPolicy,
    *,
    run_id: str = "",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[str, pa.Table, QueueDecision] | None:
    """Rank the unranked scores and write the decision (the queue's commit point); None when
    there is nothing to rank. Returns the decision's key, its rows and the ranking."""
    pending = unranked_scores(output)
    if not pending.num_rows:
        return None
    now = clock()
    ids = pending.column("image_id").to_pylist()
    p_recorded = np.array(
        [np.nan if p is None else p for p in pending.column("p_recorded").to_pylist()]
    )
    decision = rank_queue(p_recorded, ids, policy)
    queue_id = _queue_id(pending.column("image_uri").to_pylist())
    n = pending.num_rows
    ranked = pending.select([*_QUEUE_COLUMNS, "part_key"]).rename_columns(
        [*_QUEUE_COLUMNS[:-1], "scored_run_id", "part_key"]
    )
    for name, values, kind in (
        ("review_rank", decision.review_rank, pa.int32()),
        ("needs_review", decision.needs_review, pa.bool_()),
        ("queue_id", [queue_id] * n, pa.string()),
        ("queue_run_id", [run_id] * n, pa.string()),
        ("budget", [decision.budget] * n, pa.int32()),
        ("max_p_recorded", [policy.max_p_recorded] * n, pa.float32()),
        ("queued_at", [now] * n, pa.timestamp("us", tz="UTC")),
    ):
        ranked = ranked.append_column(name, pa.array(values, kind))
    key = f"{DECISIONS}/{queue_id}.parquet"
    output.write_parquet(key, ranked)
    logger.info(
        "queue %s: %d bins ranked (%d judged), %d flagged of a budget of %d",
        queue_id,
        n,
        decision.judged,
        decision.flagged,
        decision.budget,
    )
    return key, ranked, decision


def unranked_scores(output: Location) -> pa.Table:
    """Scores rows whose night has not been ranked (``needs_review`` null), with their part key."""
    if not output.exists(SCORES):
        return pa.table({})
    rows = read_table(
        output,
        SCORES,
        columns=[*_QUEUE_COLUMNS, "__filename"],
        filter=ds.field("needs_review").is_null(),
    )
    root = output.path() + "/"
    keys = [name.removeprefix(root) for name in rows.column("__filename").to_pylist()]
    return rows.drop_columns(["__filename"]).append_column("part_key", pa.array(keys, pa.string()))


def apply_pending_decisions(output: Location) -> int:
    """Finish the decisions an earlier run wrote but did not apply; how many there were."""
    keys = [k for k in output.list_files(DECISIONS) if k.endswith(".parquet")]
    for key in keys:
        logger.warning("applying the review-queue decision %s of a run that stopped midway", key)
        _apply(output, key, output.read_parquet(key))
    return len(keys)


def _apply(output: Location, decision_key: str, ranked: pa.Table) -> pa.Table:
    """Publish a decision: the queue's flagged rows, then each scores part with its ranks."""
    flagged = ranked.filter(ranked.column("needs_review")).sort_by("review_rank")
    queue_id = ranked.column("queue_id")[0].as_py()
    queued_date = f"{ranked.column('queued_at')[0].as_py():%Y-%m-%d}"
    # Written with no rows too: a night that flags nothing is a fact worth keeping.
    write_part(output, REVIEW_QUEUE, queue_id, flagged, partition={"queued_date": queued_date})
    _start_outcomes(output, queue_id, queued_date)
    for part_key in sorted(set(ranked.column("part_key").to_pylist())):
        _rank_part(output, part_key, ranked)
    output.delete([decision_key])
    return flagged


def _start_outcomes(output: Location, queue_id: str, queued_date: str) -> None:
    """``review_outcomes`` with no rows, unless it has a part (the module's docstring)."""
    start_table(output, REVIEW_OUTCOMES, queue_id, partition={"reviewed_date": queued_date})


def _rank_part(output: Location, part_key: str, ranked: pa.Table) -> None:
    part = output.read_parquet(part_key)
    mine = ranked.filter(pc.equal(ranked.column("part_key"), part_key))
    where = pc.index_in(part.column("image_uri"), value_set=mine.column("image_uri"))
    if where.null_count:
        raise ValueError(
            f"Expected every row of {part_key} in the queue's decision, but "
            f"{where.null_count} are missing"
        )
    for name in ("review_rank", "needs_review"):
        values = pc.take(mine.column(name), where)
        position = part.schema.get_field_index(name)
        part = part.set_column(
            position, part.schema.field(name), values.cast(part.schema.field(name).type)
        )
    output.write_parquet(part_key, part)


def _queue_id(image_uris: list[str]) -> str:
    """The queue named by its bins, as chunk parts are (a rerun of a decision rewrites it)."""
    return part_name(sorted(image_uris))


def measure_against_truth(
    output: Location, truth: Location, image_ids: list[str]
) -> QueueAgainstTruth:
    """The queue of ``image_ids`` (one night's bins) against a synthetic bucket's truth table
    (``bincount synth --truth``), which no flow reads."""
    wanted = pa.array(image_ids, pa.string())
    scores = read_table(
        output,
        SCORES,
        columns=["image_id", "expected_quantity", "p_recorded", "needs_review"],
        filter=ds.field("image_id").isin(wanted) & ds.field("p_recorded").is_valid(),
    ).to_pylist()
    truth_rows = pa.concat_tables(_truth_parts(truth)).to_pylist()
    true_counts = {row["image_id"]: row["true_count"] for row in truth_rows}
    return queue_against_truth(
        {row["image_id"]: bool(row["needs_review"]) for row in scores},
        {row["image_id"]: row["expected_quantity"] for row in scores},
        true_counts,
    )


def _truth_parts(truth: Location) -> list[pa.Table]:
    keys = [k for k in truth.list_files("") if k.endswith(".parquet")]
    if not keys:
        raise FileNotFoundError(f"Expected truth tables (part-*.parquet) in {truth.uri()}")
    return [truth.read_parquet(key) for key in keys]
