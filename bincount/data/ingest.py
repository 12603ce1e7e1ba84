"""Incremental ingestion of ABID metadata objects into the ``bins``, ``items`` and ``quarantine``
tables.

Exactly-once by construction:

* an object version (key, ETag) is ingested when it appears in ``bins`` or in the ingest
  quarantine; those two tables are the watermark, so a rerun skips it;
* each chunk of objects is written as three part files sharing one name, ``items`` and
  ``quarantine`` first and ``bins`` last: the ``bins`` part (empty if every object of the chunk
  was quarantined) is the chunk's commit marker;
* a run killed between those writes leaves ``items``/``quarantine`` parts without their ``bins``
  part; the next run deletes them before it reads the watermark, then fetches the chunk again;
* an object that could not be read (access denied, gone since listed) is no verdict: it becomes
  a ``pending`` row, outside the watermark, and the next run reads it again
  (:mod:`bincount.core.pending`); when most of a chunk cannot be read for one fault the run
  stops (:class:`~bincount.core.faults.SourceUnreadable`) before the chunk commits.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.chunks import (
    ChunkProtocol,
    Parts,
    Stage,
    check_plan_arguments,
    cut,
    part_name,
    totals,
)
from bincount.core.faults import check_faults, raise_if_tripped, read_fault
from bincount.core.limits import MetadataLimits
from bincount.core.pending import pending_keys, pending_row, record_pending, settle_pending
from bincount.core.storage import Location
from bincount.core.tables import BINS, ITEMS
from bincount.data.metadata import (
    METADATA_PREFIX,
)
from bincount.data.records import image_id_or_none, rows_from_objects

logger = logging.getLogger(__name__)

# A chunk writes its items and quarantine parts, then its bins part: the commit marker.
INGEST = ChunkProtocol(Stage.INGEST, marker=Parts(BINS), companions=(Parts(ITEMS),))


@dataclass(frozen=True)
class IngestSummary:
    """What one ingestion run did."""

    run_id: str
    listed: int
    already_ingested: int
    new: int
    ingested: int
    quarantined: int
    seconds: float
    parts: list[str] = field(default_factory=list)
    requested_missing: int = 0
    discarded_orphan_parts: int = 0
    pending: int = 0

    @property
    def objects_per_second(self) -> float:
        return (self.ingested + self.quarantined) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "listed": self.listed,
            "already_ingested": self.already_ingested,
            "new": self.new,
            "ingested": self.ingested,
            "quarantined": self.quarantined,
            "pending": self.pending,
            "requested_missing": self.requested_missing,
            "discarded_orphan_parts": self.discarded_orphan_parts,
            "seconds": round(self.seconds, 3),
            "objects_per_second": round(self.objects_per_second, 1),
        }


@dataclass(frozen=True)
class IngestPlan:
    """The object versions to ingest, as chunks of the Arrow listing, and what was left out."""

    listed: int
    already_ingested: int
    chunks: list[pa.Table]
    started_at: datetime
    requested_missing: int = 0
    discarded_orphan_parts: int = 0

    @property
    def new(self) -> int:
        return sum(chunk.num_rows for chunk in self.chunks)


@dataclass(frozen=True)
class ChunkOutcome:
    """One committed chunk: its part name and how many objects became bins or quarantine, or
    stay pending (not read)."""

    part: str
    ingested: int
    quarantined: int
    pending: int = 0


def plan_ingest(
    source: Location,
    output: Location,
    *,
    limit: int | None = None,
    keys: Sequence[str] | None = None,
    partitions: int = 16,
    chunk_size: int = 5000,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IngestPlan:
    """List the metadata objects, leave out the versions already ingested, cut the rest. A first
    ingest with nothing to ingest commits one empty chunk: it decides bins, items and the ingest
    quarantine, which exist from then on (zero rows) for every reader."""
    check_plan_arguments(limit=limit, chunk_size=chunk_size)
    started_at = clock()
    orphans = INGEST.discard_uncommitted(output)
    done = ingested_versions(output)
    settle_pending(output, Stage.INGEST, done.rename_columns(["object_key", "etag"]))
    listing = source.list(METADATA_PREFIX, partitions=partitions)
    listed = listing.num_rows
    requested_missing = 0
    if keys is not None:
        wanted = pa.array(sorted(set(keys)), pa.string())
        requested_missing = len(wanted) - pc.sum(pc.is_in(wanted, listing.column("key"))).as_py()
        listing = listing.filter(pc.is_in(listing.column("key"), wanted))
    new = listing.join(done, keys=["key", "etag"], join_type="left anti").sort_by("key")
    already = listing.num_rows - new.num_rows
    # Slices of the Arrow listing: a chunk becomes Python objects only when it is ingested.
    chunks = cut(new, chunk_size, limit=limit)
    if not chunks:
        INGEST.commit_nothing(output, chunk_id([], source.url))
    logger.info(
        "listed %d metadata objects under %s: %d already ingested, %d to ingest",
        listed,
        source.uri(METADATA_PREFIX),
        already,
        sum(chunk.num_rows for chunk in chunks),
    )
    return IngestPlan(
        listed=listed,
        already_ingested=already,
        chunks=chunks,
        started_at=started_at,
        requested_missing=requested_missing,
        discarded_orphan_parts=orphans,
    )


def ingest_chunk(
    source: Location,
    output: Location,
    objects: pa.Table,
    *,
    concurrency: int = 64,
    limits: MetadataLimits | None = None,
    run_id: str = "",
    fault_share: float = 0.5,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChunkOutcome:
    """Fetch, parse and commit one chunk of listed objects (safe to retry: same part name).

    No object is read past ``limits.max_bytes``; every object that cannot become a bin row
    becomes a quarantine row, and every object that could not be read a pending row. More than
    ``fault_share`` of the chunk unread for one fault raises
    :class:`~bincount.core.faults.SourceUnreadable` before anything is committed.
    """
    raise_if_tripped(Stage.INGEST, source.url, run_id)
    limits = limits or MetadataLimits()
    chunk = objects.to_pylist()
    payloads = source.fetch_many(
        [obj["key"] for obj in chunk], concurrency=concurrency, max_bytes=limits.max_bytes
    )
    now = clock()
    read, faults = [], []
    for obj, payload in zip(chunk, payloads, strict=True):
        fault = read_fault(payload, source.uri(obj["key"]))
        if fault is None:
            read.append((obj, payload))
        else:
            faults.append((obj, fault))
    part = chunk_id(chunk, source.url)
    # Read before this chunk's own pending rows are written: which faults are retries.
    retried = {source.uri(key) for key in pending_keys(output, Stage.INGEST)} if faults else ()
    record_pending(
        output,
        Stage.INGEST,
        part,
        [
            pending_row(
                Stage.INGEST,
                obj["key"],
                fault,
                image_id=image_id_or_none(obj["key"]),
                etag=obj["etag"],
                run_id=run_id,
                now=now,
            )
            for obj, fault in faults
        ],
    )
    check_faults(
        Stage.INGEST,
        [(source.uri(obj["key"]), fault) for obj, fault in faults],
        len(chunk),
        share=fault_share,
        pending=retried,
        source=source.url,
        run_id=run_id,
    )
    bins, items, rejects = rows_from_objects(
        [obj for obj, _ in read],
        [payload for _, payload in read],
        run_id=run_id,
        now=now,
        limits=limits,
        source=source.url,
    )
    part = commit_chunk(output, chunk, bins, items, rejects, source=source.url)
    return ChunkOutcome(
        part=part, ingested=len(bins), quarantined=len(rejects), pending=len(faults)
    )


def summarize_ingest(
    plan: IngestPlan, outcomes: Sequence[ChunkOutcome], *, run_id: str, seconds: float
) -> IngestSummary:
    """One run's summary from its plan and its chunks."""
    return IngestSummary(
        run_id=run_id,
        listed=plan.listed,
        already_ingested=plan.already_ingested,
        new=plan.new,
        **totals(outcomes, "ingested", "quarantined", "pending"),
        seconds=seconds,
        parts=[o.part for o in outcomes],
        requested_missing=plan.requested_missing,
        discarded_orphan_parts=plan.discarded_orphan_parts,
    )


def ingest_metadata(
    source: Location,
    output: Location,
    *,
    limit: int | None = None,
    keys: Sequence[str] | None = None,
    concurrency: int = 64,
    partitions: int = 16,
    chunk_size: int = 5000,
    limits: MetadataLimits | None = None,
    run_id: str | None = None,
    fault_share: float = 0.5,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IngestSummary:
    """Ingest every metadata object of ``source`` not ingested yet into ``output``'s tables."""
    started = time.perf_counter()
    run_id = run_id or uuid.uuid4().hex
    plan = plan_ingest(
        source, output, limit=limit, keys=keys, partitions=partitions, chunk_size=chunk_size
    )
    outcomes = []
    for chunk in plan.chunks:
        outcomes.append(
            ingest_chunk(
                source,
                output,
                chunk,
                concurrency=concurrency,
                limits=limits,
                run_id=run_id,
                fault_share=fault_share,
                clock=clock,
            )
        )
        done = totals(outcomes, "ingested", "quarantined", "pending")
        logger.info("ingested %d of %d objects", sum(done.values()), plan.new)
    settle_ingest_pending(output)
    return summarize_ingest(plan, outcomes, run_id=run_id, seconds=time.perf_counter() - started)


def ingested_versions(output: Location) -> pa.Table:
    """The (key, etag) of every object version already ingested or quarantined at ingest, from
    any source: an object with the same key and ETag is the same bin version wherever it is
    listed (a copied or moved bucket), and keeps the source it was first ingested from."""
    done = INGEST.done(output, ["metadata_key", "etag"], ["object_key", "etag"])
    return done.rename_columns(["key", "etag"])


def settle_ingest_pending(output: Location) -> int:
    """Fold the ingest's pending rows, one per object, without those ingested since."""
    done = ingested_versions(output).rename_columns(["object_key", "etag"])
    return settle_pending(output, Stage.INGEST, done)


def discard_uncommitted_parts(output: Location) -> int:
    """Delete the ``items``/``quarantine`` parts of chunks whose ``bins`` part never landed."""
    return INGEST.discard_uncommitted(output)


def commit_chunk(
    output: Location,
    objects: Sequence[dict],
    bins: list[dict],
    items: list[dict],
    rejects: list[dict],
    *,
    source: str | None = None,
) -> str:
    """Write one chunk's parts, the ``bins`` part (the commit marker) last."""
    part = chunk_id(objects, source)
    INGEST.commit(output, part, bins, rejects=rejects, companions={ITEMS: items})
    return part


def chunk_id(objects: Sequence[dict], source: str | None = None) -> str:
    """A name derived from the chunk's content, so a retried chunk rewrites the same files; the
    source is part of it, so equal objects in two sources never share a part."""
    return part_name(((obj["key"], obj["etag"]) for obj in objects), namespace=source)


def read_key_list(text: str) -> list[str]:
    """Metadata keys from a key list: the capstone file-list JSON, a JSON list, or one per line.

    The capstone format (``{"1": ["data/metadata/100313.json", ...], ...}``) and plain ids
    (``01057``) are both accepted; ids stay strings.
    """
    text = text.strip()
    if not text:
        raise ValueError("Expected a key list, but the file is empty")
    entries: list[str]
    if text[0] in "[{":
        document = json.loads(text)
        if isinstance(document, dict):
            entries = [entry for group in document.values() for entry in group]
        elif isinstance(document, list):
            entries = document
        else:
            raise ValueError(f"Expected a JSON object or list, but got {type(document).__name__}")
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip()]
    keys = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"Expected key strings, but got {entry!r}")
        name = posixpath.basename(entry)
        keys.append(f"{METADATA_PREFIX}/{name if name.endswith('.json') else name + '.json'}")
    return keys
