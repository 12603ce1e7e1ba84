"""Charts for the operators: small PNGs as ``data:`` URIs, for Markdown artifacts.

The Prefect UI renders ``![alt](data:image/png;base64,...)`` inside a Markdown artifact, so a
chart needs no file server. Each chart is drawn on its own matplotlib ``Figure`` (no pyplot, no
global state: safe in threads), rasterised by Agg and reduced to a palette PNG of a few tens of
KB. matplotlib is imported when a chart is drawn, not when this module is: the library stays
light for code that never draws.

Count classes are named as everywhere else: ``0..K``, and ``>K`` for "more than K" when a
model or manifest has an open top class.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bincount.model.calibration import ReliabilityBin

_DPI = 100
_COLOURS = 48  # palette size of the PNG: charts use few colours, and text stays crisp
_OURS, _OTHER, _THIRD = "#1f77b4", "#ff7f0e", "#7f7f7f"


def markdown_image(alt: str, uri: str) -> str:
    """A Markdown image; ``alt`` keeps what the chart shows readable where images are not."""
    return f"![{alt.replace('[', '(').replace(']', ')')}]({uri})"


def class_names(classes: int, *, open_top: bool) -> list[str]:
    """``["0", "1", ..., "K", ">K"]`` for ``classes`` count classes (the last one open)."""
    names = [str(count) for count in range(classes)]
    if open_top and classes > 1:
        names[-1] = f">{classes - 2}"
    return names


def training_curves(history: Sequence[Mapping], *, best_epoch: int | None = None) -> str:
    """Train and validation loss, validation accuracy and RMSE against epochs."""
    if not history:
        raise ValueError("Expected at least one epoch of history, but got none")
    figure, (losses, quality) = _figure(9.0, 3.2, columns=2)
    epochs = [row["epoch"] for row in history]
    losses.plot(epochs, [row["train_loss"] for row in history], "o-", ms=3, label="train loss")
    losses.plot(epochs, [row["val_loss"] for row in history], "o-", ms=3, label="val loss")
    losses.set_xlabel("epoch")
    losses.set_title("loss")
    accuracy = [100 * row["val_accuracy"] for row in history]
    quality.plot(epochs, accuracy, "o-", ms=3, color="#2ca02c", label="val accuracy (%)")
    quality.set_xlabel("epoch")
    quality.set_ylabel("val accuracy (%)", color="#2ca02c")
    quality.set_title("validation")
    rmse = quality.twinx()
    rmse.plot(epochs, [row["val_rmse"] for row in history], "s--", ms=3, color="#d62728")
    rmse.set_ylabel("val RMSE", color="#d62728")
    for axes in (losses, quality):
        axes.xaxis.get_major_locator().set_params(integer=True)
        if best_epoch is not None:
            axes.axvline(best_epoch, color=_THIRD, lw=0.8, ls=":", label=f"best epoch {best_epoch}")
    losses.legend(frameon=False, fontsize=8)
    return _png_uri(figure)


def confusion_heatmap(confusion: Sequence[Sequence[int]], *, names: Sequence[str]) -> str:
    """Rows: the recorded count; columns: the predicted one; shaded by the share of the row,
    each cell with its number of bins."""
    size = len(confusion)
    if size == 0 or any(len(row) != size for row in confusion) or len(names) != size:
        raise ValueError(
            f"Expected a square confusion matrix with {len(names)} named classes, but got "
            f"{[len(row) for row in confusion]}"
        )
    figure, (axes,) = _figure(0.42 * size + 2.2, 0.36 * size + 1.4)
    shares = [[value / (sum(row) or 1) for value in row] for row in confusion]
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            if value:
                colour = "white" if shares[i][j] > 0.55 else "black"
                axes.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(size), names, fontsize=8)
    axes.set_yticks(range(size), names, fontsize=8)
    axes.set_xlabel("predicted count")
    axes.set_ylabel("recorded count")
    axes.set_title("confusion matrix (shade: share of the row)")
    return _png_uri(figure)


def reliability_diagram(before: Sequence[ReliabilityBin], after: Sequence[ReliabilityBin]) -> str:
    """Accuracy against confidence per confidence bin, before and after the temperature, with
    the diagonal a calibrated model follows and the bins' sizes underneath."""
    figure, (axes, counts) = _figure(4.6, 4.4, rows=2, heights=(3, 1))
    axes.plot([0, 1], [0, 1], color=_THIRD, lw=0.8, ls=":", label="calibrated")
    for rows, name, colour in ((before, "before", _OTHER), (after, "after", _OURS)):
        points = [(r.confidence, r.accuracy) for r in rows if r.n]
        axes.plot(*zip(*points, strict=True), "o-", ms=4, color=colour, label=name)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.set_title("reliability (top label)")
    axes.legend(frameon=False, loc="upper left")
    width = 1 / max(len(after), 1)
    centres = [(r.low + r.high) / 2 for r in after]
    counts.bar([c - width / 4 for c in centres], [r.n for r in before], width / 2, color=_OTHER)
    counts.bar([c + width / 4 for c in centres], [r.n for r in after], width / 2, color=_OURS)
    counts.set_xlim(0, 1)
    counts.set_xlabel("confidence")
    counts.set_ylabel("bins")
    return _png_uri(figure)


def per_count_accuracy(
    ours: Sequence[float],
    baseline: Sequence[float],
    *,
    names: Sequence[str],
    ours_label: str = "this model",
    baseline_label: str = "ABID ResNet-34",
) -> str:
    """Accuracy per recorded count, this model's bars beside the baseline's (where it has one)."""
    if len(ours) != len(names):
        raise ValueError(f"Expected one name per class ({len(ours)}), but got {len(names)}")
    figure, (axes,) = _figure(max(4.5, 0.5 * len(ours) + 1.5), 3.0)
    x = range(len(ours))
    axes.bar(
        [i - 0.2 for i in x], [_percent_point(v) for v in ours], 0.4, color=_OURS, label=ours_label
    )
    axes.bar(
        [i + 0.2 for i in range(len(baseline))],
        [_percent_point(v) for v in baseline],
        0.4,
        color=_OTHER,
        label=baseline_label,
    )
    axes.set_xticks(list(x), names)
    axes.set_ylim(0, 100)
    axes.set_xlabel("recorded count")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("accuracy per count")
    axes.legend(frameon=False, fontsize=8)
    return _png_uri(figure)


def count_bars(
    series: Mapping[str, Sequence[float]],
    *,
    names: Sequence[str],
    title: str,
    ylabel: str = "bins",
    stacked: bool = False,
) -> str:
    """Bars per count class, one colour per series: grouped, or stacked (a manifest's splits)."""
    if not series:
        raise ValueError("Expected at least one series of bars, but got none")
    for label, values in series.items():
        if len(values) != len(names):
            raise ValueError(
                f"Expected {len(names)} values in series {label!r}, but got {len(values)}"
            )
    figure, (axes,) = _figure(max(4.5, 0.32 * len(names) * (1 + (not stacked)) + 1.6), 3.0)
    colours = (_OURS, _OTHER, "#2ca02c", "#d62728", _THIRD)
    width = 0.8 if stacked else 0.8 / len(series)
    bottom = [0.0] * len(names)
    for index, (label, values) in enumerate(series.items()):
        offset = 0 if stacked else (index - (len(series) - 1) / 2) * width
        axes.bar(
            [i + offset for i in range(len(names))],
            values,
            width,
            bottom=bottom if stacked else None,
            color=colours[index % len(colours)],
            label=label,
        )
        if stacked:
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xticks(range(len(names)), names, fontsize=8 if len(names) > 20 else 10)
    axes.set_xlabel("count")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if len(series) > 1:
        axes.legend(frameon=False, fontsize=8)
    return _png_uri(figure)


def drift_trend(nights: Sequence[Mapping], *, max_psi: float) -> str:
    """Per scoring run: PSI against the reference and against recent nights (with the alert
    threshold), mean confidence and review rate; runs that raised an alert are marked."""
    if not nights:
        raise ValueError("Expected at least one monitored night, but got none")
    figure, (psi, rates) = _figure(9.0, 3.2, columns=2)
    x = list(range(1, len(nights) + 1))
    labels = [f"{night['monitored_at']:%m-%d %H:%M}" for night in nights]
    psi.plot(x, [_value(n["psi_reference"]) for n in nights], "o-", ms=4, label="vs reference")
    psi.plot(x, [_value(n["psi_recent"]) for n in nights], "s--", ms=4, label="vs recent nights")
    psi.axhline(max_psi, color="#d62728", lw=0.8, ls=":", label=f"alert above {max_psi:g}")
    alerts = [i for i, n in zip(x, nights, strict=True) if n["drift"]]
    if alerts:
        tops = [_value(nights[i - 1]["psi_reference"]) for i in alerts]
        psi.plot(alerts, [t if t == t else 0 for t in tops], "X", ms=10, color="#d62728")
    psi.set_title("prediction drift (PSI)")
    psi.legend(frameon=False, fontsize=8)
    rates.plot(
        x, [_percent_point(n["mean_confidence"]) for n in nights], "o-", ms=4, label="confidence"
    )
    rates.plot(
        x, [_percent_point(n["review_rate"]) for n in nights], "s-", ms=4, label="review rate"
    )
    latest = nights[-1]  # the reference of the model that scored the latest night
    for key, colour in (("reference_mean_confidence", _OURS), ("reference_review_rate", _OTHER)):
        if latest.get(key) is not None:
            rates.axhline(100 * latest[key], color=colour, lw=0.8, ls=":")
    rates.set_ylim(0, 100)
    rates.set_ylabel("%")
    rates.set_title("confidence, review rate (dotted: test set)")
    rates.legend(frameon=False, fontsize=8)
    step = max(1, len(x) // 8)
    for axes in (psi, rates):
        axes.set_xticks(x[::step], labels[::step], rotation=30, ha="right", fontsize=7)
    return _png_uri(figure)


# -- drawing -----------------------------------------------------------------------------------
def _figure(width: float, height: float, *, columns: int = 1, rows: int = 1, heights=None):
    from matplotlib.figure import Figure  # here: only code that draws pays for matplotlib

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    grid = {"height_ratios": heights} if heights else None
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=grid).ravel().tolist()
    for each in axes:
        each.spines[["top", "right"]].set_visible(False)
        each.tick_params(labelsize=8)
    return figure, axes


def _png_uri(figure) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    # A chart has a handful of colours: a small palette keeps it to tens of KB.
    palette = image.quantize(colors=_COLOURS, method=Image.Quantize.MEDIANCUT)
    small = io.BytesIO()
    palette.save(small, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(small.getvalue()).decode("ascii")


def _percent_point(value: float | None) -> float:
    # A share as a point on a 0-100 axis (a gap where not measured); text goes through pct.
    return math.nan if value is None else 100 * value


def _value(value: float | None) -> float:
    return math.nan if value is None else float(value)
