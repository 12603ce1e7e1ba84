"""The review queue against today's rule, on synthetic arrivals whose wrong records are known.

A champion (trained here at the demo's size, or taken from an existing output with ``--output``)
scores fresh synthetic arrivals of several seeds, each with a share of records that disagree with
the photo (``bincount synth --mismatch-rate``; the truth stays outside the bucket). For every
night the rules are measured side by side on the same scores:

* **today's rule** (before the queue): ``needs_review = predicted != recorded or confidence < 0.5``;
* **predicted != recorded**: the ``discrepancy`` column (the open top class agrees with records
  above K);
* **queue**: ``needs_review`` as the scoring run set it (budget and evidence threshold), and the
  same ranking at other budgets.

Columns: bins flagged (and their share of the night), precision (flagged records that are
wrong), recall (of all wrong records, and of those off by 2 or more), and the queue's
precision and share flagged as ratios of today's rule. Average precision ranks every bin by
``p_recorded``.

    python bench/review.py                                  # trains a demo-sized champion first
    python bench/review.py --output demo-output/output      # a copy of a champion (the demo's)
    python bench/review.py --seeds 101,102,103 --arrivals 600 --mismatch-rate 0.05
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import DEFAULT_POLICY
from bincount.model.config import DEMO_RECIPE, TrainConfig
from bincount.model.registry import resolve_version
from bincount.nightly.scoring import score_images
from bincount.review.ranking import (
    ReviewPolicy,
    average_precision,
    discrepancy_score,
    flag_quality,
    rank_queue,
)
from bincount.synth import synthesize
from bincount.testing.pipeline import run_pipeline


def train_champion(
    workdir: Path, *, bins: int, seed: int, minutes: float | None, policy: str, recipe: dict
) -> Location:
    """A demo-sized champion on a synthetic bucket of its own (seed ``seed``), trained for the
    recipe's epochs (and at most ``minutes``, when given)."""
    source, output = Location(str(workdir / "train-bucket")), Location(str(workdir / "out"))
    synthesize(source, bins=bins, seed=seed, defect_rate=0.01)
    config = TrainConfig(**{**recipe, "max_minutes": minutes})
    run_pipeline(source, output, policy=policy, config=config)
    return output


def night(workdir: Path, registry: Path, *, seed: int, arrivals: int, mismatch: float) -> dict:
    """Score one night of arrivals with the champion of ``registry`` (an output folder), in an
    output of its own; each rule's figures against the truth."""
    bucket, truth = workdir / f"night-{seed}", workdir / f"night-{seed}.truth"
    shutil.copytree(registry / "models", workdir / f"night-{seed}-out" / "models")
    source, output = Location(str(bucket)), Location(str(workdir / f"night-{seed}-out"))
    synthesize(source, bins=arrivals, seed=seed, mismatch_rate=mismatch, truth=Location(str(truth)))
    ingest_metadata(source, output)
    started = time.perf_counter()
    summary = score_images(source, output, review=ReviewPolicy())
    seconds = time.perf_counter() - started
    scores = read_table(output, "scores")
    truth_rows = pa.concat_tables(
        [Location(str(truth)).read_parquet(p.name) for p in truth.glob("*.parquet")]
    ).to_pylist()
    true_count = {r["image_id"]: r["true_count"] for r in truth_rows}
    rows = [r for r in scores.to_pylist() if r["expected_quantity"] is not None]
    errors = np.array([r["expected_quantity"] - true_count[r["image_id"]] for r in rows])
    today = np.array(
        [r["predicted_count"] != r["expected_quantity"] or r["confidence"] < 0.5 for r in rows]
    )
    differs = np.array([bool(r["discrepancy"]) for r in rows])
    queue = np.array([bool(r["needs_review"]) for r in rows])
    p = np.array([np.nan if r["p_recorded"] is None else r["p_recorded"] for r in rows])
    order = np.argsort(np.nan_to_num(p, nan=2.0), kind="stable")
    rules = {
        "today's rule": today,
        "predicted != recorded": differs,
        f"queue (policy: {summary.queue['budget']} max)": queue,
    }
    for percent in (2, 10):
        chosen = np.zeros(len(rows), bool)
        chosen[order[: math.floor(len(rows) * percent / 100)]] = True
        rules[f"same ranking, top {percent}%"] = chosen
    return {
        "seed": seed,
        "bins": len(rows),
        "wrong": int((errors != 0).sum()),
        "wrong_2": int((np.abs(errors) >= 2).sum()),
        "rules": {name: figures(flags, errors) for name, flags in rules.items()},
        "average_precision": average_precision(
            np.nan_to_num(discrepancy_score(p), nan=-1.0), errors != 0
        ),
        "images_per_second": (summary.scored + summary.quarantined) / seconds,
    }


def abid_baseline_estimate(bins: int = 200_000, seed: int = 0) -> dict:
    """An estimate of the queue at the ABID ResNet-34 baseline's accuracy (55.67%, RMSE 0.930).

    The challenge publishes per-count accuracy and RMSE, not a confusion matrix. One is built
    from them: a bin of count t is counted right with its accuracy, off by 1 or 2 otherwise,
    with the shares that give its RMSE. The model is taken to know only its predicted count,
    with calibrated probabilities P(truth | prediction) from the real 0-5 label distribution,
    a lower bound on a model whose probabilities carry more. 5% of records moved as in synth.
    """
    from bincount.model.metrics import ABID_BASELINE
    from bincount.review.ranking import detection_quality, simulate_record_errors
    from bincount.synth import label_distribution

    histogram = label_distribution()
    prior = np.array([histogram[k] for k in range(6)], float)
    prior /= prior.sum()
    confusion = np.zeros((6, 6))
    for t, (accuracy, rmse) in enumerate(
        zip(ABID_BASELINE["per_class_accuracy"], ABID_BASELINE["per_class_rmse"], strict=True)
    ):
        by_two = max((rmse**2 - (1 - accuracy)) / 3, 0.0)  # q1 + q2 = 1 - acc, q1 + 4 q2 = rmse²
        confusion[t, t] = accuracy
        for distance, share in ((1, 1 - accuracy - by_two), (2, by_two)):
            near = [c for c in (t - distance, t + distance) if 0 <= c <= 5]
            confusion[t, near] += share / len(near)
    posterior = prior[:, None] * confusion
    posterior /= posterior.sum(axis=0, keepdims=True)  # column c: P(truth | predicted c)
    rng = np.random.default_rng(seed)
    truth = rng.choice(6, bins, p=prior)
    predicted = (rng.random(bins)[:, None] > confusion[truth].cumsum(axis=1)).sum(axis=1)
    records, errors = simulate_record_errors(
        truth, rate=0.05, seed=seed + 1, max_count=5, open_top=False
    )
    p = posterior[records, predicted]
    decision = rank_queue(p, [f"{i:07d}" for i in range(bins)], ReviewPolicy())
    flags = np.array(decision.needs_review)
    return {
        "accuracy": float((predicted == truth).mean()),
        "rmse": float(np.sqrt(((predicted - truth) ** 2).mean())),
        "quality": detection_quality(discrepancy_score(p), errors, budgets_percent=(1, 2, 5)),
        "queue": figures(flags, errors),
    }


def figures(flags: np.ndarray, errors: np.ndarray) -> dict:
    quality = flag_quality(flags, errors)
    return {
        "flagged": quality.flagged,
        "share": quality.flagged / quality.judged,
        "precision": quality.precision,
        "recall": quality.recall,
        "recall_2": quality.recall_by_2_or_more,
    }


def print_table(nights: list[dict]) -> None:
    header = (
        f"{'seed':>5} {'rule':<28} {'flagged':>8} {'share':>7} {'precision':>10} "
        f"{'recall':>7} {'rec >=2':>8} {'prec x':>7} {'share x':>8}"
    )
    print(header)
    print("-" * len(header))
    for result in nights:
        baseline = result["rules"]["today's rule"]
        for name, f in result["rules"].items():
            ratio = f["precision"] / baseline["precision"] if baseline["precision"] else math.nan
            print(
                f"{result['seed']:>5} {name:<28} {f['flagged']:>8} {f['share']:>7.1%} "
                f"{f['precision']:>10.3f} {f['recall']:>7.3f} {f['recall_2']:>8.3f} "
                f"{ratio:>7.1f} {f['share'] / baseline['share']:>8.2f}"
            )
        name = "(ranking) average precision"
        print(
            f"{result['seed']:>5} {name:<28} {result['average_precision']:.3f}"
            f"   [{result['bins']} bins, {result['wrong']} wrong records, {result['wrong_2']} off "
            f"by 2+; scored at {result['images_per_second']:.0f} images/s]"
        )
    print(
        "\nprec x / share x: the rule's precision and share flagged as multiples of today's rule"
        " on the same night."
    )


def print_estimate(estimate: dict) -> None:
    queue, quality = estimate["queue"], estimate["quality"]
    print(
        f"\nEstimate at the ABID baseline (accuracy {estimate['accuracy']:.1%}, RMSE "
        f"{estimate['rmse']:.3f}; a confusion matrix built from its per-count figures, 5% wrong "
        "records): the default policy flags "
        f"{queue['share']:.1%} of bins, precision {queue['precision']:.2f}, recall "
        f"{queue['recall']:.2f} ({queue['recall_2']:.2f} of records off by 2+); average "
        f"precision {quality.average_precision:.2f}."
    )
    for budget in quality.budgets:
        by_error = ", ".join(f"{k}: {v:.2f}" for k, v in budget.recall_by_error.items())
        print(
            f"  top {budget.percent:g}%: precision {budget.precision:.2f}, recall "
            f"{budget.recall:.2f} (by size of error {by_error})"
        )


def _changes(text: str) -> dict:
    changes = {}
    for pair in filter(None, text.split(",")):
        name, _, value = pair.partition("=")
        kind = type(DEMO_RECIPE.get(name.strip(), ""))
        changes[name.strip()] = kind(value) if kind in (int, float) else value.strip()
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="an output with a champion (default: train one)")
    parser.add_argument("--train-bins", type=int, default=6000)
    parser.add_argument("--train-seed", type=int, default=31)
    parser.add_argument(
        "--train-minutes",
        type=float,
        help="also a time limit on the training (default: none; the recipe's epochs decide, so "
        "the champion is the same on a busy machine)",
    )
    parser.add_argument("--policy", default=DEFAULT_POLICY, help="the training manifest's policy")
    parser.add_argument(
        "--recipe",
        default="",
        help="changes to the demo recipe, e.g. 'loss=ce,epochs=10' (default: the demo's)",
    )
    parser.add_argument("--seeds", default="101,102", help="arrival seeds, one night each")
    parser.add_argument("--arrivals", type=int, default=600)
    parser.add_argument("--mismatch-rate", type=float, default=0.05)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-review-") as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.output:  # its registry is copied: the bench never writes into your output
            registry = Path(args.output)
        else:
            recipe = {**DEMO_RECIPE, **_changes(args.recipe)}
            limit = f", at most {args.train_minutes} min" if args.train_minutes else ""
            print(
                f"training a demo-sized champion ({args.train_bins} bins, "
                f"{recipe['epochs']} epochs{limit})..."
            )
            registry = Path(
                train_champion(
                    workdir,
                    bins=args.train_bins,
                    seed=args.train_seed,
                    minutes=args.train_minutes,
                    policy=args.policy,
                    recipe=recipe,
                ).uri()
            )
        champion = resolve_version(Location(str(registry)), "champion")
        print(f"champion {champion} of {registry}\n")
        nights = [
            night(
                workdir,
                registry,
                seed=int(seed),
                arrivals=args.arrivals,
                mismatch=args.mismatch_rate,
            )
            for seed in args.seeds.split(",")
        ]
        print_table(nights)
        print_estimate(abid_baseline_estimate())


if __name__ == "__main__":
    main()
