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

import csv
import hashlib
import io
import json
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field, create_model

from bincount.core.sources import locate, open_sources, recorded_sources
from bincount.core.storage import Location
from bincount.core.tables import REVIEW_QUEUE, part_names, read_table, write_part
from bincount.review.ranking import probability_text

REVIEW_OUTCOMES = "review_outcomes"
RECORD_CORRECT = "record_correct"
CORRECTED = "corrected"
VIA_UI, VIA_FILE = "ui", "file"


# -- what is shown -----------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueEntry:
    """One flagged bin of one night's queue, as a reviewer sees it; ``label`` names it in a form
    (its id, with its source when two shown bins share an id)."""

    label: str
    image_id: str
    source: str
    image_uri: str
    expected_quantity: int
    predicted_count: int
    predicted_overflow: bool
    p_recorded: float
    review_rank: int
    queue_id: str
    queue_run_id: str
    queued_at: datetime
    queued_date: date
    model_version: str
    scored_run_id: str

    @property
    def outcome_id(self) -> str:
        return outcome_id(self.queue_id, self.image_uri)

    @property
    def predicted_text(self) -> str:
        return f"{self.predicted_count}{'+' if self.predicted_overflow else ''}"

    def as_dict(self) -> dict:
        return {**asdict(self), "outcome_id": self.outcome_id}


def outcome_id(queue_id: str, image_uri: str) -> str:
    """The id of a queue entry's verdict: one bin in one night's queue."""
    return hashlib.sha256(f"{queue_id}\x1f{image_uri}".encode()).hexdigest()[:20]


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


# -- what a reviewer says ----------------------------------------------------------------------
class Verdict(BaseModel):
    """One bin's verdict: the count its photo shows, or none when the record is right."""

    model_config = ConfigDict(extra="forbid")

    bin: str = Field(description="The bin, as listed in the table above")
    counted: int | None = Field(
        None,
        ge=0,
        description="How many items the photo shows; leave empty when the record is right",
    )
    note: str | None = Field(None, description="A remark, if any (kept with the verdict)")


def verdict_model(labels: Sequence[str]) -> type[Verdict]:
    """:class:`Verdict` whose bin must be one of ``labels`` (a choice in the UI's form)."""
    if not labels:
        raise ValueError("Expected bins to judge, but got none")
    return create_model(
        "Verdict",
        __base__=Verdict,
        bin=(Literal[tuple(labels)], Field(description="The bin, as listed in the table above")),
    )


@dataclass(frozen=True)
class Decided:
    """A verdict matched to its queue entry: the count the photo shows and who said so."""

    entry: QueueEntry
    counted: int
    reviewer: str
    note: str | None = None

    @property
    def verdict(self) -> str:
        return RECORD_CORRECT if self.counted == self.entry.expected_quantity else CORRECTED


class VerdictError(ValueError):
    """Verdicts that cannot be recorded as given; the message lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def decide(
    entries: Sequence[QueueEntry], verdicts: Sequence[Verdict], *, reviewer: str | None
) -> list[Decided]:
    """Match verdicts to the shown ``entries`` (by label); a verdict without a count confirms the
    record. Raises :class:`VerdictError` naming every problem (unknown bin, negative count,
    two different answers for one bin, no reviewer); identical repeats count once."""
    problems = []
    reviewer = (reviewer or "").strip()
    if not reviewer:
        problems.append("Expected the reviewer's name, but got none")
    if not verdicts:
        problems.append("Expected at least one verdict, but got none")
    shown = {entry.label: entry for entry in entries}
    answers: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        if verdict.bin not in shown:
            problems.append(
                f"Expected a bin of the ones shown ({', '.join(shown)}), but got {verdict.bin!r}"
            )
        elif verdict.counted is not None and verdict.counted < 0:
            problems.append(
                f"Expected a count of 0 or more for bin {verdict.bin}, but got {verdict.counted}"
            )
        else:
            answers.setdefault(verdict.bin, []).append(verdict)
    decided = []
    for label, given in answers.items():
        entry = shown[label]
        counts = {entry.expected_quantity if v.counted is None else v.counted for v in given}
        if len(counts) > 1:
            problems.append(
                f"Expected one answer per bin, but got {len(counts)} for bin {label}: "
                + " and ".join(str(c) for c in sorted(counts))
            )
            continue
        notes = [v.note for v in given if v.note]
        decided.append(Decided(entry, counts.pop(), reviewer, notes[-1] if notes else None))
    if problems:
        raise VerdictError(problems)
    return decided


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


# -- verdicts from a file ------------------------------------------------------------------------
FILE_COLUMNS = ("bin", "counted", "reviewer", "source", "queue_id", "note")


def read_verdict_file(text: str, name: str) -> list[dict]:
    """The rows of a verdict file: JSON (a list of objects) when ``name`` ends in ``.json``,
    else CSV with a header; columns ``bin`` (an id or a photo's URI) and ``counted`` (empty when
    the record is right), optionally ``reviewer``, ``source``, ``queue_id``, ``note``."""
    if name.lower().endswith(".json"):
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"Expected a JSON list of objects in {name}, but got {type(rows)}")
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    unknown = sorted({key for row in rows for key in row} - set(FILE_COLUMNS))
    if unknown:
        raise ValueError(
            f"Expected columns among {list(FILE_COLUMNS)} in {name}, but got {unknown}"
        )
    return rows


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


@dataclass(frozen=True)
class QueuePrecision:
    """How one night's queue (of one model) fared with the people who checked it."""

    queued_date: date
    model_version: str
    flagged: int
    reviewed: int
    record_wrong: int

    @property
    def precision(self) -> float | None:
        """The share of reviewed entries whose record was wrong (None before any review)."""
        return self.record_wrong / self.reviewed if self.reviewed else None

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision}


def queue_precision(output: Location) -> list[QueuePrecision]:
    """The queue's measured precision over time: per queued date and model, how many bins were
    flagged, how many reviewed, and how many of those had a wrong record. Oldest first."""
    queue = read_table(
        output, REVIEW_QUEUE, columns=["queued_date", "model_version", "queue_id", "image_uri"]
    ).to_pylist()
    outcomes = read_table(output, REVIEW_OUTCOMES, columns=["outcome_id", "verdict"])
    verdicts = dict(
        zip(
            outcomes.column("outcome_id").to_pylist(),
            outcomes.column("verdict").to_pylist(),
            strict=True,
        )
    )
    groups: dict[tuple[date, str], list[str | None]] = {}
    for row in queue:
        key = (row["queued_date"], row["model_version"])
        groups.setdefault(key, []).append(
            verdicts.get(outcome_id(row["queue_id"], row["image_uri"]))
        )
    return [
        QueuePrecision(
            queued_date=day,
            model_version=model,
            flagged=len(found),
            reviewed=sum(v is not None for v in found),
            record_wrong=sum(v == CORRECTED for v in found),
        )
        for (day, model), found in sorted(groups.items())
    ]


def precision_markdown(rows: Sequence[QueuePrecision]) -> str:
    """The measured precision as a markdown table (newest night first)."""
    if not rows:
        return "No queue yet.\n"
    lines = [
        "| queued | model | flagged | reviewed | record wrong | precision |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in reversed(rows):
        shown = "-" if row.precision is None else f"{100 * row.precision:.0f}%"
        lines.append(
            f"| {row.queued_date} | `{row.model_version}` | {row.flagged} | {row.reviewed} | "
            f"{row.record_wrong} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def outcomes_markdown(decided: Sequence[Decided], recorded: RecordedVerdicts, where: str) -> str:
    """What a set of verdicts recorded, bin by bin."""
    lines = [
        "# Review outcomes",
        "",
        "| bin | recorded | counted | verdict | reviewer |",
        "|---|---:|---:|---|---|",
    ]
    for d in decided:
        verdict = (
            "judged before: not written"
            if d.entry.label in recorded.already_recorded
            else d.verdict
        )
        lines.append(
            f"| {d.entry.label} | {d.entry.expected_quantity} | {d.counted} | {verdict} | "
            f"{d.reviewer} |"
        )
    lines += [
        "",
        f"{recorded.written} written to `{where}`; the next manifest takes them as labels.",
        "",
    ]
    return "\n".join(lines)


def review_sheet_markdown(
    shown: Sequence[dict],
    precision: Sequence[QueuePrecision],
    *,
    problems: Sequence[str] = (),
) -> str:
    """What a reviewer reads: the bins (``shown``: :meth:`QueueEntry.as_dict` rows with a
    ``thumbnail`` data URI and a ``link``), how to answer, and the queue's precision so far."""
    lines = []
    if problems:
        lines += ["**The last answer was not recorded:**", ""]
        lines += [f"- {problem}" for problem in problems] + [""]
    queues = sorted({str(row["queued_date"]) for row in shown})
    models = sorted({row["model_version"] for row in shown})
    lines += [
        f"## {len(shown)} bins to check",
        "",
        "For each bin you checked, add a verdict: the bin and the number of items its photo "
        "shows. Leave the count empty when the record is right. Give your name as reviewer.",
        "",
        f"From the queue of {', '.join(queues)}, flagged by model "
        f"{', '.join(f'`{m}`' for m in models)}; rank 1 is the least likely record.",
        "",
        "| rank | bin | recorded | model | p_recorded | photo |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in shown:
        photo = f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-"
        predicted = f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''}"
        lines.append(
            f"| {row['review_rank']} | [{row['label']}]({row['link']}) | "
            f"{row['expected_quantity']} | {predicted} | {probability_text(row['p_recorded'])} | "
            f"{photo} |"
        )
    lines += ["", "## The queue's precision so far", "", precision_markdown(precision)]
    return "\n".join(lines)
