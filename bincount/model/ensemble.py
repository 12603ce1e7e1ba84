"""Ensembles (``TrainConfig.ensemble`` N): N models trained apart and served as one.

Each member is the config alone at its own seed (``seed``, ``seed + 1``, ...): a training run
and a registered version of its own (``bincount.model.training`` trains them), so a member
trained before is found rather than trained again, and a stopped ensemble resumes in the member
it stopped in. The ensemble is then one model (``CountingModel(members=N)``) whose head logits
are its members' averaged (for softmax, the normalised geometric mean of their probabilities),
with a temperature of its own fitted on the validation split.
"""

from __future__ import annotations

import logging

from bincount.core.storage import Location
from bincount.images.shards import load_cached_splits
from bincount.model.calibration import CalibrationReport, calibrate
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime
from bincount.model.networks import CountingModel, build_model
from bincount.model.prediction import evaluation_of, predict_split
from bincount.model.records import EpochFigures
from bincount.model.registry import load_model

logger = logging.getLogger(__name__)


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """What each member trains as: ``config`` alone (ensemble 1) at seeds ``seed``, ``seed + 1``,
    ... The first is the model ``config`` trains without ``ensemble``: the same version."""
    return [
        config.model_copy(update={"ensemble": 1, "seed": config.seed + member})
        for member in range(config.ensemble)
    ]


def assemble_ensemble(
    output: Location,
    config: TrainConfig,
    members: list[str],
    *,
    manifest_version: str,
    runtime: Runtime,
) -> tuple[CountingModel, CalibrationReport, dict]:
    """The ensemble of the registered models ``members`` (the versions of
    :func:`member_configs`, trained), calibrated on the validation split of the manifest they
    learnt from; and its best-epoch row: its own validation loss, accuracy and RMSE, the latest
    of its members' best epochs, the mean of their other figures."""
    model = build_model(config)
    bests = []
    for network, version in zip(model.members, members, strict=True):
        trained, record = load_model(output, version)
        network.load_state_dict(trained.state_dict())
        bests.append(record.metrics.best_epoch.model_dump())
    model = model.to(runtime.device)
    split = load_cached_splits(output, manifest_version, config.image_size, ("val",))["val"]
    view_logits, _ = predict_split(model, split, runtime=runtime, flips=config.test_time_flips)
    calibration = calibrate(model, split, view_logits)
    val = evaluation_of(model, view_logits, split.labels)
    best = {
        key: sum(row.get(key) or 0 for row in bests) / len(bests)
        for key in EpochFigures.model_fields
    }
    best.update(
        epoch=max(row["epoch"] for row in bests),
        val_loss=val["loss"],
        val_accuracy=val["metrics"].accuracy,
        val_rmse=val["metrics"].rmse,
    )
    logger.info(
        "ensemble of %d (%s): val accuracy %.4f, RMSE %.4f (members %s)",
        len(members),
        ", ".join(members),
        best["val_accuracy"],
        best["val_rmse"],
        ", ".join(f"{row['val_accuracy']:.4f}" for row in bests),
    )
    return model, calibration, best
