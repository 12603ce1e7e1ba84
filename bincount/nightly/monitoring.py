"""Drift monitoring: does tonight's scoring look like what the model was judged on?

Every scoring run is compared with two references and the comparison is kept, one row per run,
in ``<output>/monitoring/part-<run id>.parquet``:

* **the model's test set**: the predictions its evaluation saved
  (``models/<version>/evaluations/<set>-predictions.parquet``, the champion's promotion set when
  the model is the champion). A new champion is thus a new reference;
* **recent nights**: the last ``recent_nights`` runs scored by the same model (a new champion
  starts with none), pooled.

The statistics:

* **PSI** (population stability index) of the predicted-count classes (0..K, and "more than K"):
  ``sum_k (p_k - q_k) ln(p_k / q_k)`` over tonight's shares ``p`` and the reference's ``q``, each
  share floored at 0.0001 so that an empty class stays finite. The usual reading:
  below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a population that has changed.
  Sampling alone gives about ``(classes - 1) (1/n + 1/m)`` (0.05 for 400 bins against 600).
* **confidence shift**: tonight's mean confidence (the probability of the predicted count)
  minus the reference's. Darker, blurred or unfamiliar photos lower it.
* **review rate**: the share of tonight's judged bins the queue flagged, beside the rate the
  same policy gives the test set's (right) records and the recent nights' median.

* **input drift** (:mod:`.inputdrift`): the PSI of each photo statistic kept while scoring
  (brightness, contrast, colour balance, sharpness, size, bytes per pixel) against the model's
  reference images and the recent undrifted nights: a failed lamp shows here whatever the model
  predicts.

A night is a drift when one of ``DriftPolicy``'s thresholds is passed; nights with fewer than
``min_bins`` scored bins are recorded but not judged (too few for a share to mean anything).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from bincount.core.storage import Location
from bincount.core.tables import SCORES, read_table, write_part
from bincount.model.records import EvaluationReport
from bincount.model.registry import champion, model_folder, read_model_record
from bincount.nightly.inputdrift import input_figures, input_reasons, keep_input_reference
from bincount.nightly.stability import population_stability_index
from bincount.review.ranking import ReviewPolicy, rank_queue, record_probability

MONITORING = "monitoring"
DRIFT_EVENT = "bincount.drift.detected"
TREND_NIGHTS = 30  # nights in the trend chart

logger = logging.getLogger(__name__)


class DriftPolicy(BaseModel):
    """When a night counts as a drift; the README's "Drift monitoring" explains each figure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_psi: float = Field(
        0.25, gt=0, description="alert when the PSI against the test set or recent nights is above"
    )
    max_confidence_drop: float = Field(
        0.10, gt=0, le=1, description="alert when mean confidence is this far below the test set's"
    )
    max_review_rate_rise: float = Field(
        0.05,
        gt=0,
        le=1,
        description="alert when the review rate is this far above the recent nights' median",
    )
    recent_nights: int = Field(7, ge=1, description="how many earlier nights of the same model")
    min_recent_nights: int = Field(
        3, ge=1, description="the review rate is compared with recent nights from this many on"
    )
    min_bins: int = Field(100, ge=1, description="nights with fewer scored bins are not judged")
    max_input_psi: float = Field(
        0.5,
        gt=0,
        description="alert when an image statistic's PSI against the model's reference images "
        "or recent nights is above",
    )


@dataclass(frozen=True)
class Reference:
    """What the model did on its test set, the yardstick of every night it scores."""

    model_version: str
    evaluation_set: str
    bins: int
    distribution: list[int]
    mean_confidence: float
    review_rate: float | None


@dataclass(frozen=True)
class DriftCheck:
    """One night's monitoring row, the reference it was measured against and the recent rows
    (oldest first, this night last) for the trend chart."""

    row: dict
    reference: Reference | None
    history: list[dict] = field(default_factory=list)
    open_top: bool = False  # the last class of the distributions is "more than K"

    @property
    def drift(self) -> bool:
        return bool(self.row["drift"])

    @property
    def reasons(self) -> list[str]:
        return list(self.row["reasons"])

    def event_payload(self) -> dict:
        """What an alert carries: the figures, the reasons, the thresholds."""
        keys = (
            "run_id",
            "model_version",
            "reference_set",
            "bins",
            "psi_reference",
            "psi_recent",
            "mean_confidence",
            "reference_mean_confidence",
            "confidence_shift",
            "review_rate",
            "reference_review_rate",
            "recent_review_rate",
            "recent_nights",
        )
        names = self.row.get("input_statistics") or []
        inputs = {
            name: {
                key: self.row[column][i] if self.row.get(column) else None
                for key, column in (
                    ("median", "input_medians"),
                    ("reference_median", "reference_input_medians"),
                    ("psi_reference", "input_psi_reference"),
                    ("psi_recent", "input_psi_recent"),
                )
            }
            for i, name in enumerate(names)
        }
        return {
            **{key: self.row[key] for key in keys},
            "inputs": inputs,
            "reasons": self.reasons,
            "policy": json.loads(self.row["policy"]),
        }


def histogram(predicted_counts: Sequence[int], classes: int) -> list[int]:
    """Bins per predicted-count class 0..classes-1 (a count past the last lands in the last)."""
    counts = np.clip(np.asarray(predicted_counts, dtype=np.int64), 0, classes - 1)
    return np.bincount(counts, minlength=classes).astype(int).tolist()


def load_reference(output: Location, model_version: str, review: ReviewPolicy) -> Reference | None:
    """The model's test-set predictions as a reference (None when it was never evaluated)."""
    set_id = _reference_set(output, model_version)
    if set_id is None:
        return None
    table = output.read_parquet(
        f"{model_folder(model_version)}/evaluations/{set_id}-predictions.parquet"
    )
    if not table.num_rows:
        return None
    probabilities = np.array(table.column("count_probabilities").to_pylist(), dtype=np.float64)
    predicted = np.array(table.column("predicted_count").to_pylist(), dtype=np.int64)
    labels = table.column("label").to_pylist()
    classes = probabilities.shape[1]
    max_count, open_top = _count_range(output, model_version, classes)
    confidence = probabilities[np.arange(len(predicted)), np.clip(predicted, 0, classes - 1)]
    p_recorded = record_probability(probabilities, labels, max_count=max_count, open_top=open_top)
    decision = rank_queue(p_recorded, [str(i) for i in range(len(labels))], review)
    return Reference(
        model_version=model_version,
        evaluation_set=set_id,
        bins=len(predicted),
        distribution=histogram(predicted, classes),
        mean_confidence=float(confidence.mean()),
        review_rate=decision.flagged / decision.judged if decision.judged else None,
    )


def _reference_set(output: Location, model_version: str) -> str | None:
    current = champion(output)
    if current is not None and current.version == model_version:
        return current.evaluation_set.id
    # Another model (scored by name): its newest evaluation on a test split.
    folder = f"{model_folder(model_version)}/evaluations"
    found = []
    for key in output.list_files(folder):
        if key.endswith(".json"):
            report = EvaluationReport.model_validate(json.loads(output.read_bytes(key)))
            evaluated = report.evaluation_set
            if evaluated.split in ("test", "benchmark"):
                found.append((key, evaluated.id))
    predictions = [
        set_id
        for key, set_id in sorted(found)
        if output.exists(f"{folder}/{set_id}-predictions.parquet")
    ]
    return predictions[-1] if predictions else None


def _count_range(output: Location, model_version: str, classes: int) -> tuple[int, bool]:
    """The model's largest exact count K, and whether its last class is "more than K"."""
    record = read_model_record(output, model_version)
    if record is None or record.config.max_count is None:
        return classes - 1, False
    max_count = record.config.max_count
    return max_count, classes == max_count + 2


def monitor_night(
    output: Location,
    *,
    run_id: str,
    model_version: str,
    review: ReviewPolicy,
    policy: DriftPolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DriftCheck:
    """Compare the bins run ``run_id`` scored with the model's test set and its recent nights;
    write the night's monitoring row (a rerun of the same run rewrites it)."""
    night = read_table(
        output,
        SCORES,
        columns=[
            "predicted_count",
            "confidence",
            "count_probabilities",
            "p_recorded",
            "needs_review",
        ],
        filter=(ds.field("run_id") == run_id) & (ds.field("model_version") == model_version),
    )
    reference = load_reference(output, model_version, review)
    classes = _classes(night, reference)
    distribution = (
        histogram(night.column("predicted_count").to_pylist(), classes) if classes else []
    )
    judged = night.filter(ds.field("p_recorded").is_valid())
    flagged = sum(bool(flag) for flag in judged.column("needs_review").to_pylist())
    confidence = night.column("confidence").to_numpy(zero_copy_only=False)
    earlier = earlier_nights(output, model_version, before_run=run_id)
    # A drifted night is no yardstick: beside it, the night after a lamp failed looks normal.
    recent = [r for r in earlier if r["bins"] >= policy.min_bins and not r["drift"]][
        : policy.recent_nights
    ]
    row = {
        "run_id": run_id,
        "monitored_at": clock(),
        "model_version": model_version,
        "reference_set": reference.evaluation_set if reference else None,
        "bins": night.num_rows,
        "judged": judged.num_rows,
        "flagged": flagged,
        "review_rate": flagged / judged.num_rows if judged.num_rows else None,
        "mean_confidence": float(confidence.mean()) if len(confidence) else None,
        "predicted_distribution": distribution,
        "reference_bins": reference.bins if reference else None,
        "reference_mean_confidence": reference.mean_confidence if reference else None,
        "reference_review_rate": reference.review_rate if reference else None,
        "recent_nights": len(recent),
        "recent_review_rate": _median([r["review_rate"] for r in recent]),
        "policy": policy.model_dump_json(),
    }
    row.update(
        input_figures(
            output,
            run_id=run_id,
            model_version=model_version,
            reference=_input_reference(output, model_version, reference),
            recent_runs=[r["run_id"] for r in recent],
            min_images=policy.min_bins,
        )
    )
    row.update(_judge(row, reference, recent, policy))
    write_part(output, MONITORING, run_id, [row])
    return DriftCheck(
        row=row,
        reference=reference,
        history=[*reversed(earlier[: TREND_NIGHTS - 1]), row],
        open_top=classes > 0 and _count_range(output, model_version, classes)[1],
    )


def _input_reference(output: Location, model_version: str, reference: Reference | None):
    """The champion's reference photos' statistics, or None where they cannot be built here
    (an output holding the registry alone, without the manifest the model was evaluated on):
    the night is then compared with recent nights only, never failed for it."""
    if reference is None:
        return None
    try:
        return keep_input_reference(output, model_version, reference.evaluation_set)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("input drift without the model's reference photos: %s", error)
        return None


def _classes(night: pa.Table, reference: Reference | None) -> int:
    if reference is not None:
        return len(reference.distribution)
    widths = {len(p) for p in night.column("count_probabilities").to_pylist()}
    return max(widths, default=0)


def earlier_nights(output: Location, model_version: str, *, before_run: str) -> list[dict]:
    """The monitoring rows of ``model_version`` but run ``before_run``'s own, newest first."""
    rows = read_table(
        output, MONITORING, filter=ds.field("model_version") == model_version
    ).to_pylist()
    rows = [r for r in rows if r["run_id"] != before_run]
    return sorted(rows, key=lambda r: r["monitored_at"], reverse=True)


def _judge(row: dict, reference: Reference | None, recent: list[dict], policy: DriftPolicy) -> dict:
    """The night's statistics against both references, and the thresholds it passed."""
    distribution = row["predicted_distribution"]
    psi_reference = psi_recent = confidence_shift = None
    if reference is not None and row["bins"]:
        psi_reference = population_stability_index(distribution, reference.distribution)
        confidence_shift = row["mean_confidence"] - reference.mean_confidence
    pooled = [
        r["predicted_distribution"]
        for r in recent
        if len(r["predicted_distribution"]) == len(distribution)
    ]
    if pooled and row["bins"]:
        psi_recent = population_stability_index(distribution, np.sum(pooled, axis=0).tolist())
    reasons = []
    if row["bins"] >= policy.min_bins:
        if psi_reference is not None and psi_reference > policy.max_psi:
            reasons.append(f"PSI against the test set {psi_reference:.3f} > {policy.max_psi:g}")
        if psi_recent is not None and psi_recent > policy.max_psi:
            reasons.append(f"PSI against recent nights {psi_recent:.3f} > {policy.max_psi:g}")
        if confidence_shift is not None and -confidence_shift > policy.max_confidence_drop:
            reasons.append(
                f"mean confidence {row['mean_confidence']:.3f}, {-confidence_shift:.3f} below the "
                f"test set's {reference.mean_confidence:.3f} (> {policy.max_confidence_drop:g})"
            )
        recent_rate = row["recent_review_rate"]
        if (
            row["review_rate"] is not None
            and recent_rate is not None
            and len(recent) >= policy.min_recent_nights
            and row["review_rate"] - recent_rate > policy.max_review_rate_rise
        ):
            reasons.append(
                f"review rate {100 * row['review_rate']:.1f}%, "
                f"{100 * (row['review_rate'] - recent_rate):.1f} points above recent nights' "
                f"{100 * recent_rate:.1f}% (> {100 * policy.max_review_rate_rise:g})"
            )
        reasons += input_reasons(row, policy.max_input_psi)
    return {
        "psi_reference": psi_reference,
        "psi_recent": psi_recent,
        "confidence_shift": confidence_shift,
        "drift": bool(reasons),
        "reasons": reasons,
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(known) if known else None
