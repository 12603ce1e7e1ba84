"""Drawing helpers shared by the pod and the items: shades, colour jitter, fonts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import ImageFont


def _shade(colour: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> tuple[int, ...]:
    shifted = np.asarray(colour, float) + rng.normal(0, amount, len(colour))
    return tuple(int(c) for c in np.clip(shifted, 0, 255))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
