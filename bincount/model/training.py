"""Train a counting model on a manifest's cached images: CUDA when present, CPU otherwise.

The loop in one reading: resolve the device and process group → load the cached splits →
build model, optimiser and schedule → resume from the checkpoint if one exists → per epoch:
train, validate, checkpoint, report → keep the best weights in the registry.

The same entry point runs under ``torchrun`` for distributed data parallel (gloo on CPU, NCCL on
GPU): each rank trains on its share of every epoch's permutation, rank 0 alone writes.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bincount.core.progress import Progress
from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.images.cache import CachedSplit, load_cached_splits
from bincount.images.prefetch import Prefetched
from bincount.model.calibration import (
    CalibrationReport,
    calibration_report,
    fit_temperature,
    mean_probabilities,
)
from bincount.model.config import TrainConfig
from bincount.model.metrics import counting_metrics
from bincount.model.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CountingModel,
    load_pretrained_weights,
    load_weights_file,
)
from bincount.model.registry import ModelFiles, model_folder, read_model_record, save_model

logger = logging.getLogger(__name__)

# Per-channel statistics of ABID bin photos are close to ImageNet's; a fixed normalisation keeps
# the model independent of the data it happened to be trained on. A model whose backbone expects
# other statistics says so (``CountingModel.input_mean``/``input_std``: a timm backbone's
# pretrained statistics); the constants live in bincount/model/networks.py.


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: device, precision, and its place in a process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA; a no-op context on the CPU."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )


def resolve_runtime(device: str | None = None) -> Runtime:
    """CUDA with bf16 autocast when present, else CPU; joins a torchrun process group if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        resolved = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Runtime(
        device=resolved,
        rank=rank,
        world_size=world_size,
        autocast_dtype=torch.bfloat16 if resolved.type == "cuda" else None,
    )


# -- data --------------------------------------------------------------------------------------
class BatchLoader:
    """Batches of model input from a cached split, on the device: read ahead as uint8 in a
    background thread (into pinned memory when the device is CUDA), then copied without
    blocking and converted, augmented and normalised on the device, the whole batch at once.

    Augmentations cannot change the count: flips, and brightness and contrast jitter. No crop,
    since a crop can cut an item out of the frame. Every draw comes from a generator seeded by
    the loader's seed and epoch, so an epoch is the same again when resumed.

    On the CPU the conversion runs in the background thread too, beside the model; on a GPU it
    runs as kernels queued behind the copy, and the thread only reads.
    """

    def __init__(
        self,
        split: CachedSplit,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        augment: bool | str = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 3,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.split, self.batch_size, self.shuffle, self.augment = (
            split,
            batch_size,
            shuffle,
            _augment_choice(augment),
        )
        self.seed, self.rank, self.world_size, self.prefetch = seed, rank, world_size, prefetch
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        # Training drops a short last batch (batch norm cannot train on one image); the order
        # changes every epoch, so no image is left out for good.
        self.drop_last = drop_last and self._per_rank() >= batch_size
        self.epoch = 0
        self._prefetched: Prefetched | None = None

    def _per_rank(self) -> int:
        return math.ceil(len(self.split) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self._per_rank() // self.batch_size
        return math.ceil(self._per_rank() / self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's share of the epoch's order: the same for a seed and epoch, so resumable.

        A permutation of the whole split, not of shards: reads go straight to each image's
        place in its shard, so mixing the epoch fully costs no memory.
        """
        order = np.arange(len(self.split))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.split))
        per_rank = math.ceil(len(order) / self.world_size)
        padded = np.resize(order, per_rank * self.world_size)  # every rank gets as many steps
        return padded[self.rank :: self.world_size]

    def raw_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the epoch as uint8 images (N, S, S, 3) and counts, on the host
        (pinned when the device is CUDA)."""
        order = self.indices()
        pin = self.device.type == "cuda"
        size = self.split.size
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = order[start : start + self.batch_size]
            images = torch.empty((len(chosen), size, size, 3), dtype=torch.uint8, pin_memory=pin)
            self.split.read(chosen, out=images.numpy())
            counts = torch.from_numpy(self.split.labels[chosen])
            yield images, counts.pin_memory() if pin else counts

    def generator(self) -> torch.Generator | None:
        """The epoch's augmentation draws, on the device (None without augmentation)."""
        if self.augment == "none":
            return None
        seed = np.random.SeedSequence((self.seed, self.epoch, 1)).generate_state(1, np.uint64)
        return torch.Generator(device=self.device).manual_seed(int(seed[0]))

    def _on_device(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], augment: torch.Generator | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, counts in batches:
            yield (
                to_model_input(
                    images,
                    mean=self.mean,
                    std=self.std,
                    device=self.device,
                    augment=augment,
                    flips_only=self.augment == "hflip",
                ),
                counts.to(self.device, non_blocking=True),
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = self.generator()
        if self.device.type == "cpu":  # convert in the thread, overlapping the model
            self._prefetched = Prefetched(
                self._on_device(self.raw_batches(), augment),
                depth=self.prefetch,
                name="batch-prefetch",
            )
            return iter(self._prefetched)
        self._prefetched = Prefetched(self.raw_batches(), depth=self.prefetch, name="batch-read")
        return self._on_device(iter(self._prefetched), augment)

    @property
    def wait_seconds(self) -> float:
        """How long the last pass waited for batches."""
        return self._prefetched.wait_seconds if self._prefetched else 0.0


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the model's backbone expects (ImageNet's unless it says)."""
    return (
        tuple(getattr(model, "input_mean", IMAGENET_MEAN)),
        tuple(getattr(model, "input_std", IMAGENET_STD)),
    )


def _normalization_of(model: nn.Module) -> dict[str, tuple[float, ...]]:
    mean, std = input_normalization(model)
    return {"mean": mean, "std": std}


def to_model_input(
    images: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    augment: torch.Generator | None = None,
    flips_only: bool = False,
) -> torch.Tensor:
    """uint8 images (N, S, S, 3) → the normalised float batch (N, 3, S, S) models take, on
    ``device`` (where the images are when None); the copy does not block from pinned memory.

    ``augment``: a generator on the same device to draw count-preserving augmentations from;
    with ``flips_only``, horizontal flips alone (the ABID baseline's augmentation).
    """
    batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[3] != 3:
        raise ValueError(
            f"Expected uint8 images (N, S, S, 3), but got {batch.dtype} {tuple(batch.shape)}"
        )
    if device is not None:
        batch = batch.to(device, non_blocking=True)
    # NHWC memory seen as NCHW: the float copy keeps that layout, which is channels_last.
    floats = batch.permute(0, 3, 1, 2).float().div_(255)
    if augment is not None:
        floats = augment_batch(floats, augment, flips_only=flips_only)
    shift, scale = _normalization_tensors(tuple(mean), tuple(std), floats.device)
    return floats.sub_(shift).div_(scale).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=16)
def _normalization_tensors(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) tensors on the device, made once: no small host copy before each batch."""
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1),
    )


def _augment_choice(augment: bool | str) -> str:
    if isinstance(augment, bool):  # the old switch: count-preserving augmentation or none
        return "count_preserving" if augment else "none"
    return augment


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, *, flips_only: bool = False
) -> torch.Tensor:
    """Random flips and per-image brightness/contrast of float images (N, 3, S, S) in [0, 1]:
    transformations that keep the count, drawn from ``generator`` on the images' device. With
    ``flips_only``, horizontal flips alone."""
    n = images.shape[0]
    draws = torch.rand((4, n, 1, 1, 1), generator=generator, device=images.device)
    images = torch.where(draws[0] < 0.5, images.flip(3), images)
    if flips_only:
        return images
    images = torch.where(draws[1] < 0.25, images.flip(2), images)
    brightness = 0.6 + 0.8 * draws[2]
    contrast = 0.7 + 0.6 * draws[3]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean * brightness).clamp_(0, 1)


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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self, epochs: int) -> str:
        """One readable log line: ``epoch 3/10: train loss 1.234, val loss ...``."""
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f}, val loss "
            f"{self.val_loss:.4f}, val accuracy {100 * self.val_accuracy:.1f}%, val RMSE "
            f"{self.val_rmse:.3f}, {self.images_per_second:.1f} images/s, "
            f"{100 * self.data_wait_share:.0f}% waiting for data, {self.seconds:.1f} s, "
            f"lr {self.lr:.2e}"
        )


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
    model = model.to(runtime.device, memory_format=torch.channels_last)
    wrapped: nn.Module = model
    if runtime.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if config.compile:
        wrapped = torch.compile(wrapped)
    optimizer = build_optimizer(model, config)
    train_loader = BatchLoader(
        splits["train"],
        batch_size=config.batch_size,
        shuffle=True,
        augment=config.augment,
        seed=config.seed,
        drop_last=True,
        rank=runtime.rank,
        world_size=runtime.world_size,
        device=runtime.device,
        **_normalization_of(model),
    )
    state = _resume(output, folder, model, optimizer)
    schedule = Schedule(config, steps_per_epoch=len(train_loader))

    while state.epoch < config.epochs and not state.stopped:
        started = time.perf_counter()
        train_loader.epoch = state.epoch
        train_loss, images = _train_epoch(
            wrapped, model, train_loader, optimizer, schedule, state, runtime
        )
        seconds = time.perf_counter() - started
        val = evaluate_split(
            model,
            splits["val"],
            runtime=runtime,
            batch_size=config.batch_size,
            flips=config.test_time_flips,
        )
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
    calibration = calibrate(model, splits["val"], runtime=runtime, config=config)
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
    if runtime.is_main:
        save_model(
            output,
            ModelFiles(
                version=version,
                state_dict=model.state_dict(),
                config=config.model_dump(),
                manifest_version=manifest_version,
                metrics={
                    "best_epoch": best,
                    "history": state.history,
                    "calibration": calibration.to_dict(),
                },
                lineage={
                    **(lineage or {}),
                    "device": str(runtime.device),
                    "world_size": runtime.world_size,
                    "torch": torch.__version__,
                    "resumed_from_epoch": state.resumed_from,
                },
            ),
        )
    if runtime.world_size > 1:
        dist.barrier()
    return result


def build_model(config: TrainConfig) -> CountingModel:
    """The network a (manifest-resolved) config describes, as initialised (``pretrained``
    weights are loaded by training, not here: a registered model brings its own)."""
    return CountingModel(
        config.arch,
        head=config.loss,
        max_count=config.max_count,
        open_top=bool(config.open_top),
    )


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


def calibrate(
    model: CountingModel, split: CachedSplit, *, runtime: Runtime, config: TrainConfig
) -> CalibrationReport:
    """Fit the model's temperature on ``split`` (the validation split) and set it on the model.

    Fitted on the probabilities the model serves (averaged over the test-time flips when the
    config uses them), so what scoring reports is what was calibrated.
    """
    model.temperature.fill_(1.0)
    view_logits, _ = predict_split(
        model, split, runtime=runtime, batch_size=config.batch_size, flips=config.test_time_flips
    )
    labels = torch.from_numpy(split.labels).long()
    raw = functools.partial(model.probabilities, calibrated=False)
    temperature = fit_temperature(raw, view_logits, labels)
    model.temperature.fill_(temperature)
    report = calibration_report(raw, view_logits, labels, temperature)
    logger.info(
        "calibrated on %d validation images: temperature %.3f, ECE %.3f -> %.3f, NLL %.3f -> %.3f",
        report.n,
        temperature,
        report.ece_before,
        report.ece_after,
        report.nll_before,
        report.nll_after,
    )
    return report


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


def _train_epoch(
    wrapped: nn.Module,
    model: CountingModel,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: TrainState,
    runtime: Runtime,
) -> tuple[float, int]:
    wrapped.train()
    # Summed on the device: reading the loss every step would make the host wait for the GPU
    # and stop it queueing the next batch's copy and kernels ahead.
    total_loss, seen = torch.zeros((), device=runtime.device), 0
    started = time.perf_counter()
    progress = Progress(logger, f"epoch {state.epoch + 1} training batches", len(loader))
    for images, counts in loader:  # on the device already, converted and augmented
        lr = schedule.lr(state)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with runtime.autocast():
            logits = wrapped(images)
        loss = model.loss(logits.float(), counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(counts)
        seen += len(counts)
        state.step += 1
        progress.advance()
        if schedule.out_of_time(state.train_seconds + time.perf_counter() - started):
            break
    state.train_seconds += time.perf_counter() - started
    return total_loss.item() / max(seen, 1), seen


@torch.no_grad()
def predict_split(
    model: CountingModel,
    split: CachedSplit,
    *,
    runtime: Runtime,
    batch_size: int = 128,
    flips: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every view (V, N, ...) and calibrated probabilities (N, C) of a split, in order.

    With ``flips`` the views are the image and its horizontal and vertical mirrors and the
    probabilities are their average: the count cannot change under a flip, and the average is
    steadier (+2 points of accuracy on the synthetic test split).
    """
    model.eval()
    loader = BatchLoader(
        split,
        batch_size=batch_size,
        shuffle=False,
        seed=0,
        device=runtime.device,
        **_normalization_of(model),
    )
    logits, probabilities = [], []
    for images, _ in loader:
        batch_logits, batch_probabilities = predict_batch(
            model, images, runtime=runtime, flips=flips
        )
        logits.append(batch_logits)
        probabilities.append(batch_probabilities)
    if not logits:
        width = model.num_classes if model.head == "ce" else model.num_classes - 1
        views = 3 if flips else 1
        return torch.zeros((views, 0, width)), torch.zeros((0, model.num_classes))
    return torch.cat(logits, dim=1), torch.cat(probabilities)


@torch.no_grad()
def predict_batch(
    model: CountingModel, images: torch.Tensor, *, runtime: Runtime, flips: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each view (V, N, ...) and calibrated per-count probabilities averaged over the
    views (the image and, with ``flips``, its horizontal and vertical mirrors), on the CPU."""
    views = [images, images.flip(3), images.flip(2)] if flips else [images]
    with runtime.autocast():
        outputs = torch.stack([model(view.to(runtime.device)).float().cpu() for view in views])
    return outputs, mean_probabilities(model.probabilities, outputs)


def evaluate_split(
    model: CountingModel,
    split: CachedSplit,
    *,
    runtime: Runtime,
    batch_size: int = 128,
    flips: bool = False,
) -> dict:
    """Loss and ABID metrics of a model on a cached split."""
    view_logits, probabilities = predict_split(
        model, split, runtime=runtime, batch_size=batch_size, flips=flips
    )
    targets = torch.from_numpy(split.labels)
    loss = model.loss(view_logits[0], targets).item()
    predictions = model.count_from_probabilities(probabilities).tolist()
    metrics = counting_metrics(predictions, split.labels.tolist(), num_classes=model.num_classes)
    return {
        "loss": loss,
        "metrics": metrics,
        "predictions": predictions,
        "view_logits": view_logits,
    }


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
    best = record["metrics"]["best_epoch"]
    return TrainResult(
        version=version,
        uri=output.uri(model_folder(version)),
        best_epoch=best["epoch"],
        val_accuracy=best["val_accuracy"],
        val_rmse=best["val_rmse"],
        history=record["metrics"]["history"],
        created=False,
    )
