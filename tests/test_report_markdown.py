"""The reports' one Markdown helper, and the evaluation built from sections."""

from __future__ import annotations

import math

import pytest

from bincount.reports.evaluation import evaluation_markdown
from bincount.reports.markdown import num, pct, table
from tests.builders import evaluation_report


def test_a_table_aligns_by_column_and_keeps_an_empty_cell_one_space_wide():
    text = table(["", "bins", "share"], [["**0**", 1_000, pct(0.5)], ["x", 2, "-"]], "lrr")
    assert text.splitlines() == [
        "| | bins | share |",
        "|---|---:|---:|",
        "| **0** | 1000 | 50.00% |",
        "| x | 2 | - |",
    ]


def test_a_table_refuses_a_row_or_an_alignment_that_does_not_fit_its_columns():
    with pytest.raises(ValueError, match="one alignment letter l or r per column"):
        table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="one alignment letter"):
        table(["a"], [], "c")
    with pytest.raises(ValueError, match="Expected 2 cells in a row, but got 1"):
        table(["a", "b"], [["x"]], "lr")


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [(0.12345, 2, "12.35%"), (1.0, 0, "100%"), (0.0416, 1, "4.2%"), (None, 2, "-")],
)
def test_pct_reads_a_share_as_a_percentage(value, digits, shown):
    assert pct(value, digits) == shown


def test_a_value_not_measured_reads_as_a_dash_everywhere():
    assert pct(math.nan) == num(math.nan) == num(None) == "-"
    assert num(0.27349) == "0.273" and num(0.5, 4) == "0.5000"


def test_the_charts_are_a_section_after_the_headline_table_and_before_the_confusion_matrix():
    plain = evaluation_markdown(evaluation_report())
    charted = evaluation_markdown(evaluation_report(), charts="![chart](data:x)")

    headline, confusion = plain.split("\n\nConfusion matrix")
    assert charted == headline + "\n\n![chart](data:x)\n\nConfusion matrix" + confusion
    assert "| more than 1: accuracy / RMSE (n=0) | - / - | - / - | - / - |" in plain
    assert (
        "| count 0: accuracy / RMSE (n=2) | 50.00% / 0.500 | 50.00% / 0.500 | 90.00% / 0.300 |"
        in plain
    )
    assert "| | 0 | 1 | 2 |\n|---|---:|---:|---:|\n| **0** | 1 | 1 | 0 |" in plain
    assert "## Calibration" not in plain and plain.endswith("| **2** | 0 | 0 | 0 |\n")
