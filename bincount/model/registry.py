"""The model registry under ``<output>/models/`` and the champion pointer.

::

    models/<version>/model.pt           best weights (state dict; load with weights_only=True)
    models/<version>/config.json        the frozen TrainConfig
    models/<version>/metrics.json       per-epoch history and the best epoch
    models/<version>/lineage.json       manifest version, data, device, run, parent weights
    models/<version>/evaluations/<set>.json
    models/<version>/_complete.json     written last: a model without it is unfinished
    models/_champion.json               the current champion (one atomic write)
    models/_decisions/<time>-<version>.json  every promotion decision, either way
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from pydantic import BaseModel

from bincount.core.storage import Location
from bincount.model.config import TrainConfig
from bincount.model.records import (
    Champion,
    EvaluationReport,
    Figures,
    ModelRecord,
    PromotionDecision,
    TrainingMetrics,
)

MODELS = "models"
CHAMPION = f"{MODELS}/_champion.json"


def model_folder(version: str) -> str:
    return f"{MODELS}/{version}"


@dataclass(frozen=True)
class ModelFiles:
    """What a finished training run stores."""

    version: str
    state_dict: dict
    config: TrainConfig
    manifest_version: str
    metrics: TrainingMetrics
    lineage: dict


def save_model(output: Location, files: ModelFiles) -> None:
    """Store a trained model; ``_complete.json`` last, so readers never see half a model."""
    folder = model_folder(files.version)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in files.state_dict.items()}, buffer)
    output.write_bytes(f"{folder}/model.pt", buffer.getvalue())
    _write_json(output, f"{folder}/config.json", files.config)
    _write_json(output, f"{folder}/metrics.json", files.metrics)
    _write_json(
        output,
        f"{folder}/lineage.json",
        {**files.lineage, "manifest_version": files.manifest_version},
    )
    _write_json(
        output,
        f"{folder}/_complete.json",
        {"version": files.version, "created_at": datetime.now(UTC).isoformat()},
    )


def read_model_record(output: Location, version: str) -> ModelRecord | None:
    """A finished model's config, metrics and lineage; None when it is not (yet) finished."""
    folder = model_folder(version)
    if not output.exists(f"{folder}/_complete.json"):
        return None
    return ModelRecord.model_validate(
        {
            "version": version,
            **{
                name: json.loads(output.read_bytes(f"{folder}/{name}.json"))
                for name in ("config", "metrics", "lineage", "_complete")
            },
        }
    )


def resolve_version(output: Location, version: str) -> str:
    """``champion`` → the champion's version; any other name must be a finished model."""
    if version == "champion":
        current = champion(output)
        if current is None:
            raise LookupError(f"Expected a champion in {output.uri(MODELS)}, but none is promoted")
        return current.version
    if read_model_record(output, version) is None:
        raise LookupError(f"Expected a finished model {version} in {output.uri(MODELS)}")
    return version


def load_model(output: Location, version: str):
    """The model and its record (``version`` may be ``champion``)."""
    from bincount.model.networks import build_model

    version = resolve_version(output, version)
    record = read_model_record(output, version)
    model = build_model(record.config)
    state = torch.load(
        io.BytesIO(output.read_bytes(f"{model_folder(version)}/model.pt")),
        map_location="cpu",
        weights_only=True,
    )
    model.load_state_dict(state)
    model.eval()
    return model, record


def list_models(output: Location) -> list[dict]:
    """Every finished model, newest first, with its best validation figures."""
    current = champion(output)
    rows = []
    for key in output.list(MODELS).column("key").to_pylist():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "_complete.json":
            record = read_model_record(output, parts[1])
            config, best = record.config, record.metrics.best_epoch
            rows.append(
                {
                    "version": parts[1],
                    "champion": bool(current and current.version == parts[1]),
                    "arch": config.arch,
                    "loss": config.loss,
                    "image_size": config.image_size,
                    "manifest": record.lineage.manifest_version,
                    "val_accuracy": best.val_accuracy,
                    "val_rmse": best.val_rmse,
                    "created_at": record.complete.created_at,
                }
            )
    return sorted(rows, key=lambda row: row["created_at"], reverse=True)


def champion(output: Location) -> Champion | None:
    if not output.exists(CHAMPION):
        return None
    return Champion.model_validate(json.loads(output.read_bytes(CHAMPION)))


def save_evaluation(output: Location, version: str, report: EvaluationReport) -> str:
    key = f"{model_folder(version)}/evaluations/{report.evaluation_set.id}.json"
    _write_json(output, key, report)
    return key


def read_evaluation(
    output: Location, version: str, evaluation_set_id: str
) -> EvaluationReport | None:
    key = f"{model_folder(version)}/evaluations/{evaluation_set_id}.json"
    if not output.exists(key):
        return None
    return EvaluationReport.model_validate(json.loads(output.read_bytes(key)))


def decide_promotion(
    challenger: EvaluationReport, incumbent: EvaluationReport | None
) -> PromotionDecision:
    """The gate: higher accuracy wins, ties broken by lower RMSE, on the same evaluation set."""
    figures = _figures(challenger)
    if incumbent is None:
        return PromotionDecision(
            promote=True,
            reason="no champion yet",
            challenger=challenger.model_version,
            champion=None,
            evaluation_set=challenger.evaluation_set,
            challenger_figures=figures,
            champion_figures=None,
        )
    if incumbent.evaluation_set.id != challenger.evaluation_set.id:
        raise ValueError(
            f"Expected both models evaluated on the same set, but got "
            f"{challenger.evaluation_set.id} and {incumbent.evaluation_set.id}"
        )
    theirs = _figures(incumbent)
    better = (figures.accuracy, -figures.rmse) > (theirs.accuracy, -theirs.rmse)
    if challenger.model_version == incumbent.model_version:
        better, reason = False, "the challenger is the champion"
    elif better and figures.accuracy > theirs.accuracy:
        reason = f"accuracy {figures.accuracy:.4f} > {theirs.accuracy:.4f}"
    elif better:
        reason = (
            f"accuracy tied at {figures.accuracy:.4f}; RMSE {figures.rmse:.4f} < {theirs.rmse:.4f}"
        )
    else:
        reason = (
            f"accuracy {figures.accuracy:.4f} / RMSE {figures.rmse:.4f} does not beat "
            f"the champion's {theirs.accuracy:.4f} / {theirs.rmse:.4f}"
        )
    return PromotionDecision(
        promote=better,
        reason=reason,
        challenger=challenger.model_version,
        champion=incumbent.model_version,
        evaluation_set=challenger.evaluation_set,
        challenger_figures=figures,
        champion_figures=theirs,
    )


def record_decision(output: Location, decision: PromotionDecision) -> None:
    """Keep the decision; move the champion pointer (one atomic write) only on promotion."""
    now = datetime.now(UTC)
    _write_json(
        output,
        f"{MODELS}/_decisions/{now:%Y%m%dT%H%M%S%f}-{decision.challenger}.json",
        decision.model_copy(update={"decided_at": now.isoformat()}),
    )
    if decision.promote:
        _write_json(
            output,
            CHAMPION,
            Champion(
                version=decision.challenger,
                promoted_at=now.isoformat(),
                evaluation_set=decision.evaluation_set,
                figures=decision.challenger_figures,
                previous=decision.champion,
            ),
        )


def _figures(report: EvaluationReport) -> Figures:
    return Figures(accuracy=report.metrics.accuracy, rmse=report.metrics.rmse)


def _write_json(output: Location, key: str, document: dict | BaseModel) -> None:
    if isinstance(document, BaseModel):
        document = document.model_dump()  # Python values, as dumped before (see records.py)
    output.write_bytes(key, json.dumps(document, indent=2, default=str).encode())
