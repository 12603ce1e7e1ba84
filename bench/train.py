"""Training's data path: memory that does not grow with the cache, and a model it keeps fed.

Three measurements, printed side by side in one table:

1. **Peak memory of a training epoch** over generated caches of ``--memory-sizes`` images (4k
   and 40k) at ``--memory-image-size`` px (64) with a small model. Each case runs in a fresh
   process: load the cache (``load_cached_splits``), train one epoch through the real loop
   (``BatchLoader`` → ``train_epoch``), predict the validation split (``predict_split``), then
   report ``ru_maxrss``, the process's resident-memory high-water mark. The caches are written
   straight from generated uint8 shards (``bincount.testing.caches``) in the layout
   ``build_image_cache`` writes: decoding 40k synthetic JPEGs would take minutes on 2 cores and
   measures the writing side, not the reading side. Goal: 40k / 4k <= 1.5. For contrast, a
   second fresh process per case loads the train and val splits the way the loader did before
   (shards memory-mapped, each split stacked into one array) and reports its peak.
2. **images/s through the real data path** against the same model fed from tensors already on
   the device (pre-converted and pre-augmented), alternating A/B/A/B so machine noise hits both
   alike, on a cache built the real way (synthetic bins → manifest → ``build_image_cache``).
   Goal: ratio >= 0.9. The share of the real side's time spent waiting for data is printed too.
3. With ``--device cuda``: ``--gpu-archs`` (ResNet-34 and ResNet-50) at 224 px in bf16 with
   channels_last, both sides, and from the measured rate the time per epoch of ABID's full
   counting training split (324,735 images); ResNet-50 against NVIDIA's A100 figure scaled to
   the card by ``--h100-over-a100``.

``--compile-modes`` (default ``off``) measures each network of 2 and 3 in each torch.compile
mode, the modes alternating within every round, as ``train_model`` compiles it (the training
step, the model's own validation uncompiled): compile seconds (the first warm-up steps less as
many steady steps) and images/s against mode ``off``'s. ``--only-gpu`` skips 1 and the CPU row.

    python bench/train.py [--arch resnet18] [--image-size 128] [--batch-size 64] [--steps 20]
    python bench/train.py --device cuda        # adds the GPU rows
    python bench/train.py --device cuda --only-gpu --compile-modes off,default,reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pydantic
import torch
from train_table import (  # bench/, beside this script
    ABID_TRAIN_IMAGES,
    GOAL_MEMORY,
    WARMUP_STEPS,
    print_gpu_gap,
    print_memory,
    print_training,
)

from bincount.core.storage import Location
from bincount.images.cache import cache_folder
from bincount.images.shards import load_cached_splits
from bincount.model.config import TrainConfig
from bincount.model.device import Runtime, resolve_runtime
from bincount.model.inputs import BatchLoader, input_normalization
from bincount.model.networks import CountingModel
from bincount.model.optim import Schedule, TrainState, train_epoch
from bincount.model.prediction import predict_split
from bincount.synth import synthesize
from bincount.testing.caches import write_generated_cache
from bincount.testing.pipeline import run_pipeline

GOAL_RATIO = 0.9


# -- 1. peak memory of an epoch, one fresh process per cache size ----------------------------
def epoch_in_fresh_process(workdir: str, images: int, size: int, arch: str, batch: int) -> dict:
    """One training epoch and one validation pass over a generated cache, in this process."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    output = Location(workdir)
    version = f"gen{images}"
    runtime = Runtime(device=torch.device("cpu"))
    torch.manual_seed(0)
    model = CountingModel(arch, head="ce", max_count=5).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    splits = load_cached_splits(output, version, size, ("train", "val"))
    setup_rss = _rss_now_mb()
    mean, std = input_normalization(model)
    loader = BatchLoader(
        splits["train"],
        batch_size=batch,
        shuffle=True,
        augment=True,
        seed=0,
        drop_last=True,
        mean=mean,
        std=std,
    )
    config = TrainConfig(arch=arch, epochs=1, batch_size=batch, image_size=size)
    started = time.perf_counter()
    _, seen, _ = train_epoch(
        model,
        model,
        loader,
        optimizer,
        Schedule(config, steps_per_epoch=len(loader)),
        TrainState(),
        runtime,
    )
    seconds = time.perf_counter() - started
    predict_split(model, splits["val"], runtime=runtime, batch_size=2 * batch)
    return {
        "images": images,
        "train_images": seen,
        "cache_mb": images * size * size * 3 / 2**20,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images_per_second": seen / seconds,
        "data_wait_share": loader.wait_seconds / seconds,
    }


def stacked_in_fresh_process(workdir: str, images: int, size: int) -> float:
    """Peak RSS (MB) of loading the train and val splits the way the loader did before the
    streaming reader: every shard memory-mapped, each split stacked into one array."""
    import numpy as np

    output, folder = Location(workdir), cache_folder(f"gen{images}", size)
    index = output.read_parquet(f"{folder}/index.parquet").to_pylist()
    shards = {
        n: np.load(output.path(f"{folder}/shard-{n:05d}.npy"), mmap_mode="r")
        for n in sorted({row["shard"] for row in index})
    }
    held = [
        np.stack([shards[r["shard"]][r["offset"]] for r in index if r["split"] == split])
        for split in ("train", "val")
    ]
    assert sum(len(h) for h in held) > 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_cases(workdir: str, sizes: list[int], size: int, arch: str, batch: int) -> list[dict]:
    results = []
    for images in sizes:
        folder = os.path.join(workdir, f"gen{images}")
        print(f"[bench] writing a generated cache of {images} images at {size} px ...")
        write_generated_cache(Location(folder), f"gen{images}", size=size, images=images)
        print("[bench] one epoch over it in a fresh process ...")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(
                pool.submit(epoch_in_fresh_process, folder, images, size, arch, batch).result()
            )
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            stacked = pool.submit(stacked_in_fresh_process, folder, images, size).result()
        results[-1]["stacked_rss_mb"] = stacked
        print(f"[bench]   {json.dumps({k: round(v, 3) for k, v in results[-1].items()})}")
        _remove_cache(Location(folder), f"gen{images}", size)
    return results


def _remove_cache(output: Location, version: str, size: int) -> None:
    import shutil

    shutil.rmtree(output.path(cache_folder(version, size)), ignore_errors=True)


# -- 2. real data path against tensors on the device -------------------------------------------
def prepare(workdir: str, bins: int, size: int):
    """A cache built the way ``bincount train`` builds it, from synthetic bins."""
    source, output = Location(f"{workdir}/bucket"), Location(f"{workdir}/out")
    synthesize(source, bins=bins, seed=11, max_count=5)
    config = TrainConfig(image_size=size)
    run = run_pipeline(source, output, policy="moderate", config=config, until="cache")
    return load_cached_splits(output, run.manifest_version, size, ("train", "val"))


class Cycled:
    """A loader's batches, epoch after epoch, and how long they were waited for in all."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader, self.waited_before = loader, 0.0

    def __iter__(self):
        while True:
            yield from self.loader
            self.waited_before += self.loader.wait_seconds
            self.loader.epoch += 1

    @property
    def waited(self) -> float:
        return self.waited_before + self.loader.wait_seconds


def timed_steps(contender: Contender, batches, steps: int, runtime: Runtime) -> float:
    """Seconds for ``steps`` optimiser steps over an iterator of (images, counts): the step
    ``train_epoch`` takes, through the compiled module when there is one."""
    model, optimizer = contender.model, contender.optimizer
    contender.step_module.train()
    synchronize(runtime)
    started = time.perf_counter()
    for _ in range(steps):
        images, counts = next(batches)
        with runtime.autocast():
            logits = contender.step_module(images)
        loss = model.loss(logits.float(), counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(runtime)
    return time.perf_counter() - started


def synchronize(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


class Contender:
    """One compile mode's model (seeded alike), its optimiser and its own real-path loader."""

    def __init__(self, train, *, arch: str, batch: int, runtime: Runtime, mode: str | None):
        torch.manual_seed(0)
        self.mode = mode
        self.model = CountingModel(arch, head="ce", max_count=5).to(
            runtime.device, memory_format=torch.channels_last
        )
        # As training.py does: the step compiles, the model itself stays as it is.
        self.step_module = self.model if mode is None else torch.compile(self.model, mode=mode)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        mean, std = input_normalization(self.model)
        loader = BatchLoader(
            train,
            batch_size=batch,
            shuffle=True,
            augment=True,
            seed=0,
            drop_last=True,  # every step the same shapes, as CUDA graphs need
            device=runtime.device,
            mean=mean,
            std=std,
        )
        self.cycled = Cycled(loader)
        self.real_batches = iter(self.cycled)
        self.real: list[float] = []
        self.memory: list[float] = []


def throughput(
    train,
    *,
    arch: str,
    batch: int,
    steps: int,
    rounds: int,
    runtime: Runtime,
    reference: int,
    modes: list[str | None],
) -> list[dict]:
    """Per compile mode: both sides' images/s (median of rounds that alternate the sides and the
    modes, so machine noise hits all alike), the real side's data-wait share, and the compile
    seconds: the first ``WARMUP_STEPS`` steps' time less as many steady steps."""
    contenders = [
        Contender(train, arch=arch, batch=batch, runtime=runtime, mode=mode) for mode in modes
    ]
    # The reference: batches already converted and augmented, on the device, used in a cycle.
    first = contenders[0].cycled.loader
    in_memory = [b for _, b in zip(range(min(reference, len(first))), first, strict=False)]

    def memory_batches():
        while True:
            yield from in_memory

    memory, warm, waited_before = memory_batches(), {}, {}
    for contender in contenders:
        print(f"[bench]   {arch} {_label(contender.mode)}: warming up (compiling) ...")
        warm[contender] = timed_steps(contender, memory, WARMUP_STEPS, runtime)
        timed_steps(contender, contender.real_batches, 2, runtime)
        waited_before[contender] = contender.cycled.waited
    for _ in range(rounds):
        for contender in contenders:
            contender.real.append(timed_steps(contender, contender.real_batches, steps, runtime))
            contender.memory.append(timed_steps(contender, memory, steps, runtime))
    images = steps * batch
    rows = []
    for contender in contenders:
        steady_step = statistics.median(contender.memory) / steps
        rows.append(
            {
                "arch": arch,
                "mode": _label(contender.mode),
                "real": images / statistics.median(contender.real),
                "memory": images / statistics.median(contender.memory),
                "wait_share": (contender.cycled.waited - waited_before[contender])
                / sum(contender.real),
                "compile_seconds": warm[contender] - WARMUP_STEPS * steady_step,
                "model": contender.model,
            }
        )
    return rows


def gpu_rows(workdir: str, args, runtime: Runtime, modes: list[str | None]) -> list[dict]:
    """``--gpu-archs`` (ResNet-34 and ResNet-50) at 224 px, bf16, channels_last, on a generated
    cache, in each compile mode."""
    size, images = 224, args.gpu_images
    folder = os.path.join(workdir, "gpu")
    print(f"[bench] writing a generated cache of {images} images at {size} px ...")
    write_generated_cache(Location(folder), "gpu", size=size, images=images)
    train = load_cached_splits(Location(folder), "gpu", size, ("train",))["train"]
    rows = []
    for arch in args.gpu_archs.split(","):
        print(f"[bench] {arch} at {size} px on {runtime.device} ...")
        torch._dynamo.reset()  # each network's compilations afresh, the last ones' freed
        arch_rows = throughput(
            train,
            arch=arch,
            batch=args.gpu_batch_size,
            steps=args.steps,
            rounds=args.rounds,
            runtime=runtime,
            reference=8,
            modes=modes,
        )
        for row in arch_rows:
            row.pop("model")
        rows += arch_rows
    return rows


def compile_modes(text: str) -> list[str | None]:
    """``--compile-modes``: "off" (None) or a mode TrainConfig's ``compile`` takes, each once."""
    modes: list[str | None] = []
    for name in text.split(","):
        mode = None if name == "off" else TrainConfig(compile=name).compile_mode
        if mode not in modes:
            modes.append(mode)
    return modes


def _label(mode: str | None) -> str:
    return "off" if mode is None else mode


# -- the table -----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default=TrainConfig().arch)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="A/B alternations")
    parser.add_argument("--bins", type=int, default=600)
    parser.add_argument("--memory-sizes", default="4000,40000", help="cached images per case")
    parser.add_argument("--memory-image-size", type=int, default=64)
    parser.add_argument("--memory-arch", default="mobilenet_v3_small")
    parser.add_argument("--memory-batch-size", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gpu-images", type=int, default=8192)
    parser.add_argument("--gpu-batch-size", type=int, default=256)
    parser.add_argument("--gpu-archs", default="resnet34,resnet50")
    parser.add_argument(
        "--compile-modes",
        default="off",
        help="torch.compile modes measured side by side: off, default, reduce-overhead, "
        "max-autotune-no-cudagraphs, max-autotune (comma-separated)",
    )
    parser.add_argument(
        "--only-gpu", action="store_true", help="the GPU rows alone (no memory cases, no CPU row)"
    )
    parser.add_argument(
        "--h100-over-a100",
        default="2.0,3.0",
        help="the range of an H100's ResNet-50 training rate over an A100's that scales "
        "NVIDIA's A100 figure to the card (an assumption, not measured here)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 below a goal")
    args = parser.parse_args()
    sizes = [int(n) for n in args.memory_sizes.split(",")]
    try:
        modes = compile_modes(args.compile_modes)
    except pydantic.ValidationError as error:
        parser.error(error.errors()[0]["msg"].removeprefix("Value error, "))
    factors = [float(f) for f in args.h100_over_a100.split(",")]
    if args.only_gpu and args.device != "cuda":
        parser.error("--only-gpu measures the GPU rows: give --device cuda")

    memory, cpu_rows, inference_rate = [], [], None
    with tempfile.TemporaryDirectory() as workdir:
        if not args.only_gpu:
            memory = memory_cases(
                workdir, sizes, args.memory_image_size, args.memory_arch, args.memory_batch_size
            )
            print(f"[bench] preparing {args.bins} synthetic bins at {args.image_size} px ...")
            splits = prepare(workdir, args.bins, args.image_size)
            cpu = Runtime(device=torch.device("cpu"))
            cpu_rows = throughput(
                splits["train"],
                arch=args.arch,
                batch=args.batch_size,
                steps=args.steps,
                rounds=args.rounds,
                runtime=cpu,
                reference=10_000,
                modes=modes,
            )
            started = time.perf_counter()
            predict_split(cpu_rows[0]["model"], splits["val"], runtime=cpu, batch_size=128)
            inference_rate = len(splits["val"]) / (time.perf_counter() - started)
            for row in cpu_rows:
                row.pop("model")
        gpu = (
            gpu_rows(workdir, args, resolve_runtime("cuda"), modes) if args.device == "cuda" else []
        )

    met = True
    if memory:
        met &= print_memory(memory, args, sizes) <= GOAL_MEMORY
    lines = [("cpu", row, args.image_size, args.batch_size) for row in cpu_rows]
    lines += [("cuda", row, 224, args.gpu_batch_size) for row in gpu]
    print_training(lines, args)
    for row in cpu_rows:
        if row["mode"] == _label(modes[0]):
            ratio = row["real"] / row["memory"]
            print(f"goal: ratio >= {GOAL_RATIO} (cpu {args.arch}, {row['mode']}: {ratio:.3f})")
            met &= ratio >= GOAL_RATIO
    print_gpu_gap(gpu, factors)
    if inference_rate is not None:
        print(f"inference (val split, batch 128, cpu): {inference_rate:.1f} images/s")
    print(f"ABID epoch: {ABID_TRAIN_IMAGES:,} training images at the real path's rate")
    print(f"goals: {'met' if met else 'NOT met'}")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
