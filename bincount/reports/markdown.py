"""The one way the reports write a Markdown table, a percentage and a figure.

Every builder in ``bincount.reports`` goes through :func:`table`, :func:`pct` and :func:`num`,
so a missing value reads ``-`` everywhere and a table's alignment is said once, by its columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

MISSING = "-"  # what a value that was not measured (None, NaN) reads as


def table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str) -> str:
    """A Markdown table (no trailing newline); ``align`` has one letter per column, ``l`` or
    ``r`` (numbers right-aligned)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(
            f"Expected one alignment letter l or r per column ({len(header)}), but got {align!r}"
        )
    lines = [_row(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"Expected {len(header)} cells in a row, but got {len(row)}: {row!r}")
        lines.append(_row(row))
    return "\n".join(lines)


def pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage, ``0.1234`` → ``12.34%``; ``-`` when not measured."""
    return MISSING if _missing(value) else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    """A figure to ``digits`` decimals; ``-`` when not measured."""
    return MISSING if _missing(value) else f"{value:.{digits}f}"


def _row(cells: Sequence[object]) -> str:
    # An empty cell is one space wide ("| |"), as the tables were written by hand.
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
