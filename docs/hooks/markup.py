"""Markdown pieces shared by the reference generators."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # this checkout's bincount, not another installed one
    sys.path.insert(0, str(REPO))


def cell(text: str) -> str:
    """Text safe inside a table cell."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def value(shown) -> str:
    """A default as a cell: code, or a dash for None."""
    return "–" if shown is None else f"`{shown}`"


def constraint(item) -> str:
    """A pydantic field's bound (``Ge(1)`` -> ``≥ 1``), or an empty string."""
    for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if hasattr(item, attribute):
            return f"{sign} {getattr(item, attribute)}"
    return ""
