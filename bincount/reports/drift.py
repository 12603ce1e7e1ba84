"""Markdown and charts for a night's drift check."""

from __future__ import annotations

from collections.abc import Sequence

from bincount.nightly.monitoring import DriftCheck, DriftPolicy
from bincount.reports.markdown import num, pct, table


# -- the artifact --------------------------------------------------------------------------------
def drift_markdown(check: DriftCheck, policy: DriftPolicy) -> str:
    """Tonight against the test set and recent nights: a verdict, the figures, two charts."""
    from bincount.reports import charts as plots

    row, reference = check.row, check.reference
    lines = [f"# Drift monitoring: model {row['model_version']}", ""]
    if row["drift"]:
        lines += ["**Drift detected**: " + "; ".join(row["reasons"]) + ".", ""]
    elif row["bins"] < policy.min_bins:
        lines += [f"Not judged: {row['bins']} bins scored, fewer than {policy.min_bins}.", ""]
    else:
        lines += ["No drift: every figure within its threshold.", ""]
    rows = [
        [
            "bins",
            f"{row['bins']:,}",
            _count(row["reference_bins"]),
            f"{row['recent_nights']} nights",
        ],
        [
            f"PSI of the predicted counts (alert above {policy.max_psi:g})",
            "",
            num(row["psi_reference"]),
            num(row["psi_recent"]),
        ],
        [
            f"mean confidence (alert {policy.max_confidence_drop:g} below the test set)",
            pct(row["mean_confidence"], 1),
            pct(row["reference_mean_confidence"], 1),
            "",
        ],
        [
            f"review rate (alert {100 * policy.max_review_rate_rise:g} points above recent nights)",
            pct(row["review_rate"], 1),
            pct(row["reference_review_rate"], 1),
            pct(row["recent_review_rate"], 1),
        ],
    ]
    lines += [table(["measure", "tonight", "test set", "recent nights"], rows, "lrrr"), ""]
    lines += input_table(row, policy)
    if reference is None:
        lines += [
            "The model has no evaluation with saved predictions: evaluate it "
            "(`bincount evaluate`) to give its nights a reference.",
            "",
        ]
    lines += prediction_chart(check)
    lines += [
        plots.markdown_image(
            "drift figures of the recent nights",
            plots.drift_trend(check.history, max_psi=policy.max_psi),
        ),
        "",
        f"Reference: evaluation set `{row['reference_set']}` of model {row['model_version']}; "
        f"recent nights: the last {policy.recent_nights} runs of the same model with at least "
        f"{policy.min_bins} bins. A new champion starts a new reference. Rows: "
        "`monitoring/` (one per run).",
    ]
    return "\n".join(lines) + "\n"


def input_table(row: dict, policy: DriftPolicy) -> list[str]:
    """Markdown lines: each image statistic tonight beside the model's reference images, and its
    PSI against them and the recent nights (alert above ``policy.max_input_psi``)."""
    names = row.get("input_statistics") or []
    if not names:
        return []
    header = [
        f"photo statistic (PSI alert above {policy.max_input_psi:g})",
        "tonight's median",
        f"reference median ({_count(row.get('reference_images'))} images)",
        "PSI vs reference",
        "PSI vs recent nights",
    ]
    references = row.get("reference_input_medians") or [None] * len(names)
    rows = [
        [
            name,
            _stat(row["input_medians"][i]),
            _stat(references[i]),
            *(
                num(values[i] if values else None)
                for values in (row.get("input_psi_reference"), row.get("input_psi_recent"))
            ),
        ]
        for i, name in enumerate(names)
    ]
    return [table(header, rows, "lrrrr"), ""]


def _stat(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def prediction_chart(check: DriftCheck) -> list[str]:
    """Markdown lines: the night's predicted counts beside the test set's, as shares."""
    from bincount.reports import charts as plots

    distribution = check.row["predicted_distribution"]
    if not check.row["bins"] or not distribution:
        return []
    series = {"tonight": _shares(distribution)}
    if check.reference is not None:
        series["test set"] = _shares(check.reference.distribution)
    chart = plots.count_bars(
        series,
        names=plots.class_names(len(distribution), open_top=check.open_top),
        title="predicted counts",
        ylabel="share of bins (%)",
    )
    return [plots.markdown_image("predicted counts tonight and on the test set", chart), ""]


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts) or 1
    return [100 * c / total for c in counts]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
