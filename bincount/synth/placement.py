"""Laying units out in the pod so that none is more than :data:`MAX_HIDDEN` hidden."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bincount.synth.products import Look
from bincount.synth.sprites import item_sprite
from bincount.synth.textures import Pools

MAX_HIDDEN = 0.38  # the share of an item that items above it and the bands may hide


@dataclass
class _Placed:
    sprite: Image.Image
    cell: tuple[int, int]  # top-left grid cell
    size: tuple[int, int]  # footprint width and height in cells
    cells: int  # footprint cells
    visible: float  # footprint cells not covered by later units, those behind bands counted half


# Share of the opening the units cover, by count (0: any larger count): real bins are packed.
_FILL = {0: (0.55, 0.9), 1: (0.15, 0.45), 2: (0.3, 0.65), 3: (0.4, 0.75)}


def _plan_sizes(
    rng: np.random.Generator, looks: list[Look], region: tuple[int, int, int, int]
) -> list[tuple[int, int]]:
    """Each unit's (width, height): a share of the region that shrinks as the count grows."""
    rw, rh = region[2] - region[0], region[3] - region[1]
    n = len(looks)
    fill = rng.uniform(*_FILL.get(n, _FILL[0]))
    weights = np.array([look.size for look in looks])
    areas = rw * rh * fill * weights / weights.sum()
    sizes = []
    for look, area in zip(looks, areas, strict=True):
        area *= rng.uniform(0.9, 1.1)
        aspect = look.aspect
        if look.kind in ("bottle", "can"):
            aspect = min(aspect, 1 / aspect)  # drawn standing, rotated when lying
        w = min(math.sqrt(area * aspect), rw * 0.8)
        h = min(math.sqrt(area / aspect), rh * 0.8)
        floor = 0.07 * min(rw, rh)
        sizes.append((int(max(w, floor)), int(max(h, floor))))
    return sizes


def _mask_cells(sprite: Image.Image, cell: int) -> np.ndarray:
    """The cells a sprite covers at least half of."""
    gw, gh = math.ceil(sprite.width / cell), math.ceil(sprite.height / cell)
    alpha = np.zeros((gh * cell, gw * cell), np.uint8)
    alpha[: sprite.height, : sprite.width] = np.asarray(sprite.getchannel("A"))
    return alpha.reshape(gh, cell, gw, cell).mean(axis=(1, 3)) > 127


def _place(
    rng: np.random.Generator,
    mask: np.ndarray,
    *,
    grid: _Grid,
    placed: list[_Placed],
    strict: bool = True,
) -> tuple[int, int, float] | None:
    """A cell where the new unit and every unit below it stay visible enough, and commit it.

    With ``strict=False`` the least bad of the tries is taken when none satisfies the bound.
    """
    gh, gw = mask.shape
    rx0, ry0, rx1, ry1 = grid.region
    if gw > rx1 - rx0 or gh > ry1 - ry0:
        return None
    cells = float(mask.sum())
    visible = np.array([p.visible for p in placed])
    areas = np.array([p.cells for p in placed], float)
    best: tuple[float, tuple[int, int], np.ndarray, float] | None = None
    for _ in range(30):
        gx, gy = _candidate(rng, (gw, gh), grid=grid, placed=placed)
        window = (slice(gy, gy + gh), slice(gx, gx + gw))
        clear = grid.clear[window][mask]
        below = grid.owner[window][mask]
        hit = below >= 0
        loss = np.bincount(below[hit], weights=clear[hit], minlength=len(placed))
        own = float(clear.sum())
        # The worst-off unit's visible share after this placement, the new one included.
        worst = min(own / cells, *((visible - loss) / areas)) if placed else own / cells
        if best is None or worst > best[0]:
            best = (worst, (gx, gy), loss, own)
        if worst >= 1 - MAX_HIDDEN:
            break
    assert best is not None
    worst, (gx, gy), loss, own = best
    if strict and worst < 1 - MAX_HIDDEN:
        return None
    for index in np.nonzero(loss)[0]:
        placed[index].visible -= float(loss[index])
    grid.owner[gy : gy + gh, gx : gx + gw][mask] = len(placed)
    return gx, gy, own


def _candidate(
    rng: np.random.Generator, size: tuple[int, int], *, grid: _Grid, placed: list[_Placed]
) -> tuple[int, int]:
    gw, gh = size
    rx0, ry0, rx1, ry1 = grid.region
    if placed and rng.random() < 0.55:  # lean on a unit already there: real bins are packed
        near = placed[int(rng.integers(len(placed)))]
        gx = int(near.cell[0] + rng.normal(0, 0.6) * near.size[0])
        gy = int(near.cell[1] + rng.normal(0, 0.5) * near.size[1])
        return min(max(gx, rx0), rx1 - gw), min(max(gy, ry0), ry1 - gh)
    gx = int(rng.integers(rx0, rx1 - gw + 1))
    gy = int(ry0 + (ry1 - gh - ry0) * (1 - rng.beta(1.0, 1.8)))  # gravity: favour low
    return gx, gy


@dataclass
class _Grid:
    """The scene at coarse resolution: which unit shows in each cell, and how clearly."""

    cell: int  # pixels per cell side
    region: tuple[int, int, int, int]  # cells units may occupy (x0, y0, x1, y1), end exclusive
    owner: np.ndarray  # index of the topmost unit, -1 for none
    clear: np.ndarray  # 1, or 0.5 behind a band


def _grid(size: tuple[int, int], area: tuple[int, int, int, int], bands) -> _Grid:
    cell = max(3, round(min(size) / 80))
    gw, gh = math.ceil(size[0] / cell), math.ceil(size[1] / cell)
    region = (
        math.ceil(area[0] / cell),
        math.ceil(area[1] / cell),
        area[2] // cell,
        area[3] // cell,
    )
    clear = np.ones((gh, gw))
    for top, bottom in bands:  # a unit behind a band is half seen
        clear[max(0, top // cell) : math.ceil(bottom / cell)] = 0.5
    return _Grid(cell=cell, region=region, owner=np.full((gh, gw), -1, np.int32), clear=clear)


def _place_unit(rng, look: Look, size, pools: Pools, *, grid: _Grid, placed, edge: int) -> _Placed:
    """Render one unit and place it, shrinking it when it does not fit; the last try must."""
    w, h = size
    tries = 6
    for attempt in range(tries):
        sprite = item_sprite(rng, look, (w, h), pools, edge=edge)
        angle = rng.normal(0, 7) + (90 if look.kind in ("bottle", "can") and look.lying else 0)
        sprite = sprite.rotate(angle, resample=Image.BILINEAR, expand=True)
        mask = _mask_cells(sprite, grid.cell)
        spot = _place(rng, mask, grid=grid, placed=placed, strict=attempt < tries - 1)
        if spot is not None:
            gx, gy, visible = spot
            footprint = (mask.shape[1], mask.shape[0])
            return _Placed(sprite, (gx, gy), footprint, int(mask.sum()), visible)
        w, h = max(6, int(w * 0.85)), max(6, int(h * 0.85))
    raise AssertionError("unreachable: the last try always places")
