"""The review queue against today's rule, on nights whose wrong records are known: synthetic
arrivals, or real held-out bins with some records changed.

A champion (trained here at the demo's size, or taken from an existing output with ``--output``)
scores fresh synthetic arrivals of several seeds, each with a share of records that disagree with
the photo (``bincount synth --mismatch-rate``; the truth stays outside the bucket). For every
night the rules are measured side by side on the same scores:

* **today's rule** (before the queue): ``needs_review = predicted != recorded or confidence < 0.5``;
* **predicted != recorded**: the ``discrepancy`` column (the open top class agrees with records
  above K);
* **queue**: ``needs_review`` as the scoring run set it (budget and evidence threshold), the
  earlier default threshold (0.05, chosen on synthetic nights before real ones) on the same
  ranking, and the same ranking at other budgets.

Columns: bins flagged (and their share of the night), precision (flagged records that are
wrong), recall (of all wrong records, and of those off by 2 or more), and the queue's
precision and share flagged as ratios of today's rule. Average precision ranks every bin by
``p_recorded``.

``--real R`` measures real photos instead. R is an output fed by ``bincount pipeline`` from
``../shared/abid/sample`` and ``../shared/abid/resized224`` (``--policy moderate``) holding a
promoted champion (``bincount train --recipe real``, then ``bincount promote``). Each night is
one split of R's manifest as a bucket of its own (photos linked from each bin's source,
metadata copied): the ``test`` split (seed ``--seed``) and the ``val`` split (seed + 1). In each,
``--changed-share`` (8%) of the bins recorded with 1-5 items get a record changed by 2 or 3,
sku quantities changed to match (``bincount.synth.mismatched_record``), never below 0 and never
past the champion's largest count (5 for ``moderate``: a closed model gives a record above its
range no chance at all, so such a bin could never be flagged). The record as it was counts as
the truth: real records carry some noise of their own, so a flagged bin whose record was not
changed is not always a false alarm. Both nights are ingested and scored as the synthetic ones
(``ingest_metadata``, ``score_images`` with ``ReviewPolicy()``), on a copy of R's models. Then:
the same table for both nights; a sweep of budgets and evidence thresholds on the validation
night against the targets (flagged <= 10%, precision >= 0.40, recall >= 0.50), the chosen
setting's figures on the test night; and the reliability of ``p_recorded`` on the validation
night (``--plot`` saves the diagram as a PNG). A night changes about 50 records, so which ones
decides much of its figures: the sweep and the test figures are also the mean over ``--draws``
draws of the changed records on the same scored photos (:func:`redraws`).

    python bench/review.py                                  # trains a demo-sized champion first
    python bench/review.py --output demo-output/output      # a copy of a champion (the demo's)
    python bench/review.py --seeds 101,102,103 --arrivals 600 --mismatch-rate 0.05
    python bench/review.py --real R --plot reliability.png  # real held-out bins of output R
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bincount.core.storage import Location
from bincount.core.tables import current_bins, read_table
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import DEFAULT_POLICY, load_manifest
from bincount.model.calibration import reliability_bins, reliability_error
from bincount.model.config import TrainConfig
from bincount.model.recipes import DEMO_RECIPE
from bincount.model.registry import resolve_version
from bincount.nightly.scoring import score_images
from bincount.review.ranking import (
    ReviewPolicy,
    average_precision,
    discrepancy_score,
    flag_quality,
    rank_queue,
    record_probability,
)
from bincount.synth import encode_metadata, mismatched_record, synthesize
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
    """One synthetic night of arrivals, scored with the champion of ``registry``."""
    bucket, truth = workdir / f"night-{seed}", workdir / f"night-{seed}.truth"
    synthesize(
        Location(str(bucket)),
        bins=arrivals,
        seed=seed,
        mismatch_rate=mismatch,
        truth=Location(str(truth)),
    )
    truth_rows = pa.concat_tables(
        [Location(str(truth)).read_parquet(p.name) for p in truth.glob("*.parquet")]
    ).to_pylist()
    true_count = {r["image_id"]: r["true_count"] for r in truth_rows}
    return score_night(workdir, registry, bucket, true_count, name=str(seed))


def real_night(
    workdir: Path, registry: Path, *, split: str, seed: int, share: float
) -> tuple[Path, dict[str, int], list[str]]:
    """The bins of ``registry``'s manifest split ``split`` as a bucket of their own, a ``share``
    of those recorded with 1-5 items given a record changed by 2 or 3 (kept within the counts
    the manifest's champion judges, 0..K of a closed policy: a record past K is given no chance
    and so could never be flagged), sku quantities changed to match; each bin's count as
    recorded before, taken as the truth (the truth file stays beside the bucket, not in it);
    and the ids of the bins that could have been changed."""
    output = Location(str(registry))
    manifest, details = load_manifest(output)
    uris = set(manifest.filter(pc.equal(manifest["split"], split))["image_uri"].to_pylist())
    sources: dict[str, Location] = {}
    bins = []
    for row in current_bins(output).to_pylist():
        if row["source"] is not None:
            location = sources.setdefault(row["source"], Location(row["source"]))
            if location.uri(row["image_key"]) in uris:
                bins.append((location, row))
    if len(bins) != len(uris) or not bins:
        raise ValueError(
            f"Expected the record of each of the {len(uris)} {split} bins of the manifest among "
            f"the bins of {registry} (with their source), but found {len(bins)}"
        )
    top = None if details.open_top or details.max_count is None else details.max_count
    rng = np.random.default_rng(seed)
    candidates = [
        row["image_id"]
        for _, row in bins
        if 1 <= row["expected_quantity"] <= 5
        and row["expected_quantity"] == row["sku_quantity_sum"]
    ]
    changed = set(draw_changes(rng, candidates, share))
    bucket = workdir / f"night-{split}"
    night = Location(str(bucket))
    truth = {}
    for location, row in bins:
        if night.exists(row["image_key"]) or night.exists(row["metadata_key"]):
            raise ValueError(f"Expected one bin per key, but {row['image_key']} came twice")
        link(location, night, row["image_key"])
        metadata = location.read_bytes(row["metadata_key"])
        record = row["expected_quantity"]
        if row["image_id"] in changed:
            offset = changed_offset(rng, record, top)
            document = mismatched_record(rng, json.loads(metadata), catalogue=(), offset=offset)
            metadata = encode_metadata(document)
            truth[row["image_id"]] = {"recorded": record + offset, "true_count": record}
        night.write_bytes(row["metadata_key"], metadata)
    (workdir / f"night-{split}.truth.json").write_text(json.dumps(truth, indent=1))
    return bucket, {row["image_id"]: row["expected_quantity"] for _, row in bins}, candidates


def draw_changes(rng: np.random.Generator, candidates: list[str], share: float) -> list[str]:
    """Which of ``candidates`` a night changes: ``share`` of them, drawn without replacement."""
    picks = rng.choice(len(candidates), size=round(share * len(candidates)), replace=False)
    return [candidates[i] for i in picks]


def changed_offset(rng: np.random.Generator, record: int, top: int | None) -> int:
    """How far a changed record moves: -3, -2, +2 or +3, never below 0 nor past ``top``."""
    moved = [d for d in (-3, -2, 2, 3) if record + d >= 0 and (top is None or record + d <= top)]
    return int(rng.choice(moved))


def redraws(result: dict, *, draws: int, seed: int, share: float) -> list[dict]:
    """The scored night, then ``draws - 1`` more draws of which records are changed (the same
    photos, the same candidates and rule, other seeds), each as ``p_recorded`` and ``errors``.

    A real night changes about 50 records: one draw decides much of its precision and recall.
    The photos' count probabilities do not depend on the record, so another draw is the same
    scores with other records, and ``p_recorded`` is what scoring computes from them
    (``record_probability``, checked against the scored night's own column)."""
    true = result["true_count"]
    again = record_probability(
        result["probabilities"], list(true + result["errors"]), **result["head"]
    )
    if not np.allclose(again, result["p_recorded"], atol=1e-6, equal_nan=True):
        raise AssertionError("Expected p_recorded recomputed from the scores to match scoring's")
    top = None if result["head"]["open_top"] else result["head"]["max_count"]
    row_of = {image_id: row for row, image_id in enumerate(result["image_ids"])}
    candidates = [i for i in result["candidates"] if i in row_of]
    nights = [{"p_recorded": result["p_recorded"], "errors": result["errors"]}]
    for draw in range(1, draws):
        rng = np.random.default_rng([seed, draw])
        recorded = true.copy()
        for image_id in draw_changes(rng, candidates, share):
            row = row_of[image_id]
            recorded[row] += changed_offset(rng, int(true[row]), top)
        p = record_probability(result["probabilities"], list(recorded), **result["head"])
        nights.append({"p_recorded": p, "errors": recorded - true})
    return nights


def link(source: Location, dest: Location, key: str) -> None:
    """``key`` of ``source`` at ``dest``: a hard link where both are folders of one disk."""
    if not (source.is_s3 or dest.is_s3):
        Path(dest.path(key)).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.path(key), dest.path(key))
            return
        except OSError:
            pass
    dest.write_bytes(key, source.read_bytes(key))


def score_night(
    workdir: Path,
    registry: Path,
    bucket: Path,
    true_count: dict[str, int],
    candidates: list[str] = (),
    *,
    name: str,
) -> dict:
    """Ingest and score the night in ``bucket`` with the champion of ``registry`` (an output
    folder) in an output of its own; each rule's figures against the true counts (and, for
    :func:`redraws`, the scores and the ids of the bins the night could have changed)."""
    shutil.copytree(registry / "models", workdir / f"night-{name}-out" / "models")
    source, output = Location(str(bucket)), Location(str(workdir / f"night-{name}-out"))
    ingest_metadata(source, output)
    started = time.perf_counter()
    summary = score_images(source, output, review=ReviewPolicy())
    seconds = time.perf_counter() - started
    scores = read_table(output, "scores")
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
        "night": name,
        "bins": len(rows),
        "wrong": int((errors != 0).sum()),
        "wrong_2": int((np.abs(errors) >= 2).sum()),
        "rules": {name: figures(flags, errors) for name, flags in rules.items()},
        "average_precision": average_precision(
            np.nan_to_num(discrepancy_score(p), nan=-1.0), errors != 0
        ),
        "images_per_second": (summary.scored + summary.quarantined) / seconds,
        # What the other policies and the reliability diagram are computed from.
        "image_ids": [r["image_id"] for r in rows],
        "p_recorded": p,
        "errors": errors,
        "probabilities": np.array([r["count_probabilities"] for r in rows], np.float64),
        "true_count": np.array([true_count[r["image_id"]] for r in rows]),
        "candidates": list(candidates),
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
        f"{'night':>5} {'rule':<28} {'flagged':>8} {'share':>7} {'precision':>10} "
        f"{'recall':>7} {'rec >=2':>8} {'prec x':>7} {'share x':>8}"
    )
    print(header)
    print("-" * len(header))
    for result in nights:
        baseline = result["rules"]["today's rule"]
        for name, f in result["rules"].items():
            ratio = f["precision"] / baseline["precision"] if baseline["precision"] else math.nan
            print(
                f"{result['night']:>5} {name:<28} {f['flagged']:>8} {f['share']:>7.1%} "
                f"{f['precision']:>10.3f} {f['recall']:>7.3f} {f['recall_2']:>8.3f} "
                f"{ratio:>7.1f} {f['share'] / baseline['share']:>8.2f}"
            )
        name = "(ranking) average precision"
        print(
            f"{result['night']:>5} {name:<28} {result['average_precision']:.3f}"
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


# The default until it was tuned on real validation nights (it had been chosen on synthetic
# ones): each synthetic night also shows it, on the same scores.
EARLIER_DEFAULT = ReviewPolicy(max_p_recorded=0.05)

# The bar for a real night: what a queue may flag, and what it must find.
TARGETS = {"share": 0.10, "precision": 0.40, "recall": 0.50}
SWEEP_BUDGETS = (5.0, 8.0, 10.0)
SWEEP_THRESHOLDS = (1.0, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01)


def meets(f: dict) -> bool:
    return (
        f["share"] <= TARGETS["share"]
        and f["precision"] >= TARGETS["precision"]
        and f["recall"] >= TARGETS["recall"]
    )


def policy_figures(result: dict, policy: ReviewPolicy) -> dict:
    """The night's figures had its queue been ranked with ``policy`` (the scores do not
    depend on it: the queue is ranked after every bin is scored)."""
    decision = rank_queue(result["p_recorded"], result["image_ids"], policy)
    return figures(np.array(decision.needs_review), result["errors"])


def figures_over(result: dict, nights: list[dict], policy: ReviewPolicy) -> dict:
    """``policy``'s figures on each draw of the night (:func:`redraws`): their mean, and the
    10th percentile of precision and recall (one draw in ten does worse)."""
    each = [policy_figures({**result, **drawn}, policy) for drawn in nights]
    mean = {key: float(np.nanmean([f[key] for f in each])) for key in each[0]}
    for key in ("precision", "recall"):
        mean[f"{key}_p10"] = float(np.nanpercentile([f[key] for f in each], 10))
    return mean


def sweep(result: dict, nights: list[dict]) -> list[tuple[ReviewPolicy, dict]]:
    """Every policy of the grid, and its figures on the night's draws."""
    return [
        (policy, figures_over(result, nights, policy))
        for policy in (
            ReviewPolicy(budget_percent=budget, max_p_recorded=threshold)
            for budget in SWEEP_BUDGETS
            for threshold in SWEEP_THRESHOLDS
        )
    ]


def choose(swept: list[tuple[ReviewPolicy, dict]]) -> tuple[ReviewPolicy, bool]:
    """The setting that meets the targets (on the mean of the draws) with the most recall, then
    precision; among equals the default, else the strictest evidence and the smallest budget.
    Where none meets them, the one with the best F1, marked as missing them."""
    meeting = [(policy, f) for policy, f in swept if meets(f)]
    if meeting:

        def preference(pf: tuple[ReviewPolicy, dict]) -> tuple:
            policy, f = pf
            strict = (policy == ReviewPolicy(), -policy.max_p_recorded, -policy.budget_percent)
            return (round(f["recall"], 6), round(f["precision"], 6), *strict)

        return max(meeting, key=preference)[0], True

    def f1(pf: tuple[ReviewPolicy, dict]) -> float:
        p, r = np.nan_to_num(pf[1]["precision"]), np.nan_to_num(pf[1]["recall"])
        return 2 * p * r / (p + r) if p + r else 0.0

    return max(swept, key=f1)[0], False


def print_sweep(
    swept: list[tuple[ReviewPolicy, dict]], chosen: ReviewPolicy, met: bool, draws: int
) -> None:
    print(
        f"\nPolicies on the validation night, mean of {draws} draws of the changed records "
        f"(targets: flagged <= {TARGETS['share']:.0%}, precision >= {TARGETS['precision']:.2f}, "
        f"recall >= {TARGETS['recall']:.2f}; p10: one draw in ten does worse):"
    )
    header = (
        f"{'budget':>7} {'p <=':>6} {'flagged':>8} {'share':>7} {'precision':>10} {'p10':>5} "
        f"{'recall':>7} {'p10':>5}"
    )
    print(header)
    print("-" * len(header))
    for policy, f in swept:
        mark = " meets" if meets(f) else ""
        mark += " <- chosen" if policy == chosen else ""
        default = " (default)" if policy == ReviewPolicy() else ""
        print(
            f"{policy.budget_percent:>6g}% {policy.max_p_recorded:>6g} {f['flagged']:>8.1f} "
            f"{f['share']:>7.1%} {f['precision']:>10.3f} {f['precision_p10']:>5.2f} "
            f"{f['recall']:>7.3f} {f['recall_p10']:>5.2f}{mark}{default}"
        )
    if not met:
        print("No setting meets the targets on the validation night; chosen: the best F1.")


def print_reliability(result: dict, plot: str | None) -> None:
    """``p_recorded`` binned against the share of bins whose record is right."""
    judged = ~np.isnan(result["p_recorded"])
    table = reliability_bins(
        torch.as_tensor(result["p_recorded"][judged]),
        torch.as_tensor(result["errors"][judged] == 0),
        bins=10,
    )
    print(
        f"\nReliability of p_recorded on the validation night ({int(judged.sum())} bins; right ="
        " the record as it was before the night changed some):"
    )
    header = f"{'p_recorded':>11} {'bins':>6} {'mean p':>7} {'right':>7}"
    print(header)
    print("-" * len(header))
    for row in table:
        print(
            f"{row.low:>5.1f}-{row.high:<5.1f} {row.n:>6} {row.confidence:>7.3f} "
            f"{row.accuracy:>7.3f}"
        )
    print(f"mean gap |right - p| weighted by bins: {reliability_error(table):.3f}")
    print(
        "p_recorded is the photo's chance of the recorded count, blind to the record; most "
        "records are right here, so even a calibrated model's points sit above the diagonal: "
        "read the table for share right rising with p."
    )
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(4.4, 4.2))
        axes.plot([0, 1], [0, 1], ":", color="grey", lw=0.8, label="calibrated")
        points = [(row.confidence, row.accuracy) for row in table if row.n]
        axes.plot(*zip(*points, strict=True), "o-", ms=4, label="validation night")
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="p_recorded", ylabel="share of records right")
        axes.set_title("reliability of p_recorded (real bins)")
        axes.legend(frameon=False, loc="upper left")
        figure.savefig(plot, dpi=120, bbox_inches="tight")
        print(f"reliability diagram: {plot}")


def print_targets(result: dict, rules: list[str], over: dict[str, dict], draws: int) -> None:
    print(
        f"\nOn the test night (targets: flagged <= {TARGETS['share']:.0%}, precision >= "
        f"{TARGETS['precision']:.2f}, recall >= {TARGETS['recall']:.2f}):"
    )
    for name in rules:
        f = result["rules"][name]
        print(
            f"  {name}, the scored draw: flagged {f['share']:.1%}, precision "
            f"{f['precision']:.3f}, recall {f['recall']:.3f}: {'met' if meets(f) else 'missed'}"
        )
    for name, f in over.items():
        print(
            f"  {name}, mean of {draws} draws: flagged {f['share']:.1%}, precision "
            f"{f['precision']:.3f} (p10 {f['precision_p10']:.2f}), recall {f['recall']:.3f} "
            f"(p10 {f['recall_p10']:.2f}): {'met' if meets(f) else 'missed'}"
        )


def real_nights(
    workdir: Path, registry: Path, *, seed: int, share: float, draws: int, plot: str | None
):
    """The real nights: validation (seed + 1) to tune and check calibration, test (seed) to
    report; each scored once and measured over ``draws`` draws of its changed records."""
    _, details = load_manifest(Location(str(registry)))
    head = {"max_count": details.max_count, "open_top": bool(details.open_top)}
    val = score_night(
        workdir,
        registry,
        *real_night(workdir, registry, split="val", seed=seed + 1, share=share),
        name="val",
    )
    test = score_night(
        workdir,
        registry,
        *real_night(workdir, registry, split="test", seed=seed, share=share),
        name="test",
    )
    val_draws, test_draws = (
        redraws({**night, "head": head}, draws=draws, seed=night_seed, share=share)
        for night, night_seed in ((val, seed + 1), (test, seed))
    )
    swept = sweep(val, val_draws)
    chosen, met = choose(swept)
    rules = [name for name in test["rules"] if name.startswith("queue")]
    over = {"queue (default policy)": figures_over(test, test_draws, ReviewPolicy())}
    if chosen != ReviewPolicy():
        name = f"tuned on val: {chosen.budget_percent:g}%, p<={chosen.max_p_recorded:g}"
        rules.append(name)
        test["rules"][name] = policy_figures(test, chosen)
        over[name] = figures_over(test, test_draws, chosen)
    print_table([val, test])
    print_sweep(swept, chosen, met, draws)
    print_reliability(val, plot)
    print_targets(test, rules, over, draws)


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
    parser.add_argument(
        "--real",
        metavar="R",
        help="real nights instead: the held-out bins of output R (fed by `bincount pipeline` "
        "from ../shared/abid, with a promoted champion), test and validation splits",
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="the real test night's seed (validation: seed + 1)"
    )
    parser.add_argument(
        "--changed-share",
        type=float,
        default=0.08,
        help="share of the real bins recorded with 1-5 items given a record changed by 2 or 3",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=30,
        help="draws of which real records are changed, the scored one first (default 30)",
    )
    parser.add_argument("--plot", help="save the reliability diagram of p_recorded here (PNG)")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"Expected --draws of at least 1, but got {args.draws}")

    with tempfile.TemporaryDirectory(prefix="bench-review-") as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        # An output's registry is copied: the bench never writes into your output.
        if args.real:
            registry = Path(args.real)
            champion = resolve_version(Location(str(registry)), "champion")
            print(f"champion {champion} of {registry}\n")
            real_nights(
                workdir,
                registry,
                seed=args.seed,
                share=args.changed_share,
                draws=args.draws,
                plot=args.plot,
            )
            return
        if args.output:
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
        for result in nights:
            name = f"queue, earlier p<={EARLIER_DEFAULT.max_p_recorded:g}"
            result["rules"][name] = policy_figures(result, EARLIER_DEFAULT)
        print_table(nights)
        print_estimate(abid_baseline_estimate())


if __name__ == "__main__":
    main()
