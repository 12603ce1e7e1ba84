"""A reviewer's verdicts: validated against the bins that were shown, and read from a CSV or JSON
verdict file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


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


RECORD_CORRECT = "record_correct"


CORRECTED = "corrected"


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


# -- verdicts from a file ------------------------------------------------------------------------
FILE_COLUMNS = ("bin", "counted", "reviewer", "source", "queue_id", "note")


def outcome_id(queue_id: str, image_uri: str) -> str:
    """The id of a queue entry's verdict: one bin in one night's queue."""
    return hashlib.sha256(f"{queue_id}\x1f{image_uri}".encode()).hexdigest()[:20]
