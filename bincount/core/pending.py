"""The ``pending`` table: objects a stage could not read, to be read again by its next run.

``<output>/pending/stage=<stage>/part-<id>.parquet`` (contract
``data_contracts/schemas/pending.json``). A chunk that leaves objects unread writes one part
with a row each (``tries`` 1) before its commit marker; :func:`settle_pending` then folds every
part of a stage into one row per object (first and last seen, tries summed) and drops the
objects now done, so an object is listed once however many nights it waits. Pending rows are
never read as done: the watermarks are the marker tables and the quarantine alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.chunks import Reason, Stage, part_name, stored_reason
from bincount.core.contracts import table_contract
from bincount.core.storage import Location
from bincount.core.tables import part_key, read_table, write_part

logger = logging.getLogger(__name__)

PENDING = "pending"


def pending_row(
    stage: Stage,
    object_key: str,
    why: Reason,
    *,
    image_id: str | None,
    etag: str | None = None,
    run_id: str,
    now: datetime,
    tries: int = 1,
) -> dict:
    """One object left pending at ``stage``: why, by which run, when."""
    return {
        "stage": Stage(stage).value,
        "object_key": object_key,
        "image_id": image_id,
        "etag": etag,
        "reason_code": why.code,
        "reason": stored_reason(why),
        "exception_type": why.exception_type,
        "first_seen": now,
        "last_seen": now,
        "tries": tries,
        "run_id": run_id or "unknown",
    }


def record_pending(output: Location, stage: Stage, name: str, rows: Sequence[dict]) -> str | None:
    """Write one chunk's pending rows as part ``name`` of the stage (nothing when none)."""
    if not rows:
        return None
    return write_part(output, PENDING, name, list(rows), partition=Stage(stage).partition)


def read_pending(output: Location, stage: Stage | None = None) -> pa.Table:
    """The pending rows (of one stage, or all), folded one per object."""
    table = read_table(output, PENDING)
    if stage is not None:
        table = table.filter(pc.equal(table.column("stage"), Stage(stage).value))
    return fold(table)


def pending_keys(output: Location, stage: Stage) -> set[str]:
    """The object keys (ingest) or URIs (images, score) pending at ``stage``."""
    return set(read_pending_parts(output, stage).column("object_key").to_pylist())


def fold(table: pa.Table) -> pa.Table:
    """One row per (stage, object_key, etag): first seen earliest, last seen latest, tries
    summed, reason and run of the latest try."""
    merged: dict[tuple, dict] = {}
    for row in table.sort_by([("last_seen", "ascending")]).to_pylist():
        key = (row["stage"], row["object_key"], row["etag"])
        before = merged.get(key)
        if before is not None:
            row["first_seen"] = min(before["first_seen"], row["first_seen"])
            row["tries"] += before["tries"]
        merged[key] = row
    schema = table_contract(PENDING).schema
    return pa.Table.from_pylist(list(merged.values()), schema=schema)


def settle_pending(output: Location, stage: Stage, done: pa.Table) -> int:
    """Fold the stage's pending parts into one, without the objects in ``done`` (a table of
    ``object_key`` and, for ingest, ``etag``: what the stage's watermark holds); how many stay.
    """
    stage = Stage(stage)
    folder = f"{PENDING}/stage={stage.value}"
    keys = [key for key in output.list_files(folder) if key.endswith(".parquet")]
    if not keys:
        return 0
    rows = fold(read_pending_parts(output, stage))
    columns = [name for name in ("object_key", "etag") if name in done.column_names]
    if rows.num_rows and done.num_rows:
        wanted = rows.select(columns).cast(pa.schema([(c, pa.string()) for c in columns]))
        done = done.select(columns).cast(wanted.schema)
        rows = rows.append_column("__row", pa.array(range(rows.num_rows), pa.int64()))
        gone = wanted.append_column("__row", rows.column("__row")).join(
            done, keys=columns, join_type="left semi"
        )
        rows = rows.filter(pc.invert(pc.is_in(rows.column("__row"), gone.column("__row"))))
        rows = rows.drop_columns(["__row"])
    identities = (f"{row['object_key']}\x1f{row['etag']}" for row in rows.to_pylist())
    name = part_name(identities, namespace=stage.value)
    written = (
        write_part(output, PENDING, f"settled-{name}", rows, partition=stage.partition)
        if rows.num_rows
        else None
    )
    # The folded part is written before the parts it replaces are deleted: a run stopped in
    # between counts some tries twice, but loses no pending object.
    output.delete([key for key in keys if key != written])
    if len(keys) > 1 or rows.num_rows:
        logger.info("%s: %d objects pending (not read yet)", stage, rows.num_rows)
    return rows.num_rows


def read_pending_parts(output: Location, stage: Stage) -> pa.Table:
    """Every pending row of a stage as written (not folded)."""
    table = read_table(output, PENDING)
    return table.filter(pc.equal(table.column("stage"), Stage(stage).value))


def pending_key(stage: Stage, name: str) -> str:
    """Where a chunk's pending part is written."""
    return part_key(PENDING, name, Stage(stage).partition)
