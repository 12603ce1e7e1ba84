"""Texture tiles, pod fabric and sensor noise, computed once per process from the seed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from bincount.synth.streams import _POOL_STREAM

_TILE = 512
_FIELD = 1280  # covers the largest image: the pod's fabric and the sensor noise


def _to_tile(values: np.ndarray, low: float, high: float) -> Image.Image:
    span = values.max() - values.min() or 1.0
    scaled = low + (values - values.min()) / span * (high - low)
    return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")


def _upsampled(rng: np.random.Generator, cells: tuple[int, int], side: int = _TILE) -> np.ndarray:
    small = Image.fromarray((rng.random(cells) * 255).astype(np.uint8))
    return np.asarray(small.resize((side, side), Image.BICUBIC), float)


def _grain(rng: np.random.Generator, sigma: float, side: int = _TILE) -> np.ndarray:
    return rng.normal(0, sigma, (side, side))


def _fibre(rng):  # cardboard: streaks along one axis
    return _to_tile(_upsampled(rng, (128, 12)) + _grain(rng, 18), 178, 255)


def _speckle(rng):  # printed or moulded surfaces
    return _to_tile(_grain(rng, 1), 212, 255)


def _blotch(rng):  # soft wear and shading
    return _to_tile(_upsampled(rng, (10, 10)) + _grain(rng, 8), 170, 255)


def _weave(rng):  # fabric
    y, x = np.mgrid[0:_TILE, 0:_TILE]
    period = rng.uniform(1.5, 3.0)
    pattern = np.sin(x / period) * np.sin(y / period) + _grain(rng, 0.8)
    return _to_tile(pattern, 214, 255)


def _crinkle(rng):  # plastic film: creases
    return _to_tile(-np.abs(_upsampled(rng, (40, 40)) - 127.0), 165, 255)


def _film(rng):  # the sheen of shrink wrap, added on top (screen): mostly dark, bright creases
    ridges = np.abs(_upsampled(rng, (48, 48)) - 127.0)
    return _to_tile(np.maximum(0, 12 - ridges) ** 2 + _grain(rng, 4), 0, 80)


def _pod_fabric(rng):  # felt with soft mottling, as large as any image
    return _to_tile(_upsampled(rng, (16, 16), _FIELD) + _grain(rng, 10, _FIELD), 208, 255)


def _sensor_noise(rng, sigma: float) -> Image.Image:
    values = np.clip(rng.normal(128, sigma, (_FIELD, _FIELD, 3)), 0, 255)
    return Image.fromarray(values.astype(np.uint8))


_TEXTURE_MAKERS = (_fibre, _speckle, _blotch, _weave, _crinkle, _speckle, _fibre)


@dataclass(frozen=True)
class Pools:
    """Texture tiles and sensor-noise fields, computed once per process from the seed."""

    textures: tuple[Image.Image, ...]
    film: Image.Image
    fabric: Image.Image
    noise: tuple[Image.Image, ...]  # RGB around 128: added with offset -128


@lru_cache(maxsize=2)
def texture_pools(seed: int) -> Pools:
    rng = np.random.default_rng([seed, _POOL_STREAM])
    return Pools(
        textures=tuple(make(rng) for make in _TEXTURE_MAKERS),
        film=_film(rng),
        fabric=_pod_fabric(rng),
        noise=tuple(_sensor_noise(rng, sigma) for sigma in (2.5, 4.5, 7.0)),
    )


def _crop(rng: np.random.Generator, tile: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A random window of ``tile`` of ``size`` (stretched when the tile is too small)."""
    w, h = size
    tw, th = tile.size
    if w > tw or h > th:
        scale = max(w / tw, h / th)
        return tile.resize((math.ceil(tw * scale), math.ceil(th * scale))).crop((0, 0, w, h))
    x, y = int(rng.integers(0, tw - w + 1)), int(rng.integers(0, th - h + 1))
    return tile.crop((x, y, x + w, y + h))
