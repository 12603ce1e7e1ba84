"""The reports' one Markdown helper, and the evaluation built from sections."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from bincount.nightly.monitoring import DriftCheck, DriftPolicy
from bincount.nightly.summary import ScoringSummary
from bincount.reports.drift import drift_markdown
from bincount.reports.evaluation import evaluation_markdown
from bincount.reports.markdown import num, pct, table
from bincount.reports.scoring import scoring_markdown
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


def _summary(review: list[dict]) -> ScoringSummary:
    return ScoringSummary(
        source="s3://bucket/",
        output="file:///out",
        model_version="m1",
        listed=12_345,
        not_images=0,
        already_scored=0,
        new=12_345,
        scored=12_344,
        quarantined=1,
        discrepancies=40,
        judged=12_000,
        needs_review=len(review),
        unknown_expected=0,
        seconds=10.0,
        model_seconds=4.0,
        parts=[],
        workers=[],
        queue={"judged": 12_000, "budget": 120, "policy": {"budget_percent": 1.0}},
        review=review,
    )


def _night(**changes) -> dict:
    return {
        "model_version": "m1",
        "drift": True,
        "reasons": ["PSI 0.41 > 0.25"],
        "bins": 2_500,
        "reference_bins": 1_200,
        "recent_nights": 3,
        "psi_reference": 0.41234,
        "psi_recent": math.nan,
        "mean_confidence": 0.8123,
        "reference_mean_confidence": None,
        "review_rate": 0.0123,
        "reference_review_rate": 0.01,
        "recent_review_rate": None,
        "predicted_distribution": [10, 20, 5],
        "reference_set": "set1",
        **changes,
    }


def test_the_scoring_artifact_puts_tonight_s_counts_between_its_figures_and_its_queue():
    row = {
        "review_rank": 1,
        "image_id": "00042",
        "link": "file:///bucket/00042.jpg",
        "thumbnail": "data:image/jpeg;base64,AAAA",
        "expected_quantity": 3,
        "predicted_count": 1,
        "predicted_overflow": False,
        "p_recorded": 0.001,
    }
    summary = _summary([row])
    drifted = DriftCheck(row=_night(), reference=None)
    text = scoring_markdown(summary, drifted)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Scoring with model m1",
        "## Tonight's predicted counts",
        "## Review queue: the top 1 of 1",
    ]
    assert "| images listed | 12,345 |" in text and "| images/s | 1234.5 |" in text
    assert "drift detected** (PSI 0.41 > 0.25)" in text
    photo = "![00042](data:image/jpeg;base64,AAAA) | [00042](file:///bucket/00042.jpg)"
    assert f"| 1 | {photo} | 3 | 1 | 0.1% |" in text
    # No bins judged tonight: no counts section; an empty queue says so.
    quiet = scoring_markdown(_summary([]), DriftCheck(row=_night(bins=0), reference=None))
    assert "## Tonight's predicted counts" not in quiet
    assert quiet.endswith("\n\nNothing to review tonight: no record is unlikely enough.\n")


def test_the_drift_table_reads_a_figure_not_measured_as_a_dash():
    night = _night(input_statistics=[], monitored_at=datetime(2026, 12, 1, 3, tzinfo=UTC))
    text = drift_markdown(DriftCheck(row=night, reference=None, history=[night]), DriftPolicy())
    lines = text.splitlines()
    assert "| PSI of the predicted counts (alert above 0.25) | | 0.412 | - |" in lines
    assert "| bins | 2,500 | 1,200 | 3 nights |" in lines
    assert any(
        line.startswith("| mean confidence ") and line.endswith("| 81.2% | - | |") for line in lines
    )
