"""The products a seed's bins stock: names, asins, dimensions and how their units look."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from bincount.synth.streams import _CATALOGUE_STREAM
from bincount.synth.textures import _TEXTURE_MAKERS

_KINDS = ("box", "box", "box", "book", "bag", "bag", "bottle", "can", "blister", "soft")
# (length, width, height) ranges in inches and pounds per inch^3, by kind.
_DIMENSIONS = {
    "box": ((4, 14), (3, 10), (1, 8), 0.012),
    "book": ((7, 11), (5, 8.5), (0.4, 2), 0.025),
    "bag": ((6, 15), (4, 11), (0.5, 4), 0.008),
    "bottle": ((5, 11), (2, 4), (2, 4), 0.03),
    "can": ((3, 8), (3, 5), (3, 5), 0.03),
    "blister": ((5, 10), (3, 7), (0.4, 2), 0.006),
    "soft": ((7, 14), (5, 11), (1, 4), 0.007),
}
_BRANDS = (
    "Northwind", "Acme", "Bluebird", "Kestrel", "Harbor & Pine", "Lumina", "Greystone", "Vela",
    "Orchard Lane", "Brightline", "Copperfield", "Tidewater", "Summit", "Polaris", "Maple & Co",
    "Redwood", "Everfresh", "Ironclad", "Pebble", "Zephyr",
)  # fmt: skip
_PRODUCTS = {
    kind: tuple(names.split("|"))
    for kind, names in {
        "box": "Time Locking Container|Bluetooth Speaker|LED Desk Lamp|Ceramic Mug Set|Wall Clock|"
        "Water Filter Cartridge|Board Game|Hair Dryer|Kitchen Scale|Toy Train Park|Steam Mop|"
        "Electric Kettle|Phone Charger",
        "book": "The Quiet Harbor: A Novel|Field Guide to Garden Birds|Cooking for Two|"
        "Practical Statistics|The Long Winter (Paperback)|Atlas of Small Islands",
        "bag": "Cotton Crew Socks, 6 Pack|Microfiber Cleaning Cloths|Zip Hoodie|Dog Treats 16 oz|"
        "Bungee Truck Net|Rain Poncho|Trail Mix 2 lb",
        "bottle": "Shampoo 12 fl oz|Vitamin D3 Softgels, 120 Count|Stainless Steel Water Bottle|"
        "Olive Oil 500 ml|Hand Sanitizer",
        "can": "Tennis Balls, 3 Pack|Coffee Beans 12 oz|Protein Powder 2 lb|Paint Sample",
        "blister": "USB-C Cable 6 ft|AA Batteries (8 Pack)|Replacement Razor Blades|Earbuds|"
        "Quick Link Carabiner|Straight Scissors",
        "soft": "Fleece Blanket|Bath Towel|Knit Beanie|Yoga Mat Strap",
    }.items()
}
_VARIANTS = ("Black", "Blue", "White", "Large", "Medium", "2 Pack", "Red", "Clear Base")
# Packaging colours: cardboard, white, black and the common print colours.
_PALETTE = (
    (176, 138, 96), (196, 160, 112), (232, 230, 224), (240, 240, 236), (34, 34, 40),
    (46, 58, 112), (176, 40, 40), (220, 120, 40), (48, 118, 64), (222, 190, 64),
    (110, 160, 210), (110, 70, 140), (130, 130, 136), (214, 120, 150), (40, 130, 130),
    (90, 60, 40), (200, 210, 220),
)  # fmt: skip
_DECORS = ("label", "logo", "stripe", "print", "plain", "text")
_ALPHANUMERIC = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass(frozen=True)
class Look:
    """How every unit of one product is drawn, so that units of one sku look alike."""

    kind: str
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    decor: str
    texture: int
    aspect: float  # drawn width / height before rotation
    size: float  # relative footprint, from the product's dimensions
    lying: bool  # bottles and cans drawn on their side
    wrapped: bool  # in shrink wrap, which glints
    word: str


@dataclass(frozen=True)
class Product:
    sku: str
    asin: str
    name: str
    normalized: bool  # some real products lack normalizedName
    dimensions: tuple[float, float, float] | None  # length, width, height (IN)
    weight: float | None  # pounds; null on some real products
    look: Look


def _code(rng: np.random.Generator, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choice(_ALPHANUMERIC, length))


def _product(rng: np.random.Generator) -> Product:
    kind = str(rng.choice(_KINDS))
    (l_lo, l_hi), (w_lo, w_hi), (h_lo, h_hi), density = _DIMENSIONS[kind]
    length, width = rng.uniform(l_lo, l_hi), rng.uniform(w_lo, w_hi)
    height = rng.uniform(h_lo, h_hi)
    length, width = max(length, width), min(length, width)
    brand = str(rng.choice(_BRANDS))
    name = f"{brand} {rng.choice(_PRODUCTS[kind])}"
    if rng.random() < 0.6:
        name += f" ({rng.choice(_VARIANTS)})" if rng.random() < 0.5 else f" ({_model(rng)})"
    # Books carry an ISBN-10 as their asin; everything else a B0 asin.
    asin = "".join(map(str, rng.integers(0, 10, 10))) if kind == "book" else _code(rng, "B0", 8)
    # Some fulfilment-centre skus (FNSKUs) differ from the asin they stock.
    sku = _code(rng, "X00", 7) if rng.random() < 0.06 else asin
    palette = len(_PALETTE)
    colour, accent = (_PALETTE[int(i)] for i in rng.choice(palette, 2, replace=False))
    look = Look(
        kind=kind,
        colour=colour,
        accent=accent,
        decor=str(rng.choice(_DECORS)),
        texture=int(rng.integers(len(_TEXTURE_MAKERS))),
        aspect=float(np.clip(length / width * rng.uniform(0.85, 1.15), 1.0, 3.2)),
        size=float(math.sqrt(length * width)),
        lying=bool(rng.random() < 0.5),
        wrapped=bool(rng.random() < 0.3),
        word=brand.split()[0].upper(),
    )
    if rng.random() < 0.5:  # units stand portrait as often as they lie landscape
        look = replace(look, aspect=1 / look.aspect)
    # Rates of null dimensions, null weight and missing normalizedName in the real sample.
    dimensions = None if rng.random() < 0.0015 else (length, width, height)
    weight = None if rng.random() < 0.017 else length * width * height * density
    return Product(
        sku=sku,
        asin=asin,
        name=name,
        normalized=rng.random() >= 0.017,
        dimensions=dimensions,
        weight=weight,
        look=look,
    )


def _model(rng: np.random.Generator) -> str:
    return f"{rng.integers(10, 99)}-{rng.integers(100000, 999999)}{rng.choice(list('ABJKX'))}"


_CATALOGUE_SIZE = 1500


@lru_cache(maxsize=4)
def catalogue(seed: int) -> tuple[Product, ...]:
    """The products a seed's bins stock; the same products recur across bins, as in ABID."""
    rng = np.random.default_rng([seed, _CATALOGUE_STREAM])
    products: dict[str, Product] = {}
    while len(products) < _CATALOGUE_SIZE:
        product = _product(rng)
        products.setdefault(product.sku, product)
    return tuple(products.values())


_SKUS_PER_BIN = (0.13, 0.35, 0.36, 0.16)  # 1..4 skus, from the real sample's bins


def pick_lines(
    rng: np.random.Generator, *, count: int, catalogue: Sequence[Product]
) -> list[tuple[Product, int]]:
    """(product, quantity) lines whose quantities sum to ``count``."""
    if count == 0:
        return []
    skus = min(count, 1 + int(rng.choice(len(_SKUS_PER_BIN), p=_SKUS_PER_BIN)))
    chosen = rng.choice(len(catalogue), skus, replace=False)
    # Real bins are lopsided (14 scissors and one container): a skewed split of the rest.
    extra = rng.multinomial(count - skus, rng.dirichlet(np.full(skus, 0.7)))
    return [(catalogue[int(i)], 1 + int(e)) for i, e in zip(chosen, extra, strict=True)]
