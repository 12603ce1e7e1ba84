"""Review outcomes: what people found when they looked at the bins the queue flagged.

The nightly queue (``bincount.review.queue``) names bins whose photo contradicts their record.
A person looks at each and says either that the record is right or how many items the photo
shows. Those answers are the best labels the platform gets, so they are kept as data:

* ``review_outcomes/reviewed_date=<date>/part-<id>.parquet``, one row per verdict on one *queue
  entry* (a bin flagged by one night's ranking), with who, when, the model and the scoring run
  that flagged the bin, and the run that recorded the verdict. A queue entry is judged once: a
  second verdict on the same entry is not written (``already_recorded``), and a retried write
  rewrites its own part. A bin flagged again on a later night is a new entry, judged anew.
* The next manifest (``bincount.data.manifest``) takes the latest verdict of each bin: a count that
  differs from the record becomes the label (``label_source = "review"``); "the record is right"
  keeps the record's label and marks it confirmed.
* :func:`queue_precision` measures the queue over time from the verdicts: of the reviewed entries
  of each night and model, the share whose record was wrong.

Verdicts come from a paused ``review`` run resumed in the Prefect UI (``recorded_via = "ui"``)
or from a file (``bincount record-verdicts``, ``"file"``); both end in :func:`record_outcomes`.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

import pyarrow.dataset as ds

from bincount.core.sources import locate, open_sources, recorded_sources
from bincount.core.storage import Location
from bincount.core.tables import REVIEW_QUEUE, part_names, read_table, write_part
from bincount.review.verdicts import CORRECTED, RECORD_CORRECT, Decided, QueueEntry, VerdictError

REVIEW_OUTCOMES = "review_outcomes"
VIA_UI, VIA_FILE = "ui", "file"


def queue_entries(output: Location, source: Location) -> list[QueueEntry]:
    """Every entry of every review queue, newest queue first, each in rank order; ``source``
    stands for bins that record no source (ingested by older versions)."""
    rows = read_table(output, REVIEW_QUEUE).to_pylist()
    if not rows:
        return []
    locations = open_sources(source, recorded_sources(output, source.url))
    rows.sort(key=lambda r: (-r["queued_at"].timestamp(), r["queue_id"], r["review_rank"]))
    entries = []
    for row in rows:
        try:
            located = locate(locations, row["image_uri"])[0].url
        except ValueError:  # a photo under no known source: name it by its folder
            located = posixpath.dirname(posixpath.dirname(row["image_uri"]))
        entries.append(
            QueueEntry(
                label=row["image_id"],
                image_id=row["image_id"],
                source=located,
                image_uri=row["image_uri"],
                expected_quantity=row["expected_quantity"],
                predicted_count=row["predicted_count"],
                predicted_overflow=row["predicted_overflow"],
                p_recorded=row["p_recorded"],
                review_rank=row["review_rank"],
                queue_id=row["queue_id"],
                queue_run_id=row["queue_run_id"],
                queued_at=row["queued_at"],
                queued_date=row["queued_date"],
                model_version=row["model_version"],
                scored_run_id=row["scored_run_id"],
            )
        )
    return entries


def pending_entries(
    output: Location,
    source: Location,
    *,
    queued_date: str | date | None = None,
    top: int = 10,
) -> list[QueueEntry]:
    """The first ``top`` entries nobody has judged yet of the queues of ``queued_date`` (default:
    the newest date with any), newest queue first and in rank order, labelled for a form."""
    if top < 1:
        raise ValueError(f"Expected at least one bin to show, but got top={top}")
    if isinstance(queued_date, str):
        try:
            queued_date = date.fromisoformat(queued_date)
        except ValueError:
            raise ValueError(
                f"Expected queued_date as YYYY-MM-DD, but got {queued_date!r}"
            ) from None
    judged = recorded_outcome_ids(output)
    pending = [e for e in queue_entries(output, source) if e.outcome_id not in judged]
    if queued_date is None and pending:
        queued_date = max(e.queued_date for e in pending)
    return labelled([e for e in pending if e.queued_date == queued_date][:top])


def labelled(entries: Sequence[QueueEntry]) -> list[QueueEntry]:
    """Entries named by their id, or ``id (source)`` where shown ids collide (or one bin is in
    two queues of the day, ``id (queue <rank>)``)."""
    by_id: dict[str, set[str]] = {}
    for entry in entries:
        by_id.setdefault(entry.image_id, set()).add(entry.source)
    named = []
    for entry in entries:
        label = entry.image_id
        if len(by_id[entry.image_id]) > 1:
            label = f"{entry.image_id} ({entry.source})"
        named.append(_replace(entry, label=label))
    seen: dict[str, int] = {}
    for entry in named:
        seen[entry.label] = seen.get(entry.label, 0) + 1
    return [
        _replace(e, label=f"{e.label} (queue {e.queue_id[:6]})") if seen[e.label] > 1 else e
        for e in named
    ]


def _replace(entry: QueueEntry, **changes) -> QueueEntry:
    return QueueEntry(**{**{k: getattr(entry, k) for k in entry.__dataclass_fields__}, **changes})


# -- writing them --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedVerdicts:
    """What recording a set of verdicts did."""

    written: int
    record_correct: int
    corrected: int
    already_recorded: list[str] = field(default_factory=list)  # labels judged before
    part: str | None = None
    reviewers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def recorded_outcome_ids(output: Location) -> set[str]:
    """The queue entries judged already (their ``outcome_id``)."""
    return set(read_table(output, REVIEW_OUTCOMES, columns=["outcome_id"]).column(0).to_pylist())


def record_outcomes(
    output: Location,
    decided: Sequence[Decided],
    *,
    run_id: str,
    via: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RecordedVerdicts:
    """Write the verdicts on entries nobody has judged yet as one part of ``review_outcomes``.

    The part is named by the run and the entries it answers, so a retried write finds its own
    part and writes nothing new; a verdict on an entry judged before is left out and reported.
    """
    if via not in (VIA_UI, VIA_FILE):
        raise ValueError(f"Expected recorded_via {VIA_UI!r} or {VIA_FILE!r}, but got {via!r}")
    ids = sorted(d.entry.outcome_id for d in decided)
    name = hashlib.sha256("\x1f".join([run_id, *ids]).encode()).hexdigest()[:20]
    if name in part_names(output, REVIEW_OUTCOMES):  # a retry: this very write is in already
        rows = read_table(output, REVIEW_OUTCOMES, filter=ds.field("outcome_id").isin(ids))
        mine = [r for r in rows.to_pylist() if r["review_run_id"] == run_id]
        return _recorded(mine, [], name)
    judged = recorded_outcome_ids(output)
    fresh = [d for d in decided if d.entry.outcome_id not in judged]
    before = [d.entry.label for d in decided if d.entry.outcome_id in judged]
    if not fresh:
        return _recorded([], before, None)
    now = clock()
    rows = [_outcome_row(d, run_id=run_id, via=via, now=now) for d in fresh]
    write_part(output, REVIEW_OUTCOMES, name, rows, partition={"reviewed_date": f"{now:%Y-%m-%d}"})
    return _recorded(rows, before, name)


def _recorded(rows: list[dict], before: list[str], part: str | None) -> RecordedVerdicts:
    verdicts = [row["verdict"] for row in rows]
    return RecordedVerdicts(
        written=len(rows),
        record_correct=verdicts.count(RECORD_CORRECT),
        corrected=verdicts.count(CORRECTED),
        already_recorded=before,
        part=part,
        reviewers=sorted({row["reviewer"] for row in rows}),
    )


def _outcome_row(decided: Decided, *, run_id: str, via: str, now: datetime) -> dict:
    entry = decided.entry
    return {
        "outcome_id": entry.outcome_id,
        "image_id": entry.image_id,
        "source": entry.source,
        "image_uri": entry.image_uri,
        "verdict": decided.verdict,
        "counted_quantity": decided.counted,
        "recorded_quantity": entry.expected_quantity,
        "predicted_count": entry.predicted_count,
        "predicted_overflow": entry.predicted_overflow,
        "p_recorded": entry.p_recorded,
        "reviewer": decided.reviewer,
        "note": decided.note,
        "reviewed_at": now,
        "recorded_via": via,
        "review_run_id": run_id,
        "model_version": entry.model_version,
        "scored_run_id": entry.scored_run_id,
        "queue_id": entry.queue_id,
        "queue_run_id": entry.queue_run_id,
        "review_rank": entry.review_rank,
        "queued_date": entry.queued_date,
        "reviewed_date": now.date(),
    }


def file_verdicts(
    output: Location, source: Location, rows: Sequence[dict], *, reviewer: str | None = None
) -> list[Decided]:
    """Each file row matched to the newest queue entry of its bin (narrowed by ``source`` and
    ``queue_id`` when given); the row's reviewer, else ``reviewer``. Raises
    :class:`VerdictError` naming every bad row (nothing is recorded then)."""
    entries = queue_entries(output, source)
    problems: list[str] = [] if rows else ["Expected at least one verdict, but got none"]
    decided: list[Decided] = []
    for number, row in enumerate(rows, start=1):
        where = f"row {number}"
        name = str(row.get("bin") or "").strip()
        matches = [
            e
            for e in entries
            if name in (e.image_id, e.image_uri)
            and (not row.get("source") or e.source == str(row["source"]).rstrip("/"))
            and (not row.get("queue_id") or e.queue_id == row["queue_id"])
        ]
        if not matches:
            problems.append(f"Expected a bin of a review queue in {where}, but got {name!r}")
            continue
        if len({e.source for e in matches}) > 1:
            problems.append(
                f"Expected one bin in {where}, but {name!r} is queued from "
                f"{sorted({e.source for e in matches})}: add a source column"
            )
            continue
        counted, who = row.get("counted"), str(row.get("reviewer") or reviewer or "").strip()
        try:
            count = None if counted in (None, "") else int(str(counted).strip())
        except ValueError:
            problems.append(f"Expected a whole count in {where}, but got {counted!r}")
            continue
        if count is not None and count < 0:
            problems.append(f"Expected a count of 0 or more in {where}, but got {count}")
            continue
        if not who:
            problems.append(
                f"Expected the reviewer's name in {where} (or --reviewer), but got none"
            )
            continue
        entry = _replace(matches[0], label=f"{name} ({where})")
        counted_now = entry.expected_quantity if count is None else count
        decided.append(Decided(entry, counted_now, who, row.get("note") or None))
    twice = {d.entry.outcome_id for d in decided if _count(decided, d.entry.outcome_id) > 1}
    for outcome in sorted(twice):
        labels = [d.entry.label for d in decided if d.entry.outcome_id == outcome]
        problems.append(f"Expected one verdict per queue entry, but got {len(labels)}: {labels}")
    if problems:
        raise VerdictError(problems)
    return decided


def _count(decided: Sequence[Decided], outcome: str) -> int:
    return sum(d.entry.outcome_id == outcome for d in decided)


# -- what the verdicts tell ---------------------------------------------------------------------
def latest_verdicts(output: Location) -> dict[tuple[str, str], dict]:
    """The latest verdict of each bin, by (source, image id): a later review overrides an
    earlier one (ties: the later queue)."""
    rows = read_table(
        output,
        REVIEW_OUTCOMES,
        columns=["outcome_id", "source", "image_id", "verdict", "counted_quantity", "reviewed_at"],
    ).to_pylist()
    latest: dict[tuple[str, str], dict] = {}
    for row in sorted(rows, key=lambda r: (r["reviewed_at"], r["outcome_id"])):
        latest[(row["source"], row["image_id"])] = row
    return latest
