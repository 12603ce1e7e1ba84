"""Faults of reading, kept apart from verdicts on the data.

A *verdict* (bad JSON, too large, undecodable bytes ...) is final for an object version: it is
quarantined once and never read again. A *fault* of reading (access denied, the object gone
since it was listed) says nothing about the data: the object stays pending and the next run
reads it again (:mod:`bincount.core.pending`). The fault codes are defined here and only here.

When most of a chunk fails to read for the same fault, the source as a whole cannot be read
(a bucket that is not public, wrong or expired credentials): the run stops with one message
(:class:`SourceUnreadable`) instead of working through the rest of the bucket. Objects already
pending count only past :data:`FEW_FAULTS`: a few objects that stay unreadable night after
night (one private object in a public bucket) are listed as pending, not a failed run each
night, while a whole bucket still denied on the next run fails it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

# The codes of faults of reading: pending rows, never quarantine rows.
FAULT_CODES = frozenset({"read_denied", "read_gone"})

# Where a read_denied reason quotes the source's own answer (an expired token, an unknown key).
_DENIED = "but access was denied: "

# How many faults of objects already pending a chunk may have without stopping the run.
FEW_FAULTS = 10


@dataclass(frozen=True)
class ReadFault:
    """Why an object could not be read this time: a reason (code, sentence, error type) that
    is no verdict on the object."""

    code: str
    reason: str
    exception_type: str | None = None


def kind(code: str) -> str:
    """``fault`` (the object is read again) or ``verdict`` (final) for a reason code."""
    return "fault" if code in FAULT_CODES else "verdict"


def read_fault(payload: object, uri: str = "") -> ReadFault | None:
    """The fault a fetch result stands for, or None when it is bytes or a verdict."""
    what = type(payload).__name__
    if isinstance(payload, PermissionError):
        return ReadFault(
            "read_denied",
            f"Expected to read {uri or 'the object'}, {_DENIED}{payload}",
            what,
        )
    if isinstance(payload, FileNotFoundError):
        return ReadFault(
            "read_gone",
            f"Expected {uri or 'the object'} to be there as listed, but it is gone: {payload}",
            what,
        )
    return None


_LIKELY_CAUSE = {
    "read_denied": (
        "the objects are not public, or the credentials are wrong or expired: check "
        "--source-anonymous (BINCOUNT_SOURCE_ANONYMOUS) and the AWS credentials the run uses"
    ),
    "read_gone": (
        "the objects were deleted or moved since they were listed: check whether something "
        "is rewriting the source, or whether --source points at the right bucket"
    ),
}


class SourceUnreadable(RuntimeError):
    """Most of a chunk could not be read for one fault: the run stops, nothing of the chunk is
    marked done, and its objects stay pending for the next run."""

    def __init__(
        self,
        stage: str,
        code: str,
        failed: int,
        attempted: int,
        example: str,
        share: float,
        answer: str = "",
    ) -> None:
        self.stage, self.code, self.failed, self.attempted = stage, code, failed, attempted
        # What the source said (an expired token, an unknown key) tells a policy from a key.
        said = f" The source answered: {answer}" if answer else ""
        super().__init__(
            f"{stage}: {failed} of {attempted} objects of a chunk could not be read ({code}, "
            f"e.g. {example}), more than the read_fault_share of {share:g}; the run stopped "
            f"and marked none of them done (they stay pending). Likely cause: "
            f"{_LIKELY_CAUSE.get(code, 'the source cannot be read')}.{said}"
        )

    def __reduce__(self):  # crosses Dask workers with its fields
        return _rebuild, (type(self), self.__dict__, str(self))


def _rebuild(cls, fields, message):
    error = cls.__new__(cls)
    RuntimeError.__init__(error, message)
    error.__dict__.update(fields)
    return error


# Runs whose breaker tripped, by (stage, source, run id): the run's later chunks in this
# process stop at once instead of reading objects the source will refuse too.
_TRIPPED: dict[tuple[str, str, str], SourceUnreadable] = {}


def check_faults(
    stage: str,
    faults: Sequence[tuple[str, ReadFault]],
    attempted: int,
    *,
    share: float,
    pending: Collection[str] = (),
    source: str = "",
    run_id: str = "",
) -> None:
    """Raise :class:`SourceUnreadable` when more than ``share`` of the ``attempted`` objects of
    a chunk failed for one fault code; a few scattered faults pass (they stay pending), and so
    do up to :data:`FEW_FAULTS` objects that were ``pending`` already (retried, failed again).
    """
    if not (0.0 <= share <= 1.0):
        raise ValueError(f"Expected a read_fault_share within [0, 1], but got {share}")
    if not faults or attempted <= 0:
        return
    (code, failed), *_ = Counter(fault.code for _, fault in faults).most_common(1)
    first_tries = sum(1 for key, fault in faults if fault.code == code and key not in pending)
    if failed > share * attempted and (first_tries or failed > FEW_FAULTS):
        example, first = next((key, fault) for key, fault in faults if fault.code == code)
        answer = first.reason.partition(_DENIED)[2] if code == "read_denied" else ""
        error = SourceUnreadable(stage, code, failed, attempted, example, share, answer)
        if run_id:
            _TRIPPED[(stage, source, run_id)] = error
        raise error


def raise_if_tripped(stage: str, source: str, run_id: str) -> None:
    """Raise the run's earlier :class:`SourceUnreadable` again (a later chunk of that run)."""
    if run_id and (stage, source, run_id) in _TRIPPED:
        raise _TRIPPED[(stage, source, run_id)]
