"""The operator's view of what was kept out (quarantine) or waits (pending), and replay.

A quarantine row is a verdict on one object version and part of its stage's watermark
(:meth:`~bincount.core.chunks.ChunkProtocol.done`): the stage never reads it again. When the
verdict was the platform's own limit (``image_too_many_pixels`` before ``max_image_pixels`` was
raised), an operator *replays* a reason or a stage: the chosen rows leave the quarantine and
become pending rows (``replayed_<code>``, tries 0), so the next run of the stage reads them
again. An object that fails the same way again gets a new quarantine row, its only one: a
replay removes the rows it replays rather than marking them, so every reader of the quarantine
(the watermarks, validation, the view) sees live rows only, and the ``replays`` table keeps
the history (when, which stage and reason, how many, by which run).

Writes, in an order a stopped replay cannot lose objects by: the pending rows first (settled
away as done while their rows are still quarantined), then each quarantine part rewritten
without the replayed rows (the objects are now outside the watermark), then the ``replays``
record. For the training image cache a replayed shard is also uncommitted (its index part and
the cache's ``_complete.json`` removed), so the next build decodes that shard again.
Validation is not replayed: each run checks every current bin afresh.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.chunks import Parts, Stage, part_name
from bincount.core.faults import FAULT_CODES, kind
from bincount.core.pending import PENDING, fold, pending_row, record_pending
from bincount.core.storage import Location
from bincount.core.tables import QUARANTINE, read_table, write_part

REPLAYS = "replays"
REPLAYED_PREFIX = "replayed_"
# Validation replaces its quarantine on every run: there is nothing to replay.
REPLAYABLE = (Stage.INGEST, Stage.IMAGES, Stage.SCORE)


@dataclass(frozen=True)
class Replayed:
    """Why a replayed object is pending: an operator asked for it to be read again."""

    code: str
    reason: str
    exception_type: str | None = None


@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay made pending again, by (stage, reason code)."""

    replay_id: str
    run_id: str
    replayed_at: datetime
    counts: dict[tuple[str, str], int]
    uncommitted_shards: int = 0

    @property
    def objects(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {
            "replay_id": self.replay_id,
            "run_id": self.run_id,
            "replayed_at": self.replayed_at.isoformat(),
            "objects": self.objects,
            "by_stage_and_reason": [
                {"stage": stage, "reason_code": code, "objects": n}
                for (stage, code), n in sorted(self.counts.items())
            ],
            "uncommitted_shards": self.uncommitted_shards,
        }


# -- the view ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuarantineView:
    """Counts by stage and reason of the quarantine and the pending objects, and the replays."""

    groups: list[dict] = field(default_factory=list)
    replays: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"groups": self.groups, "replays": self.replays}

    def to_text(self) -> str:
        """The view as an operator reads it in a terminal."""
        if not self.groups:
            lines = ["nothing quarantined, nothing pending"]
        else:
            lines = [f"{'table':<11}{'stage':<10}{'reason':<28}{'kind':<9}{'objects':>8}  since"]
            lines += [
                f"{g['table']:<11}{g['stage']:<10}{g['reason_code']:<28}{g['kind']:<9}"
                f"{g['objects']:>8}  {g['since']:%Y-%m-%d %H:%M}"
                for g in self.groups
            ]
        if self.replays:
            lines += ["", "replays (newest first):"]
            lines += [
                f"  {r['replayed_at']:%Y-%m-%d %H:%M:%S} {r['stage']} {r['reason_code']}: "
                f"{r['objects']} objects (run {r['run_id']})"
                for r in self.replays
            ]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The view as a Prefect markdown artifact."""
        lines = ["## Quarantine and pending objects", ""]
        if not self.groups:
            lines.append("Nothing quarantined, nothing pending.")
        else:
            lines += [
                "| table | stage | reason | kind | objects | since |",
                "|---|---|---|---|---:|---|",
            ]
            lines += [
                f"| {g['table']} | {g['stage']} | `{g['reason_code']}` | {g['kind']} | "
                f"{g['objects']:,} | {g['since']:%Y-%m-%d %H:%M} |"
                for g in self.groups
            ]
        if self.replays:
            lines += ["", "### Replays", "", "| when | stage | reason | objects | run |"]
            lines += ["|---|---|---|---:|---|"]
            lines += [
                f"| {r['replayed_at']:%Y-%m-%d %H:%M:%S} | {r['stage']} | "
                f"`{r['reason_code']}` | {r['objects']:,} | {r['run_id']} |"
                for r in self.replays
            ]
        return "\n".join(lines)


def quarantine_view(output: Location) -> QuarantineView:
    """What the quarantine holds and what is pending, by stage and reason, and every replay."""
    groups = []
    quarantine = read_table(output, QUARANTINE, columns=["stage", "reason_code", "quarantined_at"])
    for (stage, code), since in _grouped(quarantine, "quarantined_at").items():
        groups.append(_group("quarantine", stage, code, since, kind=kind(code)))
    pending = fold(read_table(output, PENDING))
    for (stage, code), since in _grouped(pending, "first_seen").items():
        what = "replayed" if code.startswith(REPLAYED_PREFIX) else kind(code)
        groups.append(_group("pending", stage, code, since, kind=what))
    replays = read_table(output, REPLAYS).sort_by([("replayed_at", "descending")]).to_pylist()
    return QuarantineView(groups=groups, replays=replays)


def _grouped(table: pa.Table, time_column: str) -> dict[tuple[str, str], tuple[int, datetime]]:
    """(stage, reason_code) -> (rows, earliest ``time_column``), in stage and code order."""
    if table.num_rows == 0:
        return {}
    stats = table.group_by(["stage", "reason_code"]).aggregate(
        [("reason_code", "count"), (time_column, "min")]
    )
    rows = sorted(stats.to_pylist(), key=lambda r: (r["stage"], r["reason_code"]))
    return {
        (r["stage"], r["reason_code"]): (r["reason_code_count"], r[f"{time_column}_min"])
        for r in rows
    }


def _group(table: str, stage: str, code: str, since: tuple, *, kind: str) -> dict:
    objects, first = since
    return {
        "table": table,
        "stage": stage,
        "reason_code": code,
        "kind": kind,
        "objects": objects,
        "since": first,
    }


# -- replay --------------------------------------------------------------------------------------
def replay_stages(stage: str | None) -> tuple[Stage, ...]:
    """The stages a replay covers: the one named, or every replayable stage; raise on a name
    that is no stage, or on the validate stage."""
    if stage is None:
        return REPLAYABLE
    names = [s.value for s in REPLAYABLE]
    if stage == Stage.VALIDATE.value:
        raise ValueError(
            "Expected a stage to replay among "
            f"{', '.join(names)}, but got 'validate': validation checks every current bin "
            "afresh on each run, so run `bincount validate` again instead"
        )
    if stage not in names:
        raise ValueError(f"Expected a stage to replay among {', '.join(names)}, but got {stage!r}")
    return (Stage(stage),)


def replay_quarantine(
    output: Location,
    *,
    stage: str | None = None,
    reason: str | None = None,
    run_id: str,
    now: datetime,
) -> ReplayOutcome:
    """Make the quarantined objects of ``stage`` (every replayable one when None) with reason
    ``reason`` (every reason when None) pending again; raise on a selection that names nothing
    quarantined, with what is there."""
    if stage is None and reason is None:
        raise ValueError("Expected a reason or a stage to replay, but got neither")
    if reason is not None and reason in FAULT_CODES:
        raise ValueError(
            f"Expected a reason code of a verdict to replay, but got {reason!r}: a fault of "
            "reading is never quarantined; those objects are pending and read by the next run"
        )
    stages = replay_stages(stage)
    chosen = {s: _chosen_parts(output, s, reason) for s in stages}
    counts: dict[tuple[str, str], int] = {}
    for s, parts in chosen.items():
        for _, _, rows in parts:
            for code in rows.column("reason_code").to_pylist():
                counts[(s.value, code)] = counts.get((s.value, code), 0) + 1
    if not counts:
        raise ValueError(_nothing_to_replay(output, stages, reason))
    replay_id = part_name([run_id, now.isoformat()], namespace=REPLAYS)
    uncommitted = 0
    for s, parts in chosen.items():
        if not parts:
            continue
        rows = pa.concat_tables([rows for _, _, rows in parts])
        record_pending(output, s, f"replay-{replay_id}", _pending_rows(s, rows, run_id, now))
        for name, key, replayed in parts:
            _rewrite_without(output, s, name, key, replayed)
        if s is Stage.IMAGES:
            uncommitted += _uncommit_shards(output, [name for name, _, _ in parts])
    record = [
        {
            "replay_id": replay_id,
            "stage": s,
            "reason_code": code,
            "objects": n,
            "replayed_at": now,
            "run_id": run_id,
        }
        for (s, code), n in sorted(counts.items())
    ]
    write_part(output, REPLAYS, replay_id, record)
    return ReplayOutcome(replay_id, run_id, now, counts, uncommitted_shards=uncommitted)


def _chosen_parts(
    output: Location, stage: Stage, reason: str | None
) -> list[tuple[str, str, pa.Table]]:
    """(part name, key, rows chosen) of each quarantine part of ``stage`` holding rows with
    ``reason`` (every row when None)."""
    chosen = []
    for name, key in sorted(Parts(QUARANTINE, stage.partition).keys(output).items()):
        rows = output.read_parquet(key)
        if reason is not None:
            rows = rows.filter(pc.equal(rows.column("reason_code"), reason))
        if rows.num_rows:
            chosen.append((name, key, rows))
    return chosen


def _pending_rows(stage: Stage, rows: pa.Table, run_id: str, now: datetime) -> list[dict]:
    pending = []
    for row in rows.to_pylist():
        why = Replayed(
            f"{REPLAYED_PREFIX}{row['reason_code']}",
            f"Replayed by an operator (run {run_id}) to be read again; quarantined before "
            f"as {row['reason_code']}: {row['reason']}",
        )
        pending.append(
            pending_row(
                stage,
                row["object_key"],
                why,
                image_id=row["image_id"],
                etag=row["etag"],
                run_id=run_id,
                now=now,
                tries=0,
            )
        )
    return pending


def _rewrite_without(
    output: Location, stage: Stage, name: str, key: str, replayed: pa.Table
) -> None:
    """The quarantine part ``name`` without the ``replayed`` rows (with no rows when none stay:
    a table once written stays readable, and a replay of everything leaves it empty)."""
    rows = output.read_parquet(key)
    gone = set(_identities(replayed))
    keep = [identity not in gone for identity in _identities(rows)]
    kept = rows.filter(pa.array(keep, pa.bool_()))
    # The same name, rewritten whole: the chunk's marker still commits it.
    write_part(output, QUARANTINE, name, kept, partition=stage.partition)


def _identities(rows: pa.Table) -> list[tuple[str, str | None]]:
    """Each row's object version: key (or URI) and ETag."""
    columns = (rows.column("object_key").to_pylist(), rows.column("etag").to_pylist())
    return list(zip(*columns, strict=True))


def _uncommit_shards(output: Location, names: Sequence[str]) -> int:
    """Remove the index part of each image-cache shard named (``<manifest>-<size>-<shard>-
    <content>``) and its cache's ``_complete.json``: the next build decodes those shards again.
    """
    removed = []
    for name in names:
        manifest_version, size, _, _ = name.rsplit("-", 3)
        folder = f"cache/{manifest_version}/{size}"
        removed += [posixpath.join(folder, "_shards", f"part-{name}.parquet")]
        removed += [posixpath.join(folder, "_complete.json")]
    present = sorted({key for key in removed if output.exists(key)})
    output.delete(present)
    return sum(1 for key in present if key.endswith(".parquet"))


def _nothing_to_replay(output: Location, stages: Sequence[Stage], reason: str | None) -> str:
    quarantine = read_table(output, QUARANTINE, columns=["stage", "reason_code"])
    wanted = pc.is_in(quarantine.column("stage"), pa.array([s.value for s in stages]))
    there = _grouped_counts(quarantine.filter(wanted))
    where = ", ".join(s.value for s in stages)
    listed = ", ".join(f"{s}/{c}: {n}" for (s, c), n in there.items()) or "nothing"
    asked = f"reason {reason!r}" if reason is not None else "any reason"
    return (
        f"Expected quarantined objects with {asked} at {where} to replay, but the quarantine "
        f"there holds {listed}"
    )


def _grouped_counts(table: pa.Table) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for row in table.to_pylist():
        key = (row["stage"], row["reason_code"])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
