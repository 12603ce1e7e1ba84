"""A command refused on bad input: one line on stderr saying what was expected and what came.

The library raises at its boundary with that sentence (convention 10); a flow run re-raises its
task's exception as it was. Without this, the console showed the sentence inside three
tracebacks: the task run's and the flow run's log records, then Python's own. The run's log in
the Prefect API keeps its traceback: only the console's copy loses it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# Bad input (ValueError and its subclasses: VerdictError, MalformedMetadata, UndecodableImage,
# ObjectTooLarge, pydantic's ValidationError), something asked for that is not there (a model
# version or champion: LookupError; a manifest, a file: FileNotFoundError), the two gates
# of the data and a source that refuses most reads (refusal_types): each says in one sentence
# what to fix. A KeyError or IndexError is a fault of the program, with its traceback.
REFUSALS: tuple[type[BaseException], ...] = (ValueError, LookupError, FileNotFoundError)
FAULTS: tuple[type[BaseException], ...] = (KeyError, IndexError)


def refusal_types() -> tuple[type[BaseException], ...]:
    """What the library raises to refuse its input: :data:`REFUSALS`, a contract past its
    thresholds, a manifest asked of bins not validated since they changed, and a source
    that could not be read (the circuit breaker)."""
    # Imported when a command fails, not before: the overall help imports no pyarrow.
    from bincount.core.faults import SourceUnreadable
    from bincount.core.lease import LeaseHeld
    from bincount.data.manifest import StaleValidation
    from bincount.data.validate import ContractViolation

    return (*REFUSALS, ContractViolation, StaleValidation, LeaseHeld, SourceUnreadable)


def is_refusal(error: BaseException | None) -> bool:
    """Whether ``error`` is the library refusing its input (not a fault of the program)."""
    return isinstance(error, refusal_types()) and not isinstance(error, FAULTS)


def one_line(error: BaseException) -> str:
    """The refusal's message on one line (a pydantic error spans several)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def console_tracebacks_of_refusals_hidden() -> Iterator[None]:
    """While a command runs, the console's log handlers print a refused run's records without
    the traceback (the record itself, and the API's copy, keep it)."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    formatters = {handler: handler.formatter for handler in handlers}
    for handler in handlers:
        handler.setFormatter(_WithoutRefusedTraceback(handler.formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in formatters.items():
            handler.setFormatter(formatter)


class _WithoutRefusedTraceback(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and is_refusal(record.exc_info[1]):
            # A copy: other handlers (the API's) see the record with its traceback.
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)
