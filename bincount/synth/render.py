"""A bin's photo: the pod, its items, the elastic bands, labels, lighting, noise and JPEG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from bincount.synth.drawing import _font, _jitter, _shade
from bincount.synth.placement import _grid, _place_unit, _Placed, _plan_sizes
from bincount.synth.products import Product
from bincount.synth.textures import Pools, _crop

# Image sizes of the originals: widths 317-852, heights 234-1087, aspect ratios in clusters.
MIN_WIDTH, MAX_WIDTH = 320, 860
MIN_HEIGHT, MAX_HEIGHT = 234, 1100
_ASPECTS = ((0.72, 0.06), (1.04, 0.04), (1.40, 0.06), (1.66, 0.05))  # (mean, sd) of width/height
_ASPECT_WEIGHTS = (0.2, 0.25, 0.35, 0.2)


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like the originals' sizes and aspect ratios."""
    mean, sd = _ASPECTS[int(rng.choice(len(_ASPECTS), p=_ASPECT_WEIGHTS))]
    aspect = float(np.clip(rng.normal(mean, sd), 0.6, 1.85))
    low = max(MIN_WIDTH, MIN_HEIGHT * aspect)
    high = min(MAX_WIDTH, MAX_HEIGHT * aspect)
    width = int(low + (high - low) * rng.beta(1.6, 3.0))
    height = int(np.clip(round(width / aspect), MIN_HEIGHT, MAX_HEIGHT))
    return width, height


@dataclass(frozen=True)
class _Frame:
    """The pod: interior box, its back wall, and the lips above and below it."""

    size: tuple[int, int]
    interior: tuple[int, int, int, int]
    back: tuple[int, int, int, int]
    pod: tuple[int, int, int]


def _frame(rng: np.random.Generator, size: tuple[int, int]) -> _Frame:
    w, h = size
    x0, x1 = int(w * rng.uniform(0, 0.06)), w - int(w * rng.uniform(0, 0.06))
    y0, y1 = int(h * rng.uniform(0.03, 0.11)), h - int(h * rng.uniform(0.08, 0.17))
    depth = rng.uniform(0.04, 0.12)
    back = (
        x0 + int((x1 - x0) * depth * rng.uniform(0.5, 1.5)),
        y0 + int((y1 - y0) * depth * 0.6),
        x1 - int((x1 - x0) * depth * rng.uniform(0.5, 1.5)),
        y1 - int((y1 - y0) * depth * rng.uniform(0.6, 1.6)),
    )
    pod = _jitter(rng, (214, 200, 138), 8)
    return _Frame(size=size, interior=(x0, y0, x1, y1), back=back, pod=pod)


def _draw_pod(rng: np.random.Generator, frame: _Frame, pools: Pools) -> Image.Image:
    scene = Image.new("RGB", frame.size, frame.pod)
    draw = ImageDraw.Draw(scene)
    x0, y0, x1, y1 = frame.interior
    bx0, by0, bx1, by1 = frame.back
    inside = _shade(frame.pod, rng.uniform(0.78, 0.9))
    draw.rectangle(frame.interior, fill=_shade(inside, 0.8))  # ceiling
    draw.polygon([(x0, y0), (bx0, by0), (bx0, by1), (x0, y1)], fill=_shade(inside, 0.86))
    draw.polygon([(x1, y0), (bx1, by0), (bx1, by1), (x1, y1)], fill=_shade(inside, 0.83))
    draw.polygon([(x0, y1), (bx0, by1), (bx1, by1), (x1, y1)], fill=_shade(inside, 0.95))
    draw.rectangle(frame.back, fill=inside)
    # Lips: the front edge of the pod above and below the opening, slightly brighter.
    lip = _shade(frame.pod, 1.05)
    draw.rectangle((0, 0, frame.size[0], y0), fill=lip)
    draw.rectangle((0, y1, frame.size[0], frame.size[1]), fill=lip)
    draw.line((0, y0, frame.size[0], y0), fill=_shade(frame.pod, 0.7), width=2)
    draw.line((0, y1, frame.size[0], y1), fill=_shade(frame.pod, 0.75), width=2)
    return ImageChops.multiply(scene, _crop(rng, pools.fabric, frame.size))


def _draw_lip_labels(rng: np.random.Generator, scene: Image.Image, frame: _Frame) -> None:
    w, h = frame.size
    _, y0, _, y1 = frame.interior
    _lip_label(rng, scene, (w * rng.uniform(0.25, 0.5), y1 + (h - y1) * 0.3), h - y1, w)
    if rng.random() < 0.6 and y0 > 8:  # the pod above's label, cut by the image edge
        _lip_label(rng, scene, (w * rng.uniform(0.25, 0.5), y0 * 0.1 - y0 * 0.5), y0, w)


def _lip_label(rng, scene: Image.Image, at: tuple[float, float], lip: float, width: int) -> None:
    draw = ImageDraw.Draw(scene)
    lh = max(8, int(lip * rng.uniform(0.55, 0.75)))
    lw = int(min(width * 0.45, lh * rng.uniform(3.2, 4.2)))
    x, y = int(at[0]), int(at[1])
    paper = ((236, 236, 230), (236, 200, 206), (196, 214, 236), (232, 232, 200))
    draw.rectangle((x, y, x + lw, y + lh), fill=paper[int(rng.integers(len(paper)))])
    text = f"{rng.integers(1, 6)}{rng.choice(list('ABCDEFGH'))}"
    font = _font(max(6, int(lh * 0.7)))
    draw.text((x + lh * 0.35, y + lh * 0.1), text, fill=(30, 30, 40), font=font)
    # An up arrow after the text, and the QR code at the right end.
    ax = x + lh * (0.4 + 0.55 * len(text))
    draw.polygon(
        [(ax, y + lh * 0.8), (ax + lh * 0.3, y + lh * 0.8), (ax + lh * 0.15, y + lh * 0.2)],
        fill=(30, 30, 40),
    )
    qr = Image.fromarray((rng.random((9, 9)) < 0.5).astype(np.uint8) * 230 + 10)
    side = max(4, int(lh * 0.8))
    scene.paste(qr.resize((side, side), Image.NEAREST), (x + lw - side - 3, y + (lh - side) // 2))


def _band_rows(rng: np.random.Generator, frame: _Frame) -> list[tuple[int, int]]:
    """The vertical extent of each elastic band across the front of the pod."""
    _, y0, _, y1 = frame.interior
    span = y1 - y0
    n = int(rng.choice(4, p=(0.05, 0.25, 0.55, 0.15)))
    if n == 0:
        return []
    slots = np.sort(rng.uniform(0.12, 0.88, n))
    bands = []
    for centre in slots:
        height = span * rng.uniform(0.08, 0.17)
        top = int(y0 + centre * span - height / 2)
        bands.append((top, int(top + height)))
    return bands


def _draw_bands(rng: np.random.Generator, scene: Image.Image, bands: list[tuple[int, int]]) -> None:
    """Elastic bands: a whitish haze crossed by many thin, slightly tinted strings."""
    w = scene.width
    for top, bottom in bands:
        sag = rng.uniform(-5, 5)
        pad = 6  # room for the sag, so each band is blended over its own strip only
        overlay = Image.new("RGBA", (w, bottom - top + 2 * pad), (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        draw.rectangle(
            (0, pad, w, pad + bottom - top), fill=(240, 240, 236, int(rng.integers(70, 130)))
        )
        y = pad + rng.uniform(0, 2)
        alpha = rng.uniform(170, 245)
        while y < pad + bottom - top:
            tint = _jitter(rng, (236, 234, 238), 12)
            width = 1 if rng.random() < 0.6 else 2
            draw.line(
                (0, y, w, y + sag), fill=(*tint, int(alpha * rng.uniform(0.6, 1))), width=width
            )
            y += rng.uniform(1.6, 3.6)
        scene.paste(overlay, (0, top - pad), overlay)


_SHADOW_LUT = [int(a * 0.65) for a in range(256)]


def _compose_items(
    rng: np.random.Generator,
    scene: Image.Image,
    frame: _Frame,
    lines: Sequence[tuple[Product, int]],
    bands: list[tuple[int, int]],
    pools: Pools,
) -> list[float]:
    """Lay the units out and paint them; each unit's visible share of its footprint."""
    looks = [product.look for product, quantity in lines for _ in range(quantity)]
    if not looks:
        return []
    # Larger units first (they sit at the back), with some shuffling.
    order = np.argsort([-look.size * rng.uniform(0.6, 1.4) for look in looks], kind="stable")
    looks = [looks[i] for i in order]
    x0, y0, x1, y1 = frame.interior
    margin = int(min(x1 - x0, y1 - y0) * 0.03)
    area = (x0 + margin, y0 + margin, x1 - margin, y1 - margin)
    grid = _grid(scene.size, area, bands)
    placed: list[_Placed] = []
    # Outlines and shadows scale with the photo so they survive shrinking to ~128 px.
    edge = max(2, round(min(scene.size) / 110))
    for look, size in zip(looks, _plan_sizes(rng, looks, area), strict=True):
        placed.append(_place_unit(rng, look, size, pools, grid=grid, placed=placed, edge=edge))
    offset = max(2, round(min(scene.size) / 70))
    for unit in placed:
        x, y = unit.cell[0] * grid.cell, unit.cell[1] * grid.cell
        shadow = unit.sprite.getchannel("A").point(_SHADOW_LUT)
        scene.paste((12, 10, 6), (x + offset, y + offset), shadow)
        scene.paste(unit.sprite, (x, y), unit.sprite)
    return [unit.visible / unit.cells for unit in placed]


def _lighting(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A multiplicative light map: exposure, a gradient and vignetting (grey, upsampled)."""
    grid = 24
    y, x = np.mgrid[0:grid, 0:grid] / (grid - 1)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(theta) + (y - 0.5) * np.sin(theta)
    light = 1 - rng.uniform(0, 0.45) * (ramp + 0.5)
    light *= 1 - rng.uniform(0.15, 0.55) * ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 2
    light *= rng.uniform(0.5, 1.0)  # often dark
    grey = Image.fromarray(np.clip(light * 255, 0, 255).astype(np.uint8))
    grey = grey.resize(size, Image.BILINEAR)  # one channel: a third of the cost of RGB
    return Image.merge("RGB", (grey, grey, grey))


def _warm_cast(rng: np.random.Generator) -> list[int]:
    """A per-channel lookup table: the originals are yellowish, blue held back."""
    gains = (1.0, rng.uniform(0.92, 0.99), rng.uniform(0.78, 0.92))
    return [int(v * gain) for gain in gains for v in range(256)]


def _glare(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    grid = 32
    y, x = np.mgrid[0:grid, 0:grid] / (grid - 1)
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.7), rng.uniform(0.12, 0.35)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)) * rng.uniform(50, 120)
    grey = Image.fromarray(blob.astype(np.uint8)).resize(size, Image.BILINEAR)
    return Image.merge("RGB", (grey, grey, grey))


@dataclass(frozen=True)
class Rendered:
    jpeg: bytes
    visible: tuple[float, ...]  # per unit: the share not hidden by units above or bands


def render_bin(
    rng: np.random.Generator,
    lines: Sequence[tuple[Product, int]],
    *,
    pools: Pools,
    exposure: float = 1.0,
) -> Rendered:
    """The JPEG of a pod holding ``lines``, as an ABID camera would have taken it."""
    size = image_size(rng)
    frame = _frame(rng, size)
    scene = _draw_pod(rng, frame, pools)
    bands = _band_rows(rng, frame)
    visible = _compose_items(rng, scene, frame, lines, bands, pools)
    _draw_bands(rng, scene, bands)
    _draw_lip_labels(rng, scene, frame)
    scene = ImageChops.multiply(scene, _lighting(rng, size)).point(_warm_cast(rng))
    if rng.random() < 0.2:
        scene = ImageChops.screen(scene, _glare(rng, size))
    noise = pools.noise[int(rng.integers(len(pools.noise)))]
    scene = ImageChops.add(scene, _crop(rng, noise, size), scale=1.0, offset=-128)
    if exposure != 1.0:  # after the scene is drawn: the same bins, photographed in other light
        scene = scene.point([min(255, round(v * exposure)) for v in range(256)] * 3)
    buffer = io.BytesIO()
    scene.save(buffer, format="JPEG", quality=int(rng.integers(88, 96)))
    return Rendered(jpeg=buffer.getvalue(), visible=tuple(visible))
