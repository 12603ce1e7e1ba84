"""bench/real.py's table and plot from saved results (``--results``: no training), and its
options refused as it says. The curve itself runs the real CLI for minutes to hours: the script
is run by hand (bench/real.py's docstring)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bench import real


def _row(size, labels, recipe, accuracy, seconds):
    return {
        "size": size,
        "labels": labels,
        "recipe": recipe,
        "overrides": {"epochs": "1"} if recipe == "real" else {},
        "seed": 0,
        "manifest": "m",
        "model": f"{recipe}{size}",
        "accuracy": accuracy,
        "rmse": 1.25,
        "recall": [None, 0.5, 0.25, 1.0, 0.0, 0.0],
        "best_epoch": 1,
        "images_left_out": 0,
        "train_seconds": seconds,
        "peak_rss_bytes": None if seconds is None else 2.2e9,
    }


def test_saved_results_print_the_table_and_draw_the_curve(tmp_path, capsys):
    results = {
        "held_out": {
            "manifest": "m",
            "policy": "moderate",
            "train_bins": 5310,
            "test_bins": 725,
            "test_labels": {"0": 26, "3": 193},
            "majority": {"count": 3, "accuracy": 0.266, "rmse": 1.34, "recall": [0, 0, 0, 1]},
        },
        "runs": [
            _row("all", 5310, "real", 0.341, 1920.0),
            _row("1000", 1000, "real", 0.30, None),
            _row("1000", 1000, "probe", 0.28, 600.0),
        ],
    }
    saved, png = tmp_path / "curve.json", tmp_path / "curve.png"
    saved.write_text(json.dumps(results))

    assert real.main(["--results", str(saved), "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[1] == "| – | majority class (3) | 26.6 % | 1.340 | 0 / 0 / 0 / 100 % | – | – |"
    assert rows[2].startswith("| 1,000 | `probe` | 28.0 % | 1.250 | – / 50 / 25 / 100 / 0 / 0 %")
    assert rows[3].startswith("| 1,000 | `real` (epochs=1) | 30.0 % |")
    assert rows[3].endswith("| reused | reused |")  # its model was trained by an earlier run
    assert rows[4].endswith("| 32.0 min | 2.20 GB |") and rows[4].startswith("| 5,310 |")
    assert any("ABID challenge baseline" in row and "55.7 %" in row for row in rows)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither a curve to run nor one to redraw
        ["--output", "R", "--recipes", "probe,nonesuch"],
        ["--output", "R", "--sizes", "1000,0"],
        ["--output", "R", "--recipe-overrides", "seed=3"],  # the curve's own option
        ["--output", "R", "--recipe-overrides", "epoch=1"],
    ],
)
def test_bad_options_are_refused(argv):
    with pytest.raises(SystemExit) as refused:
        real.parse_args(argv)
    assert refused.value.code == 2
