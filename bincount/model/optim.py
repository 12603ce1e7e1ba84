"""The optimiser, its learning-rate schedule, the state a checkpoint resumes from, and one epoch's
optimiser steps."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from bincount.core.progress import Progress
from bincount.model.config import TrainConfig
from bincount.model.networks import (
    CountingModel,
)

if TYPE_CHECKING:
    from bincount.model.device import Runtime

logger = logging.getLogger(__name__)


def build_optimizer(model: CountingModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum (the ABID baseline's); the schedule sets the lr per step,
    times each group's ``lr_scale``: the backbone's is ``config.backbone_lr_scale`` (at 0 the
    backbone is frozen and left out)."""
    groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]  # one group, as before
    if config.backbone_lr_scale < 1:
        groups = [{"params": model.head_parameters(), "lr_scale": 1.0}]
        if config.backbone_lr_scale > 0:
            scale = config.backbone_lr_scale
            groups.append({"params": model.backbone_parameters(), "lr_scale": scale})
        else:
            model.freeze_backbone()
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


class Schedule:
    """Linear warmup, then cosine decay or steps (lr x ``step_gamma`` every ``step_epochs``),
    over steps or, with a time budget, over time (the steps fall at the same fractions of it)."""

    def __init__(self, config: TrainConfig, *, steps_per_epoch: int) -> None:
        self.config = config
        self.total_steps = max(1, config.epochs * steps_per_epoch)
        self.warmup_steps = config.warmup_epochs * steps_per_epoch

    def progress(self, state: TrainState) -> float:
        done = state.step / self.total_steps
        if self.config.max_minutes:
            done = max(done, state.train_seconds / (60 * self.config.max_minutes))
        return min(done, 1.0)

    def lr(self, state: TrainState) -> float:
        base = self.config.lr
        if state.step < self.warmup_steps:
            return base * (state.step + 1) / self.warmup_steps
        if self.config.schedule == "step":
            epochs_done = self.progress(state) * self.config.epochs
            steps_taken = math.floor(epochs_done / self.config.step_epochs + 1e-9)
            return base * self.config.step_gamma**steps_taken
        return base * 0.5 * (1 + math.cos(math.pi * self.progress(state)))

    def out_of_time(self, train_seconds: float) -> bool:
        limit = self.config.max_minutes
        return bool(limit) and train_seconds >= 60 * limit


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model and optimiser."""

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_index: int | None = None
    since_best: int = 0
    stopped: bool = False
    resumed_from: int | None = None
    synthetic: dict | None = None  # what synthetic pretraining did, before the first epoch

    def record(self, metrics: EpochMetrics, model: nn.Module, *, patience: int) -> None:
        """Append an epoch; keep the best weights (accuracy, ties broken by RMSE)."""
        self.history.append(metrics.as_dict())
        best = self.best_metrics() if self.best_index is not None else None
        if best is None or (metrics.val_accuracy, -metrics.val_rmse) > (
            best["val_accuracy"],
            -best["val_rmse"],
        ):
            self.best_index = len(self.history) - 1
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.since_best = 0
        else:
            self.since_best += 1
            if self.since_best >= patience:
                logger.info("early stop: no better validation score for %d epochs", patience)
                self.stopped = True

    def best_metrics(self) -> dict:
        return self.history[self.best_index if self.best_index is not None else -1]


# -- loop --------------------------------------------------------------------------------------
@dataclass
class EpochMetrics:
    """What one epoch did, for logs, artifacts and the registry."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_rmse: float
    images_per_second: float
    data_wait_share: float
    seconds: float
    lr: float
    # The run's first optimiser step, in the epoch it ran in (torch.compile compiles there):
    # not in the other epochs' rows, nor in the rows of models trained before it was measured.
    first_step_seconds: float | None = None

    def as_dict(self) -> dict:
        row = dict(self.__dict__)
        if row["first_step_seconds"] is None:
            del row["first_step_seconds"]
        return row

    def line(self, epochs: int) -> str:
        """One readable log line: ``epoch 3/10: train loss 1.234, val loss ...``."""
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f}, val loss "
            f"{self.val_loss:.4f}, val accuracy {100 * self.val_accuracy:.1f}%, val RMSE "
            f"{self.val_rmse:.3f}, {self.images_per_second:.1f} images/s, "
            f"{100 * self.data_wait_share:.0f}% waiting for data, {self.seconds:.1f} s, "
            f"lr {self.lr:.2e}"
            + (
                f", first step {self.first_step_seconds:.1f} s"
                if self.first_step_seconds is not None
                else ""
            )
        )


def train_epoch(
    wrapped: nn.Module,
    model: CountingModel,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: TrainState,
    runtime: Runtime,
    *,
    time_first_step: bool = False,
    smoothing: float = 0.0,
) -> tuple[float, int, float | None]:
    """One epoch's optimiser steps: the mean training loss, the images seen, and with
    ``time_first_step`` the seconds of the first step (the GPU waited for), else None. A
    compiled model compiles its forward and backward there; "reduce-overhead" records its CUDA
    graphs over the next steps, which bench/train.py's compile seconds count too.

    Every step has the same shapes (the loader drops the last, partial batch), as CUDA graphs
    need: a compiled model replays its graphs rather than compiling again."""
    wrapped.train()
    # Summed on the device: reading the loss every step would make the host wait for the GPU
    # and stop it queueing the next batch's copy and kernels ahead.
    total_loss, seen = torch.zeros((), device=runtime.device), 0
    started = time.perf_counter()
    first_step = None
    progress = Progress(logger, f"epoch {state.epoch + 1} training batches", len(loader))
    for images, counts in loader:  # on the device already, converted and augmented
        step_started = time.perf_counter()
        lr = schedule.lr(state)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with runtime.autocast():
            logits = wrapped(images)
        loss = model.loss(logits.float(), counts, smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(counts)
        seen += len(counts)
        if time_first_step and first_step is None:
            if runtime.device.type == "cuda":  # once a run: the step's kernels, not their queueing
                torch.cuda.synchronize(runtime.device)
            first_step = time.perf_counter() - step_started
        state.step += 1
        progress.advance()
        if schedule.out_of_time(state.train_seconds + time.perf_counter() - started):
            break
    state.train_seconds += time.perf_counter() - started
    return total_loss.item() / max(seen, 1), seen, first_step
