"""The registry's typed records read the files the registry wrote before they were typed, and
write the same bytes: same keys, same order, same values (NaN kept as ``NaN``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pydantic
import pytest
import torch

from bincount.core.storage import Location
from bincount.model.calibration import calibration_report
from bincount.model.config import TrainConfig
from bincount.model.metrics import ABID_BASELINE, counting_metrics, majority_baseline
from bincount.model.records import EvaluationReport, ModelRecord, TrainingMetrics
from bincount.model.registry import (
    ModelFiles,
    champion,
    decide_promotion,
    read_evaluation,
    read_model_record,
    record_decision,
    save_evaluation,
    save_model,
)
from bincount.review.ranking import detection_quality, discrepancy_score


def _old_write(document: dict) -> bytes:
    # How the registry wrote every document before the records were typed.
    return json.dumps(document, indent=2, default=str).encode()


def _calibration():
    torch.manual_seed(0)
    return calibration_report(
        lambda x: x.softmax(1), torch.randn(1, 40, 3), torch.randint(0, 3, (40,)), 1.5
    )


def _old_report(version: str = "m1") -> dict:
    """An evaluation report built as ``evaluate_model`` built its dict before it was typed: an
    open-top model whose "more than 1" class has no bins (NaN per-class figures)."""
    labels = [0, 0, 1, 1, 1, 0]
    predictions = [0, 1, 1, 2, 1, 0]
    metrics = counting_metrics(predictions, labels, num_classes=3)
    majority = majority_baseline([0, 1, 1], labels, num_classes=3)
    errors = np.array([0, 1, 0, -2, 0, 0])
    detection = detection_quality(discrepancy_score(np.linspace(0.9, 0.1, 6)), errors)
    return {
        "model_version": version,
        "model": {
            "arch": "mobilenet_v3_small",
            "loss": "ce",
            "max_count": 1,
            "image_size": 32,
            "open_top": True,
        },
        "evaluation_set": {
            "id": "0123456789ab",
            "manifest_version": "v-1",
            "split": "test",
            "size": 7,
            "source": "s3://bucket/",
            "policy": "open:1",
            "max_count": 1,
            "open_top": True,
            "labels": {"0": 3, "1": 3},
            "is_abid_benchmark": False,
        },
        "images_left_out": 1,
        "metrics": dataclasses.asdict(metrics),
        "majority_baseline": dataclasses.asdict(majority),
        "abid_baseline": ABID_BASELINE,
        "metrics_moderate": None,
        "calibration": dataclasses.asdict(_calibration()),
        "review_detection": {
            "simulated_error_rate": 0.05,
            "seed": 20261122,
            "p_recorded": dataclasses.asdict(detection),
            "predicted_differs": dataclasses.asdict(detection),
        },
        "predictions_uri": "file:///out/models/m1/evaluations/0123456789ab-predictions.parquet",
    }


def test_an_evaluation_report_written_before_the_records_loads_and_writes_back_the_same(tmp_path):
    output = Location(str(tmp_path))
    old = _old_write(_old_report())
    output.write_bytes("models/m1/evaluations/0123456789ab.json", old)

    report = read_evaluation(output, "m1", "0123456789ab")
    assert isinstance(report, EvaluationReport)
    assert report.metrics.per_class_n == [3, 3, 0] and report.metrics.accuracy == 4 / 6
    assert np.isnan(report.metrics.per_class_accuracy[2])
    assert report.review_detection.p_recorded.budgets[0].percent == 1.0
    assert report.abid_baseline.accuracy == 0.5567 and report.model.open_top

    save_evaluation(output, "m2", report)
    assert output.read_bytes("models/m2/evaluations/0123456789ab.json") == old
    assert b"NaN" in old


def test_a_report_from_before_calibration_and_open_top_loads_with_their_defaults():
    document = _old_report()
    for key in ("metrics_moderate", "calibration", "review_detection"):
        del document[key]
    del document["model"]["open_top"], document["evaluation_set"]["open_top"]
    report = EvaluationReport.model_validate(json.loads(_old_write(document)))
    assert report.calibration is None and report.review_detection is None
    assert report.model.open_top is False and report.evaluation_set.open_top is False


def test_a_report_missing_its_metrics_is_refused_when_loaded(tmp_path):
    output = Location(str(tmp_path))
    document = _old_report()
    del document["metrics"]
    output.write_bytes("models/m1/evaluations/0123456789ab.json", _old_write(document))
    with pytest.raises(pydantic.ValidationError, match="metrics\n  Field required"):
        read_evaluation(output, "m1", "0123456789ab")


def test_a_model_record_is_written_as_before_and_an_old_one_loads(tmp_path):
    output = Location(str(tmp_path))
    config = TrainConfig(arch="mobilenet_v3_small", image_size=32, pretrained=False)
    history = [
        {
            "epoch": epoch,
            "train_loss": 1.5 / epoch,
            "val_loss": 1.4 / epoch,
            "val_accuracy": 0.3 * epoch,
            "val_rmse": 1.1 / epoch,
            "images_per_second": 120.5,
            "data_wait_share": 0.1,
            "seconds": 2.0,
            "lr": 0.001,
        }
        for epoch in (1, 2)
    ]
    calibration = _calibration()
    save_model(
        output,
        ModelFiles(
            version="m1",
            state_dict={"w": torch.zeros(2)},
            config=config,
            manifest_version="v-1",
            metrics=TrainingMetrics(
                best_epoch=history[1], history=history, calibration=calibration
            ),
            lineage={"device": "cpu", "world_size": 1},
        ),
    )
    # The bytes the registry wrote before: config.model_dump() and plain dicts, json.dumps'd.
    assert output.read_bytes("models/m1/config.json") == _old_write(config.model_dump())
    assert output.read_bytes("models/m1/metrics.json") == _old_write(
        {
            "best_epoch": history[1],
            "history": history,
            "calibration": dataclasses.asdict(calibration),
        }
    )
    record = read_model_record(output, "m1")
    assert isinstance(record, ModelRecord) and record.config == config
    assert record.metrics.best_epoch.val_accuracy == 0.6 and record.metrics.history == history
    assert record.lineage.manifest_version == "v-1" and record.lineage.device == "cpu"
    assert record.complete.version == "m1"

    # An older model: no calibration, no measured seconds.
    old_metrics = {"best_epoch": {k: v for k, v in history[0].items() if k != "seconds"}}
    output.write_bytes("models/m1/metrics.json", _old_write({**old_metrics, "history": []}))
    record = read_model_record(output, "m1")
    assert record.metrics.calibration is None and record.metrics.best_epoch.seconds is None


def test_the_champion_and_the_decision_files_keep_their_keys(tmp_path):
    output = Location(str(tmp_path))
    challenger = EvaluationReport.model_validate(_old_report("m2"))
    decision = decide_promotion(challenger, None)
    record_decision(output, decision)

    current = champion(output)
    assert current.version == "m2" and current.previous is None
    written = json.loads(output.read_bytes("models/_champion.json"))
    assert list(written) == ["version", "promoted_at", "evaluation_set", "figures", "previous"]
    assert written["evaluation_set"] == _old_report()["evaluation_set"]
    assert written["figures"] == {
        "accuracy": challenger.metrics.accuracy,
        "rmse": challenger.metrics.rmse,
    }
    (key,) = output.list_files("models/_decisions")
    kept = json.loads(output.read_bytes(key))
    assert list(kept) == [
        "promote",
        "reason",
        "challenger",
        "champion",
        "evaluation_set",
        "challenger_figures",
        "champion_figures",
        "decided_at",
    ]
    assert kept["reason"] == "no champion yet" and kept["champion_figures"] is None
