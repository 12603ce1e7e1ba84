"""The exactly-once chunk protocol every writing stage follows, and the quarantine's one row.

A stage (ingest, scoring, the image cache) cuts its work into chunks and commits each one as
part files that share one name:

* the name is derived from the chunk's content (:func:`part_name`), so a retried chunk rewrites
  the same files instead of adding new ones;
* a chunk writes its companion parts first (its quarantine rows, the ``items`` of ingest) and
  its *marker* part last: the marker (empty when nothing of the chunk got through) is the
  chunk's commit point;
* a run killed between those writes leaves companions without their marker; the next run
  deletes them (:meth:`ChunkProtocol.discard_uncommitted`) before it reads what is already
  done, then does that chunk again;
* what is done is read from the marker table and the stage's quarantine together
  (:meth:`ChunkProtocol.done`): an object either became a row or a reason, never both, never
  neither;
* the tables exist from a stage's first run, empty when it wrote nothing: its first chunk
  writes the stage's quarantine part even with no rows, and a first run with no chunk at all
  commits one empty chunk (:meth:`ChunkProtocol.commit_nothing`).

Validation is not chunked (each run replaces its stage's quarantine as one snapshot) but its
rows are built by the same :func:`quarantine_row`, with the same :class:`Stage` names.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.core.tables import QUARANTINE, part_key, part_names, read_table, write_part

logger = logging.getLogger(__name__)

T = TypeVar("T", list, pa.Table)


class Stage(StrEnum):
    """Where an object was kept out: the ``stage`` column and partition of the quarantine."""

    INGEST = "ingest"
    VALIDATE = "validate"
    IMAGES = "images"
    SCORE = "score"

    @property
    def partition(self) -> dict[str, str]:
        """The stage's quarantine partition, ``{"stage": "<stage>"}``."""
        return {"stage": self.value}


class Reason(Protocol):
    """Why an object was kept out: a stable code, a sentence, the error that decided it.
    :class:`~bincount.data.metadata.MalformedMetadata` and
    :class:`~bincount.images.decode.UndecodableImage` are reasons; so is :class:`Rejection`."""

    code: str
    reason: str
    exception_type: str | None


@dataclass(frozen=True)
class Rejection:
    """A reason that is not an exception: an expectation that failed, an unforeseen error."""

    code: str
    reason: str
    exception_type: str | None = None
    expectation: str | None = None


def stored_reason(why: Reason) -> str:
    """A reason's text as a table keeps it: a reason may quote hostile text (a lone surrogate),
    and must still be valid UTF-8."""
    return why.reason.encode("utf-8", "backslashreplace").decode("utf-8")


def quarantine_row(
    stage: Stage,
    object_key: str,
    why: Reason,
    *,
    image_id: str | None,
    etag: str | None = None,
    run_id: str,
    now: datetime,
) -> dict:
    """One row of the quarantine: what was kept out at ``stage``, why, and by which run."""
    return {
        "stage": Stage(stage).value,
        "object_key": object_key,
        "image_id": image_id,
        "etag": etag,
        "reason_code": why.code,
        "reason": stored_reason(why),
        "exception_type": why.exception_type,
        "expectation": getattr(why, "expectation", None),
        "run_id": run_id,
        "quarantined_at": now,
    }


# -- planning ------------------------------------------------------------------------------------
def check_plan_arguments(*, limit: int | None, chunk_size: int) -> None:
    """Raise on a limit or chunk size no plan can honour."""
    if limit is not None and limit < 0:
        raise ValueError(f"Expected limit >= 0, but got {limit}")
    if chunk_size < 1:
        raise ValueError(f"Expected chunk_size >= 1, but got {chunk_size}")


def cut(todo: T, chunk_size: int, *, limit: int | None = None) -> list[T]:
    """The first ``limit`` items of ``todo`` (a list or an Arrow table, already in order) in
    chunks of ``chunk_size``; an Arrow table is cut into zero-copy slices."""
    check_plan_arguments(limit=limit, chunk_size=chunk_size)
    if isinstance(todo, pa.Table):
        todo = todo.slice(0, limit) if limit is not None else todo
        return [todo.slice(i, chunk_size) for i in range(0, todo.num_rows, chunk_size)]
    todo = todo[:limit] if limit is not None else todo
    return [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]


def part_name(identities: Iterable[str | Sequence[str]], *, namespace: str | None = None) -> str:
    """A name derived from a chunk's content (each item's identity: a string, or fields such as
    key and ETag), so a retried chunk rewrites the same files. ``namespace`` (a source) keeps
    equal items of two namespaces in two parts.

    >>> part_name(["bin-images/00001.jpg"]) == part_name(["bin-images/00001.jpg"])
    True
    >>> part_name([("k", "e")], namespace="s3://a") != part_name([("k", "e")], namespace="s3://b")
    True
    """
    digest = hashlib.sha256()
    if namespace is not None:
        digest.update(f"{namespace}\x1d".encode())
    for identity in identities:
        fields = (identity,) if isinstance(identity, str) else identity
        digest.update(("\x1f".join(fields) + "\x1e").encode())
    return digest.hexdigest()[:20]


def totals(outcomes: Iterable[object], *names: str) -> dict[str, float]:
    """The sum of each counter ``names`` over a run's chunk outcomes (dataclasses)."""
    outcomes = list(outcomes)
    return {name: sum(getattr(outcome, name) for outcome in outcomes) for name in names}


# -- where parts live ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """One kind of part file, ``<table>/[<partition>/]part-<name>.parquet``: a contract table
    (written conformed to it) or a plain folder (``contract=False``). ``partition`` None means
    every partition beneath the table."""

    table: str
    partition: Mapping[str, str] | None = None
    contract: bool = True
    belongs: Callable[[str], bool] = field(default=lambda name: True, compare=False)

    def key(self, name: str, partition: Mapping[str, str] | None = None) -> str:
        return part_key(self.table, name, dict(partition or self.partition or {}))

    def names(self, output: Location) -> set[str]:
        """The names of the parts written here that belong to this protocol."""
        found = part_names(output, self.table, dict(self.partition) if self.partition else None)
        return {name for name in found if self.belongs(name)}

    def keys(self, output: Location) -> dict[str, str]:
        """Each part's name and key (every partition beneath when ``partition`` is None)."""
        folder = posixpath.dirname(self.key("x"))
        keys = {}
        for key in output.list_files(folder):
            base = posixpath.basename(key)
            if not base.startswith("part-") or not base.endswith(".parquet"):
                continue
            if self.partition is not None and posixpath.dirname(key) != folder:
                continue
            name = base.removeprefix("part-").removesuffix(".parquet")
            if self.belongs(name):
                keys[name] = key
        return keys

    def write(
        self,
        output: Location,
        name: str,
        rows: pa.Table | list[dict],
        partition: Mapping[str, str] | None = None,
    ) -> str:
        where = dict(partition or self.partition or {})
        if self.contract:
            return write_part(output, self.table, name, rows, partition=where or None)
        key = self.key(name, where)
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
        output.write_parquet(key, table)
        return key


# -- the protocol --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkProtocol:
    """How one stage commits its chunks exactly once: the ``marker`` parts commit a chunk, the
    ``companions`` and the stage's quarantine are written before it."""

    stage: Stage
    marker: Parts
    companions: tuple[Parts, ...] = ()
    # Quarantine parts this protocol owns (a stage shared by several caches names its own).
    owns: Callable[[str], bool] = field(default=lambda name: True, compare=False)

    @property
    def quarantine(self) -> Parts:
        return Parts(QUARANTINE, self.stage.partition, belongs=self.owns)

    def committed(self, output: Location) -> set[str]:
        """The names of the chunks committed (their marker part landed)."""
        return self.marker.names(output)

    def discard_uncommitted(self, output: Location) -> int:
        """Delete the companion and quarantine parts of chunks whose marker never landed (a run
        that stopped midway); how many were deleted."""
        committed = self.committed(output)
        orphans = [
            key
            for parts in (*self.companions, self.quarantine)
            for name, key in sorted(parts.keys(output).items())
            if name not in committed
        ]
        if orphans:
            logger.warning(
                "%s: discarding %d parts of a run that stopped midway", self.stage, len(orphans)
            )
            output.delete(orphans)
        return len(orphans)

    def done(
        self, output: Location, marker_columns: Sequence[str], quarantine_columns: Sequence[str]
    ) -> pa.Table:
        """What is already done: the identity of every item in the marker table or in the
        stage's quarantine, as string columns named ``marker_columns``."""
        marker = read_table(output, self.marker.table, columns=list(marker_columns))
        rejected = read_table(output, QUARANTINE, columns=["stage", *quarantine_columns])
        rejected = rejected.filter(pc.equal(rejected.column("stage"), self.stage.value))
        schema = pa.schema([(name, pa.string()) for name in marker_columns])
        return pa.concat_tables(
            [
                marker.select(list(marker_columns)).cast(schema),
                rejected.select(list(quarantine_columns))
                .rename_columns(list(marker_columns))
                .cast(schema),
            ]
        )

    def commit(
        self,
        output: Location,
        name: str,
        marker_rows: pa.Table | list[dict],
        *,
        rejects: Sequence[dict] = (),
        companions: Mapping[str, pa.Table | list[dict]] | None = None,
        marker_partition: Mapping[str, str] | None = None,
    ) -> str:
        """Write one chunk: its companions (by table), its quarantine rows (when any), and its
        marker part last. Returns the marker's key."""
        given = dict(companions or {})
        unknown = set(given) - {parts.table for parts in self.companions}
        if unknown:
            raise ValueError(
                f"Expected companions among {[p.table for p in self.companions]}, "
                f"but got {sorted(unknown)}"
            )
        for parts in self.companions:
            if parts.table in given:
                parts.write(output, name, given[parts.table])
        # The stage's first chunk starts its quarantine partition even when it keeps nothing
        # out: "nothing was kept out" then reads as zero rows, not as a missing table. Named
        # after the chunk, the part is committed (or discarded) with it like any other.
        if rejects or not part_names(output, QUARANTINE, self.stage.partition):
            self.quarantine.write(output, name, list(rejects))
        return self.marker.write(output, name, marker_rows, marker_partition)

    def commit_nothing(
        self, output: Location, name: str, *, marker_partition: Mapping[str, str] | None = None
    ) -> str | None:
        """Commit one chunk of no objects, when the marker table has no part yet: a stage's first
        run that finds nothing to do still leaves its tables (zero rows, the contract's schema)
        for readers. Returns the marker's key, or None when the table had a part already."""
        if self.marker.names(output):
            return None
        empty = {parts.table: [] for parts in self.companions}
        return self.commit(output, name, [], companions=empty, marker_partition=marker_partition)
