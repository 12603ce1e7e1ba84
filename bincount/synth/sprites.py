"""Item sprites: one unit of a product (box, book, bag, bottle, can, blister, soft), as RGBA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from bincount.synth.drawing import _font, _jitter, _shade
from bincount.synth.products import Look
from bincount.synth.textures import Pools, _crop


def _label_patch(draw: ImageDraw.ImageDraw, rng, box, ink) -> None:
    """A white printed label: text bars and sometimes a barcode."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 - x0 < 6 or y1 - y0 < 6:
        return
    draw.rectangle((x0, y0, x1, y1), fill=(238, 238, 232))
    rows = max(2, int((y1 - y0) / max(4, (x1 - x0) / 6)))
    step = (y1 - y0) / (rows + 1)
    for row in range(rows):
        ry = y0 + step * (row + 0.7)
        length = (x1 - x0) * rng.uniform(0.35, 0.85)
        draw.rectangle((x0 + 3, ry, x0 + 3 + length, ry + max(1, step * 0.35)), fill=ink)
    if rng.random() < 0.5 and x1 - x0 > 24:
        bx = x1 - (x1 - x0) * 0.4
        for k in range(int((x1 - bx) / 2)):
            if rng.random() < 0.6:
                draw.line((bx + 2 * k, y1 - step, bx + 2 * k, y1 - 2), fill=(20, 20, 20))


def _decorate(draw, rng, look: Look, box, colour) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    accent = _jitter(rng, look.accent, 6)
    if look.decor == "label":
        lx, ly = x0 + w * rng.uniform(0.1, 0.4), y0 + h * rng.uniform(0.1, 0.5)
        _label_patch(draw, rng, (lx, ly, lx + w * 0.45, ly + h * 0.35), (40, 40, 40))
    elif look.decor == "logo":
        r = min(w, h) * 0.22
        cx, cy = x0 + w * 0.5, y0 + h * 0.45
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent)
        draw.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=colour)
    elif look.decor == "stripe":
        draw.rectangle((x0, y0 + h * 0.55, x1, y0 + h * 0.72), fill=accent)
    elif look.decor == "print":
        draw.rectangle((x0 + w * 0.08, y0 + h * 0.12, x1 - w * 0.08, y0 + h * 0.6), fill=accent)
        draw.rectangle((x0 + w * 0.12, y0 + h * 0.7, x0 + w * 0.7, y0 + h * 0.78), fill=accent)
    elif look.decor == "text" and w > 30:
        font = _font(max(6, int(min(h * 0.2, w / max(3, len(look.word)) * 1.3))))
        draw.text((x0 + w * 0.08, y0 + h * 0.3), look.word, fill=accent, font=font)


def _outline(draw, box, colour, width) -> None:
    draw.rectangle(box, outline=_shade(colour, 0.5), width=width)


def _box(draw, rng, look, w, h, colour, edge) -> None:
    draw.rectangle((0, 0, w - 1, h - 1), fill=colour)
    # A lit top face and a shaded side face make a box read as a solid, even next to its twin.
    top = int(h * rng.uniform(0.08, 0.18))
    side = int(w * rng.uniform(0.0, 0.12))
    draw.polygon([(0, 0), (w - 1, 0), (w - 1 - side, top), (0, top)], fill=_shade(colour, 1.18))
    if side:
        draw.polygon(
            [(w - 1, 0), (w - 1, h - 1), (w - 1 - side, h - 1), (w - 1 - side, top)],
            fill=_shade(colour, 0.75),
        )
    _decorate(draw, rng, look, (0, top, w - side, h), colour)
    _outline(draw, (0, 0, w - 1, h - 1), colour, edge)


def _book(draw, rng, look, w, h, colour, edge) -> None:
    draw.rectangle((0, 0, w - 1, h - 1), fill=(226, 222, 206))  # page edges
    pages = max(2, int(min(w, h) * 0.05))
    draw.rectangle((0, 0, w - 1 - pages, h - 1 - pages), fill=colour)
    spine = max(3, int(w * 0.1))
    draw.rectangle((0, 0, spine, h - 1 - pages), fill=_shade(look.accent, 0.8))
    _decorate(draw, rng, replace(look, decor="text"), (spine, 0, w - pages, h * 0.5), colour)
    draw.rectangle((spine + w * 0.1, h * 0.72, w * 0.75, h * 0.78), fill=_shade(look.accent, 1.1))
    _outline(draw, (0, 0, w - 1, h - 1), colour, edge)


def _bag(draw, rng, look, w, h, colour, edge) -> None:
    # A pillow-shaped outline with a wobbly edge: film wrapped around soft contents.
    angles = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    radius = 1 + rng.normal(0, 0.03, len(angles))
    cos, sin = np.cos(angles), np.sin(angles)
    xs = w / 2 + (w / 2 - 1) * np.sign(cos) * np.abs(cos) ** 0.45 * np.minimum(radius, 1)
    ys = h / 2 + (h / 2 - 1) * np.sign(sin) * np.abs(sin) ** 0.45 * np.minimum(radius, 1)
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    draw.polygon(points, fill=colour, outline=_shade(colour, 0.5), width=edge)
    seal = max(2, int(h * 0.07))
    draw.rectangle((w * 0.06, h * 0.03, w * 0.94, h * 0.03 + seal), fill=_shade(colour, 1.2))
    _decorate(draw, rng, look, (w * 0.1, h * 0.15, w * 0.9, h * 0.9), colour)
    gloss = tuple(int(c * 0.6 + 250 * 0.4) for c in colour)
    for _ in range(int(rng.integers(1, 4))):  # glossy film highlights
        x = rng.uniform(0.15, 0.85) * w
        tilt = w * rng.uniform(-0.08, 0.08)
        draw.line((x, h * 0.12, x + tilt, h * 0.88), fill=gloss, width=max(1, w // 60))


def _bottle(draw, rng, look, w, h, colour, edge) -> None:
    # Drawn standing (h > w); lying bottles are rotated afterwards.
    shoulder = h * 0.24
    draw.rounded_rectangle((0, shoulder, w - 1, h - 1), radius=w * 0.25, fill=colour)
    draw.ellipse((0, shoulder - w * 0.3, w - 1, shoulder + w * 0.3), fill=colour)
    draw.rectangle((w * 0.3, h * 0.07, w * 0.7, shoulder), fill=colour)
    draw.rectangle((w * 0.26, 0, w * 0.74, h * 0.09), fill=look.accent)
    draw.rectangle((0, h * 0.45, w - 1, h * 0.8), fill=_shade(look.accent, 1.1))
    _decorate(draw, rng, look, (w * 0.08, h * 0.47, w * 0.92, h * 0.78), look.accent)
    draw.rectangle((w * 0.15, shoulder, w * 0.25, h * 0.95), fill=_shade(colour, 1.3))
    draw.rectangle((w * 0.82, shoulder, w * 0.95, h * 0.95), fill=_shade(colour, 0.7))
    dark = _shade(colour, 0.5)
    draw.rounded_rectangle((0, shoulder, w - 1, h - 1), radius=w * 0.25, outline=dark, width=edge)


def _can(draw, rng, look, w, h, colour, edge) -> None:
    rim = max(4, int(w * 0.3))
    draw.rectangle((0, rim // 2, w - 1, h - 1 - rim // 2), fill=colour)
    draw.ellipse(
        (0, h - 1 - rim, w - 1, h - 1), fill=colour, outline=_shade(colour, 0.5), width=edge
    )
    draw.rectangle((edge, rim // 2, w - 1 - edge, h - 1 - rim // 2), fill=colour)
    for x in (0, w - edge):  # the silhouette's sides
        draw.rectangle((x, rim // 2, x + edge - 1, h - 1 - rim // 2), fill=_shade(colour, 0.5))
    draw.rectangle((0, h * 0.35, w - 1, h * 0.65), fill=look.accent)
    draw.rectangle((0, rim // 2, w * 0.12, h - 1 - rim // 2), fill=_shade(colour, 0.7))
    draw.rectangle((w * 0.3, rim // 2, w * 0.4, h - 1 - rim // 2), fill=_shade(colour, 1.3))
    draw.ellipse(
        (0, 0, w - 1, rim), fill=_shade(colour, 1.25), outline=_shade(colour, 0.5), width=edge
    )


def _blister(draw, rng, look, w, h, colour, edge) -> None:
    card = _shade(look.accent, 1.0)
    draw.rounded_rectangle(
        (0, 0, w - 1, h - 1),
        radius=min(w, h) * 0.06,
        fill=card,
        outline=_shade(card, 0.5),
        width=edge,
    )
    hole = min(w, h) * 0.06
    draw.ellipse(
        (w / 2 - hole * 2, h * 0.05, w / 2 + hole * 2, h * 0.05 + hole * 1.5), fill=(25, 25, 25)
    )
    bubble = (w * 0.15, h * 0.22, w * 0.85, h * 0.9)
    draw.rounded_rectangle(
        bubble,
        radius=min(w, h) * 0.1,
        fill=_shade(colour, 1.1),
        outline=(235, 235, 240),
        width=max(1, min(w, h) // 30),
    )
    draw.rectangle((w * 0.3, h * 0.35, w * 0.7, h * 0.78), fill=colour)
    draw.line((w * 0.2, h * 0.3, w * 0.3, h * 0.85), fill=(250, 250, 250), width=max(1, w // 30))


def _soft(draw, rng, look, w, h, colour, edge) -> None:
    draw.rounded_rectangle(
        (0, 0, w - 1, h - 1),
        radius=min(w, h) * 0.25,
        fill=colour,
        outline=_shade(colour, 0.55),
        width=edge,
    )
    for fold in (0.36, 0.68):
        draw.line(
            (w * 0.08, h * fold, w * 0.92, h * fold),
            fill=_shade(colour, 0.72),
            width=max(1, h // 40),
        )
    draw.line(
        (w * 0.1, h * 0.38, w * 0.9, h * 0.38), fill=_shade(colour, 1.2), width=max(1, h // 60)
    )


_DRAWERS = {
    "box": _box,
    "book": _book,
    "bag": _bag,
    "bottle": _bottle,
    "can": _can,
    "blister": _blister,
    "soft": _soft,
}


def item_sprite(
    rng: np.random.Generator, look: Look, size: tuple[int, int], pools: Pools, *, edge: int
) -> Image.Image:
    """One unit of a product, upright, as RGBA (transparent outside the item).

    ``edge`` is the outline width: it scales with the photo, not the item, so that twins side
    by side stay apart after the photo is shrunk to a network's input size.
    """
    w, h = max(6, size[0]), max(6, size[1])
    edge = max(1, min(edge, min(w, h) // 8))
    sprite = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    # Units of one sku share shape and colour family, each a little lighter or darker.
    colour = _jitter(rng, _shade(look.colour, rng.uniform(0.85, 1.15)), 6)
    _DRAWERS[look.kind](ImageDraw.Draw(sprite), rng, look, w, h, colour, edge)
    alpha = sprite.getchannel("A").point(lambda a: 255 if a else 0)
    textured = ImageChops.multiply(
        sprite.convert("RGB"), _crop(rng, pools.textures[look.texture], (w, h))
    )
    if look.wrapped:
        textured = ImageChops.screen(textured, _crop(rng, pools.film, (w, h)))
    textured.putalpha(alpha)
    return textured
