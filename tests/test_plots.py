"""The charts of the artifacts: real PNGs, small, not blank, and matplotlib only when drawing."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from bincount.model.calibration import ReliabilityBin
from bincount.reports import charts as plots

MAX_URI_BYTES = 60_000  # "tens of KB" per image, as base64 in the artifact


def _png(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert len(uri) < MAX_URI_BYTES, f"{len(uri):,} bytes"
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :], validate=True)))
    image.load()
    low, high = zip(*image.convert("RGB").getextrema(), strict=True)
    assert max(high) - min(low) > 100, "a blank chart"
    return image


HISTORY = [
    {
        "epoch": e,
        "train_loss": 2 / e,
        "val_loss": 2.2 / e,
        "val_accuracy": 0.3 + 0.04 * e,
        "val_rmse": 2 / e**0.5,
    }
    for e in range(1, 9)
]
NAMES = plots.class_names(12, open_top=True)


def test_class_names_end_with_the_open_top():
    assert plots.class_names(5, open_top=True) == ["0", "1", "2", "3", ">3"]
    assert plots.class_names(3, open_top=False) == ["0", "1", "2"]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.training_curves(HISTORY, best_epoch=7),
        lambda: plots.training_curves(HISTORY[:1]),
        lambda: plots.confusion_heatmap(
            [[(i * 7 + j * 3) % 20 if abs(i - j) < 3 else 0 for j in range(12)] for i in range(12)],
            names=NAMES,
        ),
        lambda: plots.reliability_diagram(
            [
                ReliabilityBin(
                    low=b / 10,
                    high=(b + 1) / 10,
                    n=10 * b,
                    confidence=b / 10 + 0.05,
                    accuracy=b / 12,
                )
                for b in range(10)
            ],
            [
                ReliabilityBin(
                    low=b / 10,
                    high=(b + 1) / 10,
                    n=0 if b == 9 else 10 * b,
                    confidence=b / 10 + 0.05,
                    accuracy=b / 10,
                )
                for b in range(10)
            ],
        ),
        lambda: plots.per_count_accuracy(
            [0.9, 0.7, float("nan")] + [0.5] * 9, [0.977] * 6, names=NAMES
        ),
        lambda: plots.count_bars(
            {"train": list(range(12)), "val": [1] * 12, "test": [2] * 12},
            names=NAMES,
            title="manifest",
            stacked=True,
        ),
        lambda: plots.count_bars(
            {"tonight": [5.0] * 12, "test set": [8.0] * 12},
            names=NAMES,
            title="predicted",
            ylabel="share (%)",
        ),
        lambda: plots.drift_trend(
            [
                {
                    "monitored_at": datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=d),
                    "psi_reference": 0.05 * d,
                    "psi_recent": None if d == 0 else 0.03 * d,
                    "mean_confidence": 0.6,
                    "review_rate": None if d == 2 else 0.05,
                    "reference_mean_confidence": 0.62,
                    "reference_review_rate": 0.04,
                    "drift": d == 7,
                }
                for d in range(8)
            ],
            max_psi=0.25,
        ),
    ],
    ids=[
        "curves",
        "one-epoch",
        "heatmap",
        "reliability",
        "accuracy",
        "stacked",
        "grouped",
        "trend",
    ],
)
def test_every_chart_is_a_small_readable_png(draw):
    image = _png(draw())
    assert 250 <= image.width <= 1200 and 200 <= image.height <= 900


def test_charts_say_what_they_expected():
    with pytest.raises(ValueError, match="Expected at least one epoch"):
        plots.training_curves([])
    with pytest.raises(ValueError, match="Expected a square confusion matrix"):
        plots.confusion_heatmap([[1, 2]], names=["0"])
    with pytest.raises(ValueError, match=r"Expected 3 values in series 'a', but got 2"):
        plots.count_bars({"a": [1, 2]}, names=["0", "1", "2"], title="t")


def test_markdown_image_keeps_alt_text_from_closing_the_link():
    assert plots.markdown_image("a [b]", "data:x") == "![a (b)](data:x)"


def test_matplotlib_is_imported_only_when_a_chart_is_drawn():
    code = (
        "import sys, bincount.reports.charts, bincount.nightly.monitoring\n"
        "print('matplotlib' in sys.modules)\n"
        "bincount.reports.charts.count_bars({'a': [1, 2]}, names=['0', '1'], title='t')\n"
        "print('matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True", "False"]
