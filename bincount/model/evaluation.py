"""Evaluate a registered model on a frozen evaluation set, beside the ABID baseline.

An evaluation set is a split of an immutable manifest; its id hashes the manifest version, the
split and every (image_id, label), so two reports are comparable exactly when their ids match.
The report says what the set is (size, source, count policy, benchmark or not) so that unlike
sets are never compared silently.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.data.manifestdetails import ManifestDetails
from bincount.images.shards import load_cached_splits
from bincount.model.calibration import calibration_report
from bincount.model.device import resolve_runtime
from bincount.model.metrics import ABID_BASELINE, counting_metrics, majority_baseline
from bincount.model.prediction import predict_split
from bincount.model.records import (
    Baseline,
    EvaluationReport,
    EvaluationSet,
    ModelSummary,
    ReviewDetection,
)
from bincount.model.registry import load_model, model_folder, save_evaluation
from bincount.review.ranking import (
    detection_quality,
    disagrees,
    discrepancy_score,
    record_probability,
    simulate_record_errors,
)

SPLIT_NAMES = ("test", "val", "benchmark")
MODERATE_MAX = 5  # ABID's moderate counting task: bins of 0-5 items
# Record errors simulated on the evaluated split to measure the review queue: the share of
# records moved, and a fixed seed so that two models are measured on the same wrong records.
SIMULATED_ERROR_RATE = 0.05
SIMULATION_SEED = 20261122


def evaluation_set(manifest: pa.Table, details: ManifestDetails, split: str) -> EvaluationSet:
    """The identity and description of one manifest split as an evaluation set."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"Expected split in {SPLIT_NAMES}, but got {split!r}")
    benchmark = details.benchmark
    if split == "benchmark" and not benchmark:
        raise ValueError(
            f"Expected manifest {details.version} to be built with --benchmark-split, but it "
            "has no benchmark: its test split is a hash sample, evaluate with --split test"
        )
    rows = manifest.filter(pc.equal(manifest["split"], _manifest_split(split)))
    digest = hashlib.sha256(f"{details.version}/{split}".encode())
    for image_id, label in zip(
        rows["image_id"].to_pylist(), rows["label"].to_pylist(), strict=True
    ):
        digest.update(f"{image_id}:{label};".encode())
    labels = rows["label"].to_pylist()
    return EvaluationSet(
        id=digest.hexdigest()[:12],
        manifest_version=details.version,
        split=split,
        size=rows.num_rows,
        source=", ".join(details.all_sources),
        policy=details.policy,
        max_count=details.max_count,
        open_top=details.open_top,
        labels={str(k): labels.count(k) for k in sorted(set(labels))},
        is_abid_benchmark=bool(benchmark) and split in ("test", "benchmark"),
    )


def _manifest_split(split: str) -> str:
    return "test" if split == "benchmark" else split


def evaluate_model(
    output: Location,
    version: str,
    *,
    split: str = "test",
    manifest_version: str | None = None,
    device: str | None = None,
) -> EvaluationReport:
    """Predict a split with model ``version`` (or ``champion``); store and return the report."""
    model, record = load_model(output, version)
    manifest_version = manifest_version or record.lineage.manifest_version
    manifest, details = load_manifest(output, manifest_version)
    evaluated = evaluation_set(manifest, details, split)
    config = record.config
    size = config.image_size
    cached = load_cached_splits(output, manifest_version, size, ("train", _manifest_split(split)))
    target = cached[_manifest_split(split)]
    if not len(target):
        raise ValueError(f"Expected images in the {split} split of {manifest_version}, got none")
    runtime = resolve_runtime(device)
    model = model.to(runtime.device)
    view_logits, probabilities = predict_split(
        model, target, runtime=runtime, flips=config.test_time_flips
    )
    predictions = model.count_from_probabilities(probabilities).tolist()
    labels = target.labels.tolist()
    num_classes = max(model.num_classes, max(labels) + 1)
    metrics = counting_metrics(predictions, labels, num_classes=num_classes)
    train_labels = cached["train"].labels.tolist() or labels
    majority = majority_baseline(train_labels, labels, num_classes=num_classes)
    moderate = [i for i, label in enumerate(labels) if label <= MODERATE_MAX]
    calibration = calibration_report(
        functools.partial(model.probabilities, calibrated=False),
        view_logits,
        torch.tensor(labels),
        float(model.temperature),
    )

    key = f"{model_folder(record.version)}/evaluations/{evaluated.id}-predictions.parquet"
    output.write_parquet(
        key,
        pa.table(
            {
                "image_id": target.image_ids,
                "label": pa.array(labels, pa.int32()),
                "predicted_count": pa.array(predictions, pa.int32()),
                "count_probabilities": pa.array(probabilities.tolist(), pa.list_(pa.float32())),
            }
        ),
    )
    report = EvaluationReport(
        model_version=record.version,
        model=ModelSummary(
            **config.model_dump(include={"arch", "loss", "image_size", "max_count"}),
            open_top=model.open_top,
        ),
        evaluation_set=evaluated,
        images_left_out=evaluated.size - len(target),
        metrics=metrics,
        majority_baseline=majority,
        abid_baseline=Baseline(**ABID_BASELINE),
        # A model that also predicts counts above 5 (or "more than K") is compared with ABID's
        # moderate task on the bins recorded 0-5, its predictions as they are.
        metrics_moderate=counting_metrics(
            [predictions[i] for i in moderate],
            [labels[i] for i in moderate],
            num_classes=num_classes,
        )
        if model.num_classes > MODERATE_MAX + 1 and moderate
        else None,
        calibration=calibration,
        review_detection=review_detection(
            probabilities.numpy(), np.array(labels), predictions, model=model
        ),
        predictions_uri=output.uri(key),
    )
    save_evaluation(output, record.version, report)
    return report


def review_detection(
    probabilities: np.ndarray, labels: np.ndarray, predictions: list[int], *, model
) -> ReviewDetection:
    """How well the review queue would find wrong records on this set: 5% of its records moved
    as a mismatched record is (``simulate_record_errors``), ranked by ``p_recorded`` and, for
    comparison, by "predicted count differs from the record"."""
    records, errors = simulate_record_errors(
        labels,
        rate=SIMULATED_ERROR_RATE,
        seed=SIMULATION_SEED,
        max_count=model.max_count,
        open_top=model.open_top,
    )
    known = [int(r) for r in records]
    p = record_probability(probabilities, known, max_count=model.max_count, open_top=model.open_top)
    differs = disagrees(predictions, known, max_count=model.max_count, open_top=model.open_top)
    return ReviewDetection(
        simulated_error_rate=SIMULATED_ERROR_RATE,
        seed=SIMULATION_SEED,
        p_recorded=detection_quality(discrepancy_score(p), errors),
        predicted_differs=detection_quality(np.array(differs, float), errors),
    )


def report_headline(report: EvaluationReport) -> dict:
    """The few figures a summary line needs: accuracy and RMSE (over every class, and on ABID's
    moderate task when the model predicts beyond it), calibration, and the queue's AP."""
    moderate = report.metrics_moderate or report.metrics
    calibration = report.calibration
    detection = report.review_detection.p_recorded if report.review_detection else None
    return {
        "accuracy": report.metrics.accuracy,
        "rmse": report.metrics.rmse,
        "moderate_accuracy": moderate.accuracy,
        "moderate_rmse": moderate.rmse,
        "temperature": calibration and calibration.temperature,
        "ece_before": calibration and calibration.ece_before,
        "ece_after": calibration and calibration.ece_after,
        "review_average_precision": detection and detection.average_precision,
    }
