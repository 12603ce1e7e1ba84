"""The population stability index, the one statistic both drift monitors share: over classes of
predicted counts (:mod:`.monitoring`) and over reference-quantile bins of an image statistic
(:mod:`.inputdrift`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHARE_FLOOR = 1e-4  # an empty class counts as this share: finite, and tiny beside a real one


def population_stability_index(night: Sequence[int], reference: Sequence[int]) -> float:
    """PSI between two histograms over the same classes (bin counts, not shares), each share
    floored at 0.0001.

    >>> population_stability_index([50, 50], [5, 5])
    0.0
    >>> round(population_stability_index([90, 10], [50, 50]), 3)
    0.879
    """
    if len(night) != len(reference) or not len(night):
        raise ValueError(
            f"Expected two histograms over the same classes, but got {len(night)} and "
            f"{len(reference)} classes"
        )
    p = np.asarray(night, dtype=np.float64)
    q = np.asarray(reference, dtype=np.float64)
    if (p < 0).any() or (q < 0).any() or not p.sum() or not q.sum():
        raise ValueError(
            f"Expected non-negative bin counts, some bins in each, but got {night} and {reference}"
        )
    p = np.maximum(p / p.sum(), SHARE_FLOOR)
    q = np.maximum(q / q.sum(), SHARE_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))
