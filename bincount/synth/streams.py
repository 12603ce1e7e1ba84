"""Seeds of a synthetic bin's independent RNG streams, and of the per-seed catalogue and pools."""

from __future__ import annotations

import numpy as np

# Independent RNG streams per bin: changing defect_rate must not change a clean bin's pixels.
_COUNT, _CONTENT, _SCENE, _DEFECT, _MISMATCH = range(5)
_CATALOGUE_STREAM = 1_000_003
_POOL_STREAM = 1_000_033


def _seeds(seed: int, ordinal: int) -> list[np.random.SeedSequence]:
    """Seeds of the bin's count, content, scene, defect and mismatch streams, independent of one
    another (a spawned child depends on its index alone, so adding a stream moves no other)."""
    return np.random.SeedSequence([seed, ordinal]).spawn(5)
