"""Evaluate a registered model on a frozen evaluation set, beside the ABID baseline.

An evaluation set is a split of an immutable manifest; its id hashes the manifest version, the
split and every (image_id, label), so two reports are comparable exactly when their ids match.
The report says what the set is (size, source, count policy, benchmark or not) so that unlike
sets are never compared silently.
"""

from __future__ import annotations

import hashlib
import math

import pyarrow as pa
import pyarrow.compute as pc

from bincount.imagecache import load_cached_splits
from bincount.manifest import load_manifest
from bincount.metrics import ABID_BASELINE, counting_metrics, majority_baseline
from bincount.registry import load_model, model_folder, save_evaluation
from bincount.storage import Location
from bincount.training import predict_split, resolve_runtime

SPLIT_NAMES = ("test", "val", "benchmark")


def evaluation_set(manifest: pa.Table, details: dict, split: str) -> dict:
    """The identity and description of one manifest split as an evaluation set."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"Expected split in {SPLIT_NAMES}, but got {split!r}")
    benchmark = details.get("benchmark")
    if split == "benchmark" and not benchmark:
        raise ValueError(
            f"Expected manifest {details['version']} to be built with --benchmark-split, but it "
            "has no benchmark: its test split is a hash sample, evaluate with --split test"
        )
    rows = manifest.filter(pc.equal(manifest["split"], _manifest_split(split)))
    digest = hashlib.sha256(f"{details['version']}/{split}".encode())
    for image_id, label in zip(
        rows["image_id"].to_pylist(), rows["label"].to_pylist(), strict=True
    ):
        digest.update(f"{image_id}:{label};".encode())
    labels = rows["label"].to_pylist()
    return {
        "id": digest.hexdigest()[:12],
        "manifest_version": details["version"],
        "split": split,
        "size": rows.num_rows,
        "source": details["source"],
        "policy": details["policy"],
        "max_count": details["max_count"],
        "labels": {str(k): labels.count(k) for k in sorted(set(labels))},
        "is_abid_benchmark": bool(benchmark) and split in ("test", "benchmark"),
        "benchmark": benchmark,
    }


def _manifest_split(split: str) -> str:
    return "test" if split == "benchmark" else split


def evaluate_model(
    output: Location,
    version: str,
    *,
    split: str = "test",
    manifest_version: str | None = None,
    device: str | None = None,
) -> dict:
    """Predict a split with model ``version`` (or ``champion``); store and return the report."""
    model, record = load_model(output, version)
    manifest_version = manifest_version or record["lineage"]["manifest_version"]
    manifest, details = load_manifest(output, manifest_version)
    evaluated = evaluation_set(manifest, details, split)
    size = record["config"]["image_size"]
    cached = load_cached_splits(output, manifest_version, size, ("train", _manifest_split(split)))
    target = cached[_manifest_split(split)]
    if not len(target):
        raise ValueError(f"Expected images in the {split} split of {manifest_version}, got none")
    runtime = resolve_runtime(device)
    model = model.to(runtime.device)
    _, probabilities = predict_split(
        model, target, runtime=runtime, flips=record["config"].get("test_time_flips", False)
    )
    predictions = model.count_from_probabilities(probabilities).tolist()
    labels = target.labels.tolist()
    num_classes = max(model.max_count, max(labels)) + 1
    metrics = counting_metrics(predictions, labels, num_classes=num_classes)
    train_labels = cached["train"].labels.tolist() or labels
    majority = majority_baseline(train_labels, labels, num_classes=num_classes)

    key = f"{model_folder(record['version'])}/evaluations/{evaluated['id']}-predictions.parquet"
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
    report = {
        "model_version": record["version"],
        "model": {k: record["config"][k] for k in ("arch", "loss", "image_size", "max_count")},
        "evaluation_set": {k: v for k, v in evaluated.items() if k != "benchmark"},
        "images_left_out": evaluated["size"] - len(target),
        "metrics": metrics.to_dict(),
        "majority_baseline": majority.to_dict(),
        "abid_baseline": ABID_BASELINE,
        "predictions_uri": output.uri(key),
    }
    save_evaluation(output, record["version"], report)
    return report


def report_markdown(report: dict) -> str:
    """The report side by side with the ABID ResNet-34 baseline and the majority class."""
    ours, majority, abid = report["metrics"], report["majority_baseline"], report["abid_baseline"]
    evaluated = report["evaluation_set"]
    comparable = evaluated["is_abid_benchmark"] and evaluated["max_count"] == 5
    lines = [
        f"# Evaluation of model {report['model_version']}",
        "",
        f"Set `{evaluated['id']}`: the {evaluated['split']} split of manifest "
        f"`{evaluated['manifest_version']}`, {evaluated['size']:,} bins from "
        f"`{evaluated['source']}`, policy {evaluated['policy']}.",
        "",
        (
            "This set is the ABID challenge benchmark: the baseline column is comparable."
            if comparable
            else "**Not the ABID benchmark set**: the ABID column is for reference only; it was "
            "measured on the challenge's moderate validation set of real bins."
        ),
        "",
        "| metric | this model | majority class | ABID ResNet-34 |",
        "|---|---:|---:|---:|",
        f"| accuracy | {_pct(ours['accuracy'])} | {_pct(majority['accuracy'])} "
        f"| {_pct(abid['accuracy'])} |",
        f"| RMSE | {ours['rmse']:.3f} | {majority['rmse']:.3f} | {abid['rmse']:.3f} |",
    ]
    for count in range(len(ours["per_class_accuracy"])):
        abid_acc = abid["per_class_accuracy"]
        abid_rmse = abid["per_class_rmse"]
        lines.append(
            f"| count {count}: accuracy / RMSE (n={ours['per_class_n'][count]}) "
            f"| {_pct(ours['per_class_accuracy'][count])} / {_num(ours['per_class_rmse'][count])} "
            f"| {_pct(majority['per_class_accuracy'][count])} / "
            f"{_num(majority['per_class_rmse'][count])} "
            f"| {_pct(abid_acc[count]) if count < len(abid_acc) else '-'} / "
            f"{_num(abid_rmse[count]) if count < len(abid_rmse) else '-'} |"
        )
    lines += ["", "Confusion matrix (rows: recorded count, columns: predicted):", ""]
    size = len(ours["confusion"])
    lines.append("| | " + " | ".join(str(i) for i in range(size)) + " |")
    lines.append("|---|" + "---:|" * size)
    for count, row in enumerate(ours["confusion"]):
        lines.append(f"| **{count}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
