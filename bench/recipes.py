"""Named training recipes end to end on synthetic bins: each epoch's figures, then the test split.

The library's own path, the one ``bincount pipeline`` then ``bincount train --recipe NAME``
take without Prefect around them, as the test rig runs it (``run_pipeline``): ``synthesize`` →
``ingest_metadata`` → ``validate_bins`` → ``build_manifest`` (policy ``moderate``, counts 0-5)
→ ``build_image_cache`` at each recipe's image size → ``train_model`` with
``TrainConfig(recipe=NAME)`` → ``evaluate_model`` on the test split. Prints one table row per
epoch (images/s, the share of the epoch spent waiting for data, validation figures) and one
line per recipe with the test accuracy and RMSE beside the majority class.

    python bench/recipes.py --device cuda --bins 20000                  # abid-baseline, exactly
    python bench/recipes.py --device cuda --recipes abid-baseline,gpu --bins 20000
    python bench/recipes.py --recipes cpu --bins 2000 --epochs 2        # a quick CPU look

``--epochs N`` shortens a recipe; a step schedule keeps its shape (the lr drops at the same
fractions of the run: every 10 of 40 epochs becomes every N/4).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time

import torch

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.model.config import TrainConfig
from bincount.model.optim import EpochMetrics
from bincount.model.recipes import RECIPES
from bincount.synth import synthesize
from bincount.testing.pipeline import run_pipeline


def recipe_config(name: str, epochs: int | None) -> TrainConfig:
    """Recipe ``name``, shortened to ``epochs`` when given (a step schedule scaled with it)."""
    if epochs is None:
        return TrainConfig(recipe=name)
    recipe = RECIPES[name]
    update: dict = {"recipe": name, "epochs": epochs, "patience": epochs}
    if recipe.get("schedule") == "step":
        update["step_epochs"] = max(1, math.ceil(recipe["step_epochs"] * epochs / recipe["epochs"]))
    return TrainConfig(**update)


def prepare(workdir: str, bins: int, seed: int) -> tuple[Location, Location, str]:
    source, output = Location(f"{workdir}/bucket"), Location(f"{workdir}/out")
    synthesize(source, bins=bins, seed=seed, max_count=5)
    run = run_pipeline(source, output, policy="moderate", until="manifest")
    return source, output, run.manifest_version


def run_recipe(
    source: Location, output: Location, version: str, config: TrainConfig, device: str | None
) -> dict:
    details = load_manifest(output, version)[1]

    def on_epoch(metrics: EpochMetrics, history: list[dict]) -> None:
        print(
            f"{config.recipe:<14}{metrics.epoch:>6}{metrics.train_loss:>11.4f}"
            f"{100 * metrics.val_accuracy:>9.1f}%{metrics.val_rmse:>9.3f}"
            f"{metrics.images_per_second:>10.0f}{100 * metrics.data_wait_share:>10.1f}%"
            f"{metrics.seconds:>9.1f}{metrics.lr:>10.2e}",
            flush=True,
        )

    run = run_pipeline(
        source,
        output,
        config=config,
        manifest_version=version,
        until="evaluate",
        shard_size=4096,
        device=device,
        on_epoch=on_epoch,
    )
    result, report, history = run.training, run.evaluation, run.training.history
    return {
        "recipe": config.recipe,
        "arch": config.arch,
        "image_size": config.image_size,
        "epochs": len(history),
        "train_images": sum(details.distribution["train"].values()),
        "cache_seconds": run.seconds["cache"],
        "train_seconds": run.seconds["train"],
        "median_images_per_second": sorted(h["images_per_second"] for h in history)[
            len(history) // 2
        ],
        "max_data_wait_share": max(h["data_wait_share"] for h in history[1:] or history),
        "best_epoch": result.best_epoch,
        "accuracy": report.metrics.accuracy,
        "rmse": report.metrics.rmse,
        "majority_accuracy": report.majority_baseline.accuracy,
        "test_bins": report.evaluation_set.size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="abid-baseline", help="comma-separated names")
    parser.add_argument("--bins", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=5, help="the synthetic bucket's seed")
    parser.add_argument("--epochs", type=int, help="shorten every recipe to this many epochs")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when present")
    parser.add_argument("--workdir", help="where the bucket and outputs go (default: temporary)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECIPES]
    if unknown or not names:
        raise SystemExit(f"Expected recipes among {sorted(RECIPES)}, but got {args.recipes!r}")
    logging.basicConfig(level=logging.WARNING)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"recipes {', '.join(names)} on {where}, {args.bins:,} synthetic bins (seed {args.seed})")

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-recipes-")
    started = time.perf_counter()
    source, output, version = prepare(workdir, args.bins, args.seed)
    seconds = time.perf_counter() - started
    print(f"synthesized, ingested, validated and manifested in {seconds:.0f} s")
    print(
        f"{'recipe':<14}{'epoch':>6}{'train loss':>11}{'val acc':>10}{'val RMSE':>9}"
        f"{'images/s':>10}{'data wait':>11}{'seconds':>9}{'lr':>10}"
    )
    results = []
    for name in names:
        results.append(
            run_recipe(source, output, version, recipe_config(name, args.epochs), device)
        )
        print(f"{name}: {summary_row(results[-1])}", flush=True)  # kept if a later one fails
    print()
    print(SUMMARY_HEADER)
    for result in results:
        print(summary_row(result))
    return 0


SUMMARY_HEADER = (
    f"{'recipe':<14}{'arch':<22}{'px':>4}{'epochs':>7}{'train':>7}{'test':>6}"
    f"{'cache s':>8}{'train s':>8}{'img/s':>7}{'max wait':>9}{'test acc':>9}{'RMSE':>7}"
    f"{'majority':>9}"
)


def summary_row(r: dict) -> str:
    return (
        f"{r['recipe']:<14}{r['arch']:<22}{r['image_size']:>4}{r['epochs']:>7}"
        f"{r['train_images']:>7}{r['test_bins']:>6}{r['cache_seconds']:>8.0f}"
        f"{r['train_seconds']:>8.0f}{r['median_images_per_second']:>7.0f}"
        f"{100 * r['max_data_wait_share']:>8.1f}%{100 * r['accuracy']:>8.1f}%"
        f"{r['rmse']:>7.3f}{100 * r['majority_accuracy']:>8.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
