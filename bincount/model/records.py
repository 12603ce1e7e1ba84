"""The registry's documents as typed records: a model's record, an evaluation report, the
champion pointer and a promotion decision.

Analysts, the docs and older outputs read these JSON files, so each record keeps their keys and
values exactly: ``Record.model_validate(json.loads(text))`` loads any file written so far and
``json.dumps(record.model_dump(), indent=2, default=str)`` writes the same bytes as before. Not
``model_dump(mode="json")``: it writes a NaN in an untyped row (a reliability bin with no
predictions) as ``null`` and a float field's integer default (``step_epochs`` 10) as ``10.0``,
and the files would change. Fields added after the first models (``open_top``, ``calibration``,
``review_detection``, ``metrics_moderate``) have defaults, so an older file still loads; keys a
record does not name are kept as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bincount.model.calibration import CalibrationReport
from bincount.model.config import TrainConfig
from bincount.model.metrics import CountingMetrics
from bincount.review.ranking import DetectionQuality

_RECORD = ConfigDict(frozen=True, extra="allow")


# -- a model's record: models/<version>/{config,metrics,lineage,_complete}.json ----------------
class EpochFigures(BaseModel):
    """The best epoch's row of the training history (``EpochMetrics``, in its key order)."""

    model_config = _RECORD

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_rmse: float
    images_per_second: float
    data_wait_share: float
    seconds: float | None = None  # measured since the second day of the registry
    lr: float


class TrainingMetrics(BaseModel):
    """``metrics.json``: the best epoch, every epoch, and the temperature fitted after."""

    model_config = _RECORD

    best_epoch: EpochFigures
    history: list[dict[str, Any]]
    calibration: CalibrationReport | None = None


class Lineage(BaseModel):
    """``lineage.json``: where a model came from (data, device, run, parent weights)."""

    model_config = _RECORD

    manifest_version: str


class Completion(BaseModel):
    """``_complete.json``, written last: the model is finished."""

    model_config = _RECORD

    version: str
    created_at: str  # kept as written (ISO 8601)


class ModelRecord(BaseModel):
    """A finished model's four files, read together."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    version: str
    config: TrainConfig
    metrics: TrainingMetrics
    lineage: Lineage
    complete: Completion = Field(alias="_complete")


# -- an evaluation report: models/<version>/evaluations/<set>.json -----------------------------
class EvaluationSet(BaseModel):
    """A manifest split as an evaluation set: two reports compare exactly when ids match."""

    model_config = _RECORD

    id: str
    manifest_version: str
    split: str
    size: int
    source: str
    policy: str
    max_count: int | None
    open_top: bool = False
    labels: dict[str, int]  # label -> bins (keys are text in JSON)
    is_abid_benchmark: bool


class ModelSummary(BaseModel):
    """The evaluated model's shape: what its counts mean."""

    model_config = _RECORD

    arch: str
    loss: str
    max_count: int | None
    image_size: int
    open_top: bool = False


class Baseline(BaseModel):
    """Published figures to compare with (the ABID ResNet-34 on the moderate task)."""

    model_config = _RECORD

    name: str | None = None
    accuracy: float
    rmse: float
    per_class_accuracy: list[float]
    per_class_rmse: list[float]


class ReviewDetection(BaseModel):
    """How well the review queue finds simulated wrong records on the set."""

    model_config = _RECORD

    simulated_error_rate: float
    seed: int
    p_recorded: DetectionQuality
    predicted_differs: DetectionQuality


class EvaluationReport(BaseModel):
    """A model's ABID metrics on one evaluation set; the field order is the file's key order."""

    model_config = _RECORD

    model_version: str
    model: ModelSummary
    evaluation_set: EvaluationSet
    images_left_out: int
    metrics: CountingMetrics
    majority_baseline: CountingMetrics
    abid_baseline: Baseline
    # Only for a model that predicts beyond ABID's moderate task (counts 0-5).
    metrics_moderate: CountingMetrics | None = None
    calibration: CalibrationReport | None = None
    review_detection: ReviewDetection | None = None
    predictions_uri: str


# -- the gate: models/_champion.json and models/_decisions/<time>-<version>.json --------------
class Figures(BaseModel):
    """The two figures the gate compares."""

    model_config = _RECORD

    accuracy: float
    rmse: float


class PromotionDecision(BaseModel):
    """Whether a challenger replaces the champion, and the figures that decided it."""

    model_config = _RECORD

    promote: bool
    reason: str
    challenger: str
    champion: str | None
    evaluation_set: EvaluationSet
    challenger_figures: Figures
    champion_figures: Figures | None
    # A recorded decision's file adds ``decided_at`` (kept as an extra key).


class Champion(BaseModel):
    """The current champion: which model, since when, judged on which set."""

    model_config = _RECORD

    version: str
    promoted_at: str
    evaluation_set: EvaluationSet
    figures: Figures
    previous: str | None
