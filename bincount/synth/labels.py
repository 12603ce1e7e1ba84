"""How many items a synthetic bin holds: the real ABID label distribution, truncated."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from bincount.synth.streams import _COUNT, _seeds


def bin_count(*, seed: int, ordinal: int, max_count: int) -> int:
    """The number of items in a bin: cheap, without rendering it."""
    rng = np.random.default_rng(_seeds(seed, ordinal)[_COUNT])
    return draw_count(rng, count_probabilities(max_count))


@lru_cache(maxsize=1)
def label_distribution() -> dict[int, int]:
    """The real ABID histogram {items per bin: bins}, embedded with the package."""
    text = resources.files("bincount").joinpath("resources/label_distribution.json").read_text()
    return {int(count): int(bins) for count, bins in json.loads(text)["histogram"].items()}


@lru_cache(maxsize=64)
def count_probabilities(max_count: int) -> np.ndarray:
    """P(count) for 0..max_count: the real histogram truncated and renormalised (not clipped)."""
    histogram = label_distribution()
    weights = np.array([histogram.get(count, 0) for count in range(max_count + 1)], float)
    if weights.sum() == 0:
        raise ValueError(f"Expected some real bins with 0..{max_count} items, but found none")
    probabilities = weights / weights.sum()
    probabilities.flags.writeable = False
    return probabilities


def draw_count(rng: np.random.Generator, probabilities: np.ndarray) -> int:
    return int(rng.choice(len(probabilities), p=probabilities))
