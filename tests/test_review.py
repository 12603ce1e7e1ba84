"""The review queue's pure parts against reference computations: calibration (temperature, ECE,
reliability), the probability of a record, ranking within a budget, detection quality, the
synthetic truth it is measured against, and the open top class that keeps large bins out."""

from __future__ import annotations

import dataclasses
import doctest
import functools
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import bincount.model.calibration
import bincount.model.metrics
import bincount.review.ranking
from bincount import synth
from bincount.core.storage import Location
from bincount.data.manifest import CountPolicy, load_manifest
from bincount.model.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    mean_probabilities,
    reliability_bins,
    reliability_table,
)
from bincount.model.networks import CountingModel
from bincount.review.ranking import (
    ReviewPolicy,
    average_precision,
    detection_quality,
    disagrees,
    discrepancy_score,
    queue_against_truth,
    rank_queue,
    record_probability,
    simulate_record_errors,
)
from bincount.testing.pipeline import run_pipeline
from tests.builders import write_bin, write_clean_bucket


@pytest.mark.parametrize(
    "module", [bincount.model.calibration, bincount.review.ranking, bincount.model.metrics]
)
def test_doctests_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# -- calibration -------------------------------------------------------------------------------
def reference_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Top-label ECE written out the textbook way: loop over bins, |acc - conf| weighted."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) | (b == bins - 1))
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(labels)


@pytest.mark.parametrize("seed", range(6))
def test_ece_and_reliability_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(20, 400)), int(rng.integers(2, 9))
    logits = rng.normal(0, rng.uniform(0.5, 4), (n, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, classes, n)
    for bins in (5, 10, 15):
        ours = expected_calibration_error(
            torch.tensor(probabilities), torch.tensor(labels), bins=bins
        )
        assert ours == pytest.approx(reference_ece(probabilities, labels, bins), abs=1e-6)
    table = reliability_table(torch.tensor(probabilities), torch.tensor(labels), bins=10)
    assert sum(row.n for row in table) == n and len(table) == 10


@pytest.mark.parametrize("seed", range(4))
def test_reliability_of_any_stated_probability_matches_a_reference_loop(seed):
    # As the review bench uses it: the chance given to each record against whether it is right.
    rng = np.random.default_rng(seed)
    stated = rng.beta(0.5, 1.5, int(rng.integers(30, 300)))
    stated[:2] = (0.0, 1.0)
    happened = rng.random(len(stated)) < stated
    table = reliability_bins(torch.tensor(stated), torch.tensor(happened), bins=10)
    for b, row in enumerate(table):
        inside = (stated >= b / 10) & ((stated < (b + 1) / 10) | (b == 9))
        assert row.n == inside.sum()
        if row.n:
            assert row.confidence == pytest.approx(stated[inside].mean(), abs=1e-6)
            assert row.accuracy == pytest.approx(happened[inside].mean(), abs=1e-6)
        else:
            assert math.isnan(row.confidence) and math.isnan(row.accuracy)
    with pytest.raises(ValueError, match="one outcome per probability"):
        reliability_bins(torch.tensor(stated), torch.tensor(happened[1:]))


@pytest.mark.parametrize(("true_temperature", "seed"), [(0.5, 1), (2.0, 2), (3.5, 3)])
def test_fitted_temperature_recovers_the_one_the_labels_were_drawn_with(true_temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 6000, 6, generator=generator) * 3
    labels = torch.multinomial((logits[0] / true_temperature).softmax(1), 1, generator=generator)
    temperature = fit_temperature(lambda x: x.softmax(1), logits, labels[:, 0])
    assert temperature == pytest.approx(true_temperature, rel=0.1)


def test_calibration_lowers_the_error_of_an_overconfident_ordinal_model():
    torch.manual_seed(0)
    model = CountingModel("mobilenet_v3_small", head="ordinal", max_count=4, open_top=True)
    raw = functools.partial(model.probabilities, calibrated=False)
    # An over-confident model: labels drawn from its logits at T = 3, logits shown at T = 1.
    logits = torch.randn(2, 4000, 1) * 4 + model.thresholds.detach()
    truth = mean_probabilities(raw, logits, 3.0)
    labels = torch.multinomial(truth, 1)[:, 0]
    temperature = fit_temperature(raw, logits, labels)
    report = calibration_report(raw, logits, labels, temperature)
    assert temperature > 1.5
    assert report.nll_after < report.nll_before and report.ece_after < report.ece_before
    assert report.n == 4000 and len(report.reliability_after) == 10


def test_temperature_is_saved_with_the_model_and_old_models_load_uncalibrated():
    model = CountingModel("mobilenet_v3_small", head="ce", max_count=3, open_top=True)
    assert model.num_classes == 5
    model.temperature.fill_(2.5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = CountingModel("mobilenet_v3_small", head="ce", max_count=3, open_top=True)
    loaded.load_state_dict(saved)
    assert float(loaded.temperature) == 2.5
    logits = torch.randn(3, 5)
    torch.testing.assert_close(loaded.probabilities(logits), (logits / 2.5).softmax(1))
    del saved["temperature"]  # a model saved before calibration existed
    loaded.load_state_dict(saved)
    assert float(loaded.temperature) == 1.0


# -- the probability of a record ------------------------------------------------------------------
def test_record_probability_reads_the_record_and_the_open_top_class():
    probabilities = np.array(
        [[0.1, 0.6, 0.2, 0.1], [0.05, 0.05, 0.1, 0.8], [0.7, 0.1, 0.1, 0.1], [0.25] * 4]
    )
    recorded = [1, 12, None, 2]
    open_top = record_probability(probabilities, recorded, max_count=2, open_top=True)
    assert open_top[[0, 1, 3]].tolist() == [0.6, 0.8, 0.25] and math.isnan(open_top[2])
    closed = record_probability(probabilities[:, :3], recorded, max_count=2, open_top=False)
    assert closed[0] == 0.6 and math.isnan(closed[1]) and math.isnan(closed[2])  # 12: unjudged
    with pytest.raises(ValueError, match="Expected 4 count probabilities"):
        record_probability(probabilities[:, :3], recorded, max_count=2, open_top=True)
    np.testing.assert_allclose(discrepancy_score(np.array([0.1, 0.01, 0.0, 1.0])), [1, 2, 6, 0])
    assert disagrees([3, 3, 1, 2], [12, 2, None, 2], max_count=2, open_top=True) == [
        False,  # "more than 2" agrees with 12
        True,  # "more than 2" does not agree with 2
        None,
        False,
    ]


def test_the_queue_ranks_by_evidence_within_the_budget_and_the_threshold():
    p = np.array([0.3, 0.001, np.nan, 0.04, 0.001, 0.2, 0.9, 0.02, 0.6, 0.5, 0.7])
    ids = [f"{i:05d}" for i in range(len(p))]
    decision = rank_queue(p, ids, ReviewPolicy(budget_percent=40, max_p_recorded=0.05))
    assert decision.judged == 10 and decision.budget == 4
    # Ties (0.001) by id; NaN is not ranked.
    assert decision.review_rank[1] == 1 and decision.review_rank[4] == 2
    assert decision.review_rank[2] is None
    order = sorted((i for i in range(len(p)) if not math.isnan(p[i])), key=lambda i: (p[i], ids[i]))
    assert [decision.review_rank[i] for i in order] == list(range(1, 11))
    assert [ids[i] for i, flag in enumerate(decision.needs_review) if flag] == [
        "00001",
        "00003",
        "00004",
        "00007",
    ]
    # The threshold holds even inside the budget: a quiet night flags fewer, or none.
    quiet = rank_queue(np.full(10, 0.5), ids[:10], ReviewPolicy(budget_percent=50))
    assert quiet.budget == 5 and quiet.flagged == 0
    capped = rank_queue(p, ids, ReviewPolicy(budget_percent=100, budget_count=2, max_p_recorded=1))
    assert capped.budget == 2 and capped.flagged == 2


def test_review_policy_refuses_nonsense():
    for bad in ({"budget_percent": 0}, {"budget_percent": 120}, {"max_p_recorded": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ReviewPolicy(**bad)
    assert ReviewPolicy().budget(400) == 40 and ReviewPolicy().budget(9) == 0
    assert ReviewPolicy(budget_percent=5).budget(400) == 20


# -- measuring a queue ----------------------------------------------------------------------------
def reference_average_precision(scores: np.ndarray, wrong: np.ndarray) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for position, i in enumerate(order, start=1):
        if wrong[i]:
            hits += 1
            total += hits / position
    return total / wrong.sum()


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_and_budgets_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 500))
    errors = np.where(rng.random(n) < 0.1, rng.choice([-3, -2, -1, 1, 2, 5], n), 0)
    scores = rng.random(n) + 0.8 * (errors != 0)  # distinct, informative
    quality = detection_quality(scores, errors, budgets_percent=(2.0, 5.0))
    assert quality.average_precision == pytest.approx(
        reference_average_precision(scores, errors != 0)
    )
    for figures in quality.budgets:
        top = np.argsort(-scores)[: int(n * figures.percent / 100)]
        wrong = errors[top] != 0
        assert figures.flagged == len(top)
        assert figures.precision == pytest.approx(wrong.mean())
        assert figures.recall == pytest.approx(wrong.sum() / (errors != 0).sum())
        large = np.abs(errors) >= 3
        if large.any():
            assert figures.recall_by_error["3+"] == pytest.approx(
                (np.abs(errors[top]) >= 3).sum() / large.sum()
            )
    assert quality.wrong == (errors != 0).sum() == sum(quality.wrong_by_error.values())


def test_a_yes_no_rule_is_measured_as_a_random_pick_among_its_ties():
    wrong = np.array([True] * 10 + [False] * 90)
    flags = np.ones(100)  # flags everything: precision at any budget is the base rate
    quality = detection_quality(flags, wrong.astype(int), budgets_percent=(50.0,))
    assert quality.budgets[0].precision == pytest.approx(0.1, abs=0.08)
    assert average_precision(flags, wrong) == pytest.approx(0.1, abs=0.08)


def test_queue_against_truth_hand_case():
    measured = queue_against_truth(
        flagged={"a": True, "b": True, "c": False, "d": False, "e": True},
        recorded={"a": 5, "b": 2, "c": 4, "d": 7, "e": 1},
        true_counts={"a": 2, "b": 2, "c": 3, "d": 7, "e": 2},
    )
    assert (measured.judged, measured.wrong, measured.wrong_by_2_or_more) == (5, 3, 1)
    assert measured.flagged == 3 and measured.flagged_wrong == 2
    assert measured.precision == pytest.approx(2 / 3) and measured.recall == pytest.approx(2 / 3)
    assert measured.recall_by_2_or_more == 1.0


def test_simulated_record_errors_move_records_within_the_class_space():
    labels = np.random.default_rng(0).integers(0, 7, 5000)
    records, errors = simulate_record_errors(labels, rate=0.1, seed=1, max_count=5, open_top=True)
    assert ((records >= 0) & (records <= 6)).all()
    np.testing.assert_array_equal(records - labels, errors)
    assert 0.06 < (errors != 0).mean() < 0.1  # moves that stay in "more than 5" are no error
    assert (np.abs(errors[errors != 0]) >= 3).any() and (np.abs(errors) == 1).any()


# -- the truth it is measured against ------------------------------------------------------------
def test_synth_writes_the_truth_outside_the_bucket(tmp_path):
    bucket, truth = Location(str(tmp_path / "b")), Location(str(tmp_path / "b.truth"))
    summary = synth.synthesize(
        bucket, bins=60, seed=5, mismatch_rate=0.5, defect_rate=0.1, truth=truth, workers=1
    )
    table = pq.read_table(summary.truth).to_pylist()
    assert [r["image_id"] for r in table] == list(summary.ids)
    assert {r["image_id"]: r["defect"] for r in table if r["defect"]} == summary.defects
    mismatched = 0
    for row in table:
        raw = (tmp_path / "b" / "metadata" / f"{row['image_id']}.json").read_bytes()
        if row["defect"] == "truncated_json":
            assert row["recorded_count"] is None
            continue
        document = json.loads(raw)
        recorded = document.get("EXPECTED_QUANTITY")
        assert row["recorded_count"] == (recorded if type(recorded) is int else None)
        assert (
            row["has_image"] == (tmp_path / "b" / "bin-images" / f"{row['image_id']}.jpg").exists()
        )
        skus = sum(e["quantity"] for e in document["BIN_FCSKU_DATA"].values())
        if row["defect"] == "record_mismatch":
            mismatched += 1
            assert recorded == skus != row["true_count"]  # self-consistent, and wrong
        elif row["defect"] is None:
            assert recorded == skus == row["true_count"]
    assert mismatched > 10
    assert sorted(r["true_count"] for r in table) == sorted(
        c for c, n in summary.label_histogram.items() for _ in range(n)
    )
    with pytest.raises(ValueError, match="outside the bucket"):
        synth.synthesize(bucket, bins=1, seed=5, append=True, truth=Location(str(tmp_path / "b/t")))


def test_mismatched_records_differ_by_small_and_large_amounts():
    rng = np.random.default_rng(3)
    offsets = [synth.mismatch_offset(rng, count) for count in rng.integers(0, 20, 4000)]
    sizes = np.abs(offsets)
    assert set(sizes) == set(range(1, 9)) and 0.4 < (sizes <= 2).mean() < 0.6
    assert all(synth.mismatch_offset(rng, 0) > 0 for _ in range(200))  # never below no items


def test_a_real_record_changed_by_a_given_offset_still_adds_up():
    skus = {"B1": 2, "B2": 1, "X9": 1}
    document = {
        "BIN_FCSKU_DATA": {
            sku: {"asin": sku, "name": f"item {sku}", "quantity": q} for sku, q in skus.items()
        },
        "EXPECTED_QUANTITY": 4,
        "image_fname": "121.jpg",
    }
    for offset in (-4, -3, -2, 2, 3):
        for seed in range(5):
            changed = synth.mismatched_record(
                np.random.default_rng(seed), document, catalogue=(), offset=offset
            )
            quantities = {sku: e["quantity"] for sku, e in changed["BIN_FCSKU_DATA"].items()}
            assert changed["EXPECTED_QUANTITY"] == sum(quantities.values()) == 4 + offset
            assert set(quantities) <= set(skus) and all(q > 0 for q in quantities.values())
            assert changed["image_fname"] == "121.jpg"
    assert document["BIN_FCSKU_DATA"]["B1"]["quantity"] == 2  # the original is left alone
    with pytest.raises(ValueError, match="can lose"):
        synth.mismatched_record(np.random.default_rng(0), document, catalogue=(), offset=-5)
    empty = {"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}
    with pytest.raises(ValueError, match="catalogue"):
        synth.mismatched_record(np.random.default_rng(0), empty, catalogue=(), offset=2)


def test_synth_counts_follow_the_full_real_distribution_by_default(tmp_path):
    probabilities = synth.count_probabilities(synth.MAX_COUNT_LIMIT)
    assert probabilities[6:].sum() > 0.3  # a third of real bins hold more than 5 items
    counts = [
        synth.bin_count(seed=9, ordinal=i, max_count=synth.MAX_COUNT_LIMIT) for i in range(3000)
    ]
    assert 0.27 < np.mean(np.array(counts) > 5) < 0.39 and max(counts) > 15


# -- the open top class ---------------------------------------------------------------------
def test_open_policy_keeps_every_bin_and_labels_large_ones_more_than_k(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    write_clean_bucket(root, 30)
    write_bin(root, "80002", {"B1": 7, "B2": 5})  # 12 items
    policy = CountPolicy.parse("open:3")
    assert policy == CountPolicy("open:3", 3, open_top=True)
    summary = run_pipeline(Location(str(root)), output, policy=policy, until="manifest").manifest
    rows, details = load_manifest(output, summary.version)
    assert rows.num_rows == 31 and details.open_top is True and details.max_count == 3
    metadata = {
        p.stem: json.loads(p.read_bytes())["EXPECTED_QUANTITY"]
        for p in (root / "metadata").glob("*.json")
    }
    for row in rows.to_pylist():
        assert row["label"] == min(metadata[row["image_id"]], 4)
    assert summary.excluded["outside_policy"] == 0


def test_report_round_trips_through_json():
    report = calibration_report(
        lambda x: x.softmax(1), torch.randn(1, 50, 3), torch.randint(0, 3, (50,)), 1.5
    )
    assert json.loads(json.dumps(dataclasses.asdict(report)))["temperature"] == 1.5
