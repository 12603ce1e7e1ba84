"""Train a counting model on a manifest's cached images: CUDA when present, CPU otherwise.

The loop in one reading: resolve the device and process group → load the cached splits →
build model, optimiser and schedule → resume from the checkpoint if one exists → per epoch:
train, validate, checkpoint, report → keep the best weights in the registry. A config with
``ensemble`` N trains each of its members so, then registers their average
(``bincount.model.ensemble``).

The same entry point runs under ``torchrun`` for distributed data parallel (gloo on CPU, NCCL on
GPU): each rank trains on its share of every epoch's permutation and logs which (a count and
a fingerprint of the ids, :meth:`BatchLoader.share_line`); rank 0 alone writes.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.images.shards import CachedSplit, load_cached_splits
from bincount.model.calibration import calibrate
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime, resolve_runtime
from bincount.model.ensemble import assemble_ensemble, member_configs
from bincount.model.networks import (
    CountingModel,
    build_model,
    load_pretrained_weights,
    load_weights_file,
)
from bincount.model.optim import (
    EpochMetrics,
    Schedule,
    TrainState,
    build_optimizer,
    train_epoch,
)
from bincount.model.prediction import evaluation_of
from bincount.model.records import TrainingMetrics
from bincount.model.registry import ModelFiles, model_folder, read_model_record, save_model
from bincount.model.synthetic import mixed_batches, pretrain_on_synthetic, real_epochs_budget
from bincount.model.traindata import TrainingInputs
from bincount.model.trunk import freeze_trunk

logger = logging.getLogger(__name__)

# Per-channel statistics of ABID bin photos are close to ImageNet's; a fixed normalisation keeps
# the model independent of the data it happened to be trained on. A model whose backbone expects
# other statistics says so (``CountingModel.input_mean``/``input_std``: a timm backbone's
# pretrained statistics); the constants live in bincount/model/networks.py.


@dataclass
class TrainResult:
    """A finished (or found) training run."""

    version: str
    uri: str
    best_epoch: int
    val_accuracy: float
    val_rmse: float
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    created: bool = True


def train_model(
    output: Location,
    config: TrainConfig,
    *,
    manifest_version: str,
    lineage: dict | None = None,
    on_epoch: Callable[[EpochMetrics, list[dict]], None] | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train (or resume, or find finished) the model of ``config`` on a manifest's cache."""
    config = config.for_manifest(load_manifest(output, manifest_version)[1])
    version = config.fingerprint(manifest_version)
    folder = model_folder(version)
    runtime = resolve_runtime(device)
    existing = _finished(output, version)
    if existing is not None:
        return existing
    if config.ensemble > 1:  # each member through this function, then one model of them
        members = [
            train_model(
                output,
                member,
                manifest_version=manifest_version,
                lineage=lineage,
                on_epoch=on_epoch,
                device=device,
            )
            for member in member_configs(config)
        ]
        model, calibration, best = assemble_ensemble(
            output,
            config,
            [member.version for member in members],
            manifest_version=manifest_version,
            runtime=runtime,
        )
        history = [
            {**row, "member": index}
            for index, member in enumerate(members)
            for row in member.history
        ]
        summary = TrainingMetrics(best_epoch=best, history=history, calibration=calibration)
        lineage = {**(lineage or {}), "members": [member.version for member in members]}
        _register(output, version, model, config, manifest_version, runtime, lineage, summary)
        return TrainResult(
            version=version,
            uri=output.uri(folder),
            best_epoch=best["epoch"],
            val_accuracy=best["val_accuracy"],
            val_rmse=best["val_rmse"],
            history=history,
        )

    if config.synthetic_bins and runtime.world_size > 1:
        raise ValueError(
            "Expected synthetic pretraining (synthetic_bins) in one process, but got "
            f"{runtime.world_size}: train with synthetic_bins 0 under torchrun"
        )
    torch.manual_seed(config.seed)
    splits = load_cached_splits(output, manifest_version, config.image_size, ("train", "val"))
    if not len(splits["train"]):
        raise ValueError(f"Expected training images in manifest {manifest_version}, but got none")
    if not len(splits["val"]):
        raise ValueError(f"Expected validation images in manifest {manifest_version}, got none")
    model = build_model(config)
    _check_labels(splits, model.num_classes)
    if config.pretrained:
        load_pretrained_weights(model)
    if config.weights:
        load_weights_file(model, config.weights)
    if config.frozen_blocks:
        freeze_trunk(model, config.frozen_blocks)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    inputs = TrainingInputs.of(model, splits, config, runtime)
    wrapped: nn.Module = inputs.trained
    if runtime.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if config.compile_mode is not None:
        # Validation and calibration run ``model`` itself: only the training step compiles.
        wrapped = torch.compile(wrapped, mode=config.compile_mode)
    optimizer = build_optimizer(model, config)
    train_loader = inputs.train
    if config.synthetic_mix:  # the trunk runs on every batch (checked by the config)
        train_loader = mixed_batches(model, splits["train"], config, runtime)
    state = _resume(output, folder, model, optimizer)
    if config.synthetic_bins and state.resumed_from is None:  # then the real bins' own optimiser
        real_steps = config.epochs * len(train_loader)
        state.synthetic = pretrain_on_synthetic(model, config, runtime, real_steps=real_steps)
        optimizer = build_optimizer(model, config)
    # What the synthetic epochs left of the budget (a resumed run reads them in its state).
    schedule = Schedule(
        real_epochs_budget(config, state.synthetic), steps_per_epoch=len(train_loader)
    )

    first_epoch_of_run = state.epoch
    while state.epoch < config.epochs and not state.stopped:
        train_loader.epoch = state.epoch
        if runtime.world_size > 1:  # each rank its own images: what it trains on, checkably
            logger.info(train_loader.share_line())
        started = time.perf_counter()
        train_loss, images, first_step = train_epoch(
            wrapped,
            model,
            train_loader,
            optimizer,
            schedule,
            state,
            runtime,
            time_first_step=state.epoch == first_epoch_of_run,
            smoothing=config.label_smoothing,
        )
        seconds = time.perf_counter() - started
        val = evaluation_of(model, inputs.validation_logits(), splits["val"].labels)
        metrics = EpochMetrics(
            epoch=state.epoch + 1,
            train_loss=train_loss,
            val_loss=val["loss"],
            val_accuracy=val["metrics"].accuracy,
            val_rmse=val["metrics"].rmse,
            images_per_second=images * runtime.world_size / seconds,
            data_wait_share=train_loader.wait_seconds / seconds,
            seconds=seconds,
            lr=optimizer.param_groups[0]["lr"],
            first_step_seconds=first_step,
        )
        state.record(metrics, model, patience=config.patience)
        if schedule.out_of_time(state.train_seconds):
            state.stopped = True
        state.epoch += 1
        logger.info(metrics.line(config.epochs))
        if runtime.is_main:
            _save_checkpoint(output, folder, model, optimizer, state, config)
            if on_epoch is not None:
                on_epoch(metrics, state.history)

    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    calibration = calibrate(model, splits["val"], inputs.validation_logits())
    best = state.best_metrics()
    result = TrainResult(
        version=version,
        uri=output.uri(folder),
        best_epoch=best["epoch"],
        val_accuracy=best["val_accuracy"],
        val_rmse=best["val_rmse"],
        history=state.history,
        resumed_from_epoch=state.resumed_from,
    )
    summary = TrainingMetrics(best_epoch=best, history=state.history, calibration=calibration)
    lineage = {**(lineage or {}), "resumed_from_epoch": state.resumed_from}
    if state.synthetic is not None:
        lineage["synthetic_pretraining"] = state.synthetic
    _register(output, version, model, config, manifest_version, runtime, lineage, summary)
    return result


def _register(
    output: Location,
    version: str,
    model: CountingModel,
    config: TrainConfig,
    manifest_version: str,
    runtime: Runtime,
    lineage: dict,
    metrics: TrainingMetrics,
) -> None:
    """Rank 0 saves the finished model in the registry; every rank waits for it."""
    if runtime.is_main:
        save_model(
            output,
            ModelFiles(
                version=version,
                state_dict=model.state_dict(),
                config=config,
                manifest_version=manifest_version,
                metrics=metrics,
                lineage={
                    **lineage,
                    "device": str(runtime.device),
                    "world_size": runtime.world_size,
                    "torch": torch.__version__,
                },
            ),
        )
    if runtime.world_size > 1:
        dist.barrier()


def _check_labels(splits: dict[str, CachedSplit], num_classes: int) -> None:
    for name, split in splits.items():
        if len(split) and int(split.labels.max()) >= num_classes:
            raise ValueError(
                f"Expected labels within 0..{num_classes - 1} (the head's classes), but the "
                f"{name} split has {int(split.labels.max())}: build the manifest with "
                "--policy open:K or max:K"
            )


def _resume(
    output: Location, folder: str, model: CountingModel, optimizer: torch.optim.Optimizer
) -> TrainState:
    key = f"{folder}/checkpoint.pt"
    if not output.exists(key):
        return TrainState()
    checkpoint = torch.load(
        io.BytesIO(output.read_bytes(key)), map_location="cpu", weights_only=True
    )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state = TrainState(**checkpoint["state"])
    state.resumed_from = state.epoch
    logger.info("resuming %s after epoch %d", folder, state.epoch)
    return state


def _save_checkpoint(
    output: Location,
    folder: str,
    model: CountingModel,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: TrainConfig,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": {k: v for k, v in state.__dict__.items() if k != "resumed_from"},
            "config": config.model_dump(),
        },
        buffer,
    )
    output.write_bytes(f"{folder}/checkpoint.pt", buffer.getvalue())  # atomic: never half


def _finished(output: Location, version: str) -> TrainResult | None:
    record = read_model_record(output, version)
    if record is None:
        return None
    best = record.metrics.best_epoch
    return TrainResult(
        version=version,
        uri=output.uri(model_folder(version)),
        best_epoch=best.epoch,
        val_accuracy=best.val_accuracy,
        val_rmse=best.val_rmse,
        history=record.metrics.history,
        created=False,
    )
