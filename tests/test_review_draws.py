"""bench/review.py's draws of a real night: other records changed on the same scored photos, as
the night itself changes them, with ``p_recorded`` what scoring computes; and the sweep's
figures are their mean. The real nights themselves need ../shared/abid and minutes of scoring:
the bench is run by hand (its docstring)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import review
from bincount.review.ranking import ReviewPolicy, record_probability

HEAD = {"max_count": 5, "open_top": False}


def _night(bins: int = 400, seed: int = 3, share: float = 0.1) -> dict:
    """A scored night as score_night returns it: a share of the records of 1-5 changed."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 6, bins)
    probabilities = rng.dirichlet(np.ones(6), bins)
    ids = [f"bin{i:04d}" for i in range(bins)]
    candidates = [ids[i] for i in range(bins) if 1 <= true[i] <= 5]
    recorded = true.copy()
    for image_id in review.draw_changes(rng, candidates, share):
        row = ids.index(image_id)
        recorded[row] += review.changed_offset(rng, int(true[row]), 5)
    return {
        "image_ids": ids,
        "probabilities": probabilities,
        "true_count": true,
        "errors": recorded - true,
        "p_recorded": record_probability(probabilities, list(recorded), **HEAD),
        "candidates": candidates,
        "head": HEAD,
    }


def test_each_draw_changes_the_same_share_by_two_or_three_within_the_head():
    night = _night()
    draws = review.redraws(night, draws=12, seed=5, share=0.1)
    assert len(draws) == 12
    assert draws[0]["errors"] is night["errors"]  # the scored draw first, as it was
    candidates = {night["image_ids"].index(i) for i in night["candidates"]}
    changed_sets = set()
    for drawn in draws:
        changed = np.flatnonzero(drawn["errors"])
        assert len(changed) == round(0.1 * len(candidates))
        assert set(changed) <= candidates
        assert set(np.abs(drawn["errors"][changed])) <= {2, 3}
        recorded = night["true_count"] + drawn["errors"]
        assert recorded.min() >= 0 and recorded.max() <= 5
        expected = record_probability(night["probabilities"], list(recorded), **HEAD)
        np.testing.assert_allclose(drawn["p_recorded"], expected)
        changed_sets.add(tuple(changed))
    assert len(changed_sets) == 12  # other records each time
    again = review.redraws(night, draws=12, seed=5, share=0.1)
    assert all(np.array_equal(a["errors"], b["errors"]) for a, b in zip(draws, again, strict=True))


def test_a_night_whose_p_recorded_disagrees_with_its_scores_is_refused():
    night = _night()
    night["p_recorded"] = night["p_recorded"][::-1].copy()
    with pytest.raises(AssertionError, match="p_recorded recomputed"):
        review.redraws(night, draws=2, seed=5, share=0.1)


def test_the_sweep_reports_the_mean_of_the_draws_and_their_tenth_percentile():
    night = _night()
    draws = review.redraws(night, draws=8, seed=1, share=0.1)
    policy = ReviewPolicy(budget_percent=10, max_p_recorded=1.0)
    each = [review.policy_figures({**night, **drawn}, policy) for drawn in draws]
    over = review.figures_over(night, draws, policy)
    assert over["recall"] == pytest.approx(np.mean([f["recall"] for f in each]))
    assert over["precision"] == pytest.approx(np.mean([f["precision"] for f in each]))
    assert over["recall_p10"] == pytest.approx(np.percentile([f["recall"] for f in each], 10))
    assert over["share"] == pytest.approx(0.1)  # a budget that fills: 40 of 400 every draw
    swept = dict(review.sweep(night, draws))
    assert swept[policy] == over
    chosen, met = review.choose(list(swept.items()))
    assert chosen in swept and met == review.meets(swept[chosen])
