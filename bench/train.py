"""Training throughput through the real data path against the same model fed from memory.

The real path is the one ``bincount train`` uses: a synthetic bucket → manifest → the sharded
image cache (memory-mapped .npy shards) → ``BatchLoader`` (index, augment, normalise, prefetch
thread). The reference feeds pre-normalised tensors already in memory. Both run the same
optimiser steps on the same model, alternating A/B/A/B so that machine noise hits both alike.
The loader must not be the bottleneck: goal ratio >= 0.9. Inference images/s is measured too.

    python bench/train.py [--arch resnet18] [--image-size 128] [--batch-size 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bincount.config import TrainConfig
from bincount.imagecache import build_image_cache, load_cached_splits
from bincount.ingest import ingest_metadata
from bincount.manifest import CountPolicy, build_manifest, load_manifest
from bincount.models import CountingModel
from bincount.storage import Location
from bincount.synth import synthesize
from bincount.training import BatchLoader, predict_split, resolve_runtime
from bincount.validate import validate_bins

GOAL_RATIO = 0.9


def prepare(workdir: str, bins: int, size: int):
    source, output = Location(f"{workdir}/bucket"), Location(f"{workdir}/out")
    synthesize(source, bins=bins, seed=11, max_count=5)
    ingest_metadata(source, output)
    validate_bins(source, output, max_expected_quantity=250)
    version = build_manifest(source, output, policy=CountPolicy.parse("moderate")).version
    rows, _ = load_manifest(output, version)
    build_image_cache(source, output, rows, manifest_version=version, size=size)
    return load_cached_splits(output, version, size, ("train", "val"))


def timed_steps(model, optimizer, batches, steps: int) -> float:
    """Seconds for ``steps`` optimiser steps over an iterator of (images, counts)."""
    model.train()
    iterator = iter(batches)
    started = time.perf_counter()
    for _ in range(steps):
        images, counts = next(iterator)
        loss = model.loss(model(images), counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def cycle_loader(loader: BatchLoader):
    while True:
        yield from loader
        loader.epoch += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default=TrainConfig().arch)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="A/B alternations")
    parser.add_argument("--bins", type=int, default=600)
    parser.add_argument("--check", action="store_true", help="exit 1 below the goal")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        print(f"[bench] preparing {args.bins} synthetic bins at {args.image_size} px ...")
        splits = prepare(workdir, args.bins, args.image_size)
        train = splits["train"]
        torch.manual_seed(0)
        model = CountingModel(args.arch, head="ce", max_count=5).to(
            memory_format=torch.channels_last
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = BatchLoader(
            train, batch_size=args.batch_size, shuffle=True, augment=True, seed=0, drop_last=True
        )
        # The reference: the same batches, decoded, augmented and normalised ahead of time.
        in_memory = [batch for _, batch in zip(range(len(loader)), loader, strict=False)]

        def memory_batches():
            while True:
                yield from in_memory

        timed_steps(model, optimizer, memory_batches(), 3)  # warm up kernels and allocator
        real, memory = [], []
        for _ in range(args.rounds):
            real.append(timed_steps(model, optimizer, cycle_loader(loader), args.steps))
            memory.append(timed_steps(model, optimizer, memory_batches(), args.steps))
        images = args.steps * args.batch_size
        real_rate = images / statistics.median(real)
        memory_rate = images / statistics.median(memory)

        runtime = resolve_runtime("cpu" if not torch.cuda.is_available() else None)
        started = time.perf_counter()
        predict_split(model.to(runtime.device), splits["val"], runtime=runtime, batch_size=128)
        inference_rate = len(splits["val"]) / (time.perf_counter() - started)

    ratio = real_rate / memory_rate
    print()
    print(
        f"Training {args.arch} at {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} alternating rounds (median), "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'side':<34}{'images/s':>10}")
    print("-" * 44)
    print(f"{'in-memory tensors (reference)':<34}{memory_rate:>10.1f}")
    print(f"{'real data path (cache + loader)':<34}{real_rate:>10.1f}")
    print(f"{'ratio real / in-memory':<34}{ratio:>10.3f}   goal >= {GOAL_RATIO}")
    print(f"{'inference (val split, batch 128)':<34}{inference_rate:>10.1f}")
    met = ratio >= GOAL_RATIO
    print(f"goal: {'met' if met else 'NOT met'}")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
