"""A synthetic ABID bucket: bin photos and metadata in the real bucket's layout and JSON shape.

``synthesize`` writes ``bin-images/<id>.jpg`` and ``metadata/<id>.json`` into any
:class:`~bincount.storage.Location`. Counts follow the real ABID label distribution (embedded in
``resources/label_distribution.json``), truncated to ``0..max_count`` (by default 0..50, which
holds 99.9% of real bins; a third of them hold more than 5 items). Every bin is a pure function
of ``(seed, ordinal, max_count)``: its RNG streams derive from those alone, so the bytes do not
depend on how many worker processes render them, and an appended batch continues the ordinal
sequence instead of repeating it.

The pictures imitate ABID photos (a yellow fabric pod, elastic bands across the front, dim and
uneven light, sensor noise, JPEG) while keeping the count recoverable: no item is more than
:data:`MAX_HIDDEN` hidden by the items above it or by the bands.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

import numpy as np
import pyarrow as pa
from PIL import Image, ImageChops, ImageDraw, ImageFont

from bincount.progress import Progress
from bincount.storage import Location

IMAGE_PREFIX = "bin-images"
METADATA_PREFIX = "metadata"

MAX_COUNT_LIMIT = 50  # beyond this the items get too small to be told apart at 128 px
logger = logging.getLogger(__name__)

MAX_BINS = 100_000  # the id scheme keeps five-digit ids below 100000 up to here
MAX_HIDDEN = 0.38  # the share of an item that items above it and the bands may hide

# Image sizes of the originals: widths 317-852, heights 234-1087, aspect ratios in clusters.
MIN_WIDTH, MAX_WIDTH = 320, 860
MIN_HEIGHT, MAX_HEIGHT = 234, 1100
_ASPECTS = ((0.72, 0.06), (1.04, 0.04), (1.40, 0.06), (1.66, 0.05))  # (mean, sd) of width/height
_ASPECT_WEIGHTS = (0.2, 0.25, 0.35, 0.2)

DEFECT_KINDS = (
    "label_noise",  # EXPECTED_QUANTITY differs from the sum of the sku quantities
    "record_mismatch",  # a self-consistent record, but the photo shows another count
    "truncated_json",  # the metadata object is cut short
    "missing_expected_quantity",
    "string_expected_quantity",  # EXPECTED_QUANTITY is "3" instead of 3
    "missing_image",  # metadata written, image not
)

# How far a mismatched record is from the photo: half the time by one or two units (a missed
# scan), otherwise by 3..8 (a whole sku line miscounted or put in the wrong bin).
_SMALL_MISMATCH = (1, 2)
_LARGE_MISMATCH = (3, 8)

# Independent RNG streams per bin: changing defect_rate must not change a clean bin's pixels.
_COUNT, _CONTENT, _SCENE, _DEFECT, _MISMATCH = range(5)
_CATALOGUE_STREAM = 1_000_003
_POOL_STREAM = 1_000_033
_CATALOGUE_SIZE = 1500


# -- public API --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthSummary:
    """What one ``synthesize`` call wrote."""

    dest: str
    bins: int
    ids: tuple[str, ...]
    label_histogram: dict[int, int]  # true item count (what the image shows) -> bins
    defects: dict[str, str]  # bin id -> one of DEFECT_KINDS
    seconds: float
    truth: str | None = None  # where the truth table of these bins was written

    @property
    def first_id(self) -> str | None:
        return self.ids[0] if self.ids else None

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None


def synthesize(
    dest: Location,
    *,
    bins: int,
    seed: int,
    max_count: int = MAX_COUNT_LIMIT,
    append: bool = False,
    defect_rate: float = 0.0,
    mismatch_rate: float = 0.0,
    truth: Location | None = None,
    workers: int | None = None,
    exposure: float = 1.0,
) -> SynthSummary:
    """Write ``bins`` synthetic bins (image + metadata) into ``dest`` and summarise them.

    ``defect_rate`` injects every kind of :data:`DEFECT_KINDS`; ``mismatch_rate`` adds, among
    the other bins, records that disagree with their photo (``record_mismatch``). ``truth``,
    a place outside the bucket, receives :func:`truth_table` of the bins written, so quality
    can be measured against what the photos really show while no flow can read it.
    ``exposure`` below 1 darkens every photo (a camera with less light: a drift to detect).
    """
    _validate(bins=bins, seed=seed, max_count=max_count, defect_rate=defect_rate, workers=workers)
    if not 0.0 <= mismatch_rate <= 1.0:
        raise ValueError(f"Expected mismatch_rate in [0, 1], but got {mismatch_rate!r}")
    if not 0.0 < exposure <= 4.0:
        raise ValueError(f"Expected exposure in (0, 4], but got {exposure!r}")
    if truth is not None and truth.uri().startswith(dest.uri() + "/"):
        raise ValueError(
            f"Expected the truth outside the bucket, but got {truth.uri()} inside {dest.uri()}"
        )
    started = time.perf_counter()
    existing = existing_ids(dest)
    if existing and not append:
        raise ValueError(
            f"Expected an empty destination, but {dest.uri()} already holds {len(existing)} bins"
            " under metadata/ or bin-images/; use append=True to add new bins"
        )
    plan = plan_ids(existing, bins=bins)
    job = _Job(
        seed=seed,
        max_count=max_count,
        defect_rate=defect_rate,
        mismatch_rate=mismatch_rate,
        exposure=exposure,
    )
    records = _run(dest, job, plan, workers=workers or os.cpu_count() or 1)
    truth_uri = None
    if truth is not None and records:
        truth_key = f"part-{seed}-{records[0].ordinal:06d}.parquet"
        truth.write_parquet(truth_key, truth_table(records, seed=seed))
        truth_uri = truth.uri(truth_key)
    return SynthSummary(
        dest=dest.uri(),
        bins=len(records),
        ids=tuple(record.bin_id for record in records),
        label_histogram=dict(sorted(Counter(record.count for record in records).items())),
        defects={r.bin_id: r.defect for r in records if r.defect is not None},
        seconds=round(time.perf_counter() - started, 3),
        truth=truth_uri,
    )


def default_truth(dest: str) -> str | None:
    """Where the truth of a local bucket goes by default: a folder beside it (``B.truth``).
    None for an object store, whose bucket has no "beside": name a place explicitly there."""
    if "://" in dest and not dest.startswith("file://"):
        return None
    return dest.rstrip("/") + ".truth"


def truth_table(records: Sequence[BinRecord], *, seed: int) -> pa.Table:
    """What each bin's photo really shows beside what its record says, one row per bin."""
    return pa.table(
        {
            "image_id": pa.array([r.bin_id for r in records], pa.string()),
            "true_count": pa.array([r.count for r in records], pa.int32()),
            "recorded_count": pa.array([r.recorded for r in records], pa.int32()),
            "defect": pa.array([r.defect for r in records], pa.string()),
            "has_image": pa.array([r.defect != "missing_image" for r in records], pa.bool_()),
            "seed": pa.array([seed] * len(records), pa.int64()),
            "ordinal": pa.array([r.ordinal for r in records], pa.int64()),
        }
    )


def _validate(
    *, bins: int, seed: int, max_count: int, defect_rate: float, workers: int | None
) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"Expected bins to be a positive integer, but got {bins!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative integer, but got {seed!r}")
    if not isinstance(max_count, int) or not 0 <= max_count <= MAX_COUNT_LIMIT:
        raise ValueError(
            f"Expected max_count to be an integer in 0..{MAX_COUNT_LIMIT}, but got {max_count!r}"
        )
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"Expected defect_rate in [0, 1], but got {defect_rate!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"Expected workers to be a positive integer or None, but got {workers!r}")


# -- running -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    seed: int
    max_count: int
    defect_rate: float
    mismatch_rate: float = 0.0
    exposure: float = 1.0


@dataclass(frozen=True)
class BinRecord:
    """One written bin: its id, the count its image shows, the count its record says (None when
    the record has no integer count), and the defect injected, if any."""

    bin_id: str
    count: int
    defect: str | None
    recorded: int | None = None
    ordinal: int = 0


def _run(
    dest: Location, job: _Job, plan: list[tuple[int, str]], *, workers: int
) -> list[BinRecord]:
    batch = max(8, min(100, math.ceil(len(plan) / (workers * 4))))
    batches = [plan[start : start + batch] for start in range(0, len(plan), batch)]
    progress = Progress(logger, f"synthesized bins in {dest.uri()}", len(plan))
    records: list[BinRecord] = []
    if workers == 1 or len(batches) == 1:
        for part in batches:
            records += _write_batch(dest, job, part)
            progress.advance(len(part))
        return records
    # spawn, not fork: the caller may be a threaded process (a Prefect worker, an event loop).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=context) as pool:
        for part in pool.map(_write_batch, [dest] * len(batches), [job] * len(batches), batches):
            records += part
            progress.advance(len(part))
    return records


def _write_batch(dest: Location, job: _Job, part: Sequence[tuple[int, str]]) -> list[BinRecord]:
    records = []
    for ordinal, bin_id in part:
        record, image, metadata = make_bin(
            seed=job.seed,
            ordinal=ordinal,
            bin_id=bin_id,
            max_count=job.max_count,
            defect_rate=job.defect_rate,
            mismatch_rate=job.mismatch_rate,
            exposure=job.exposure,
        )
        # Image first: a reader that sees the metadata object finds its image already there.
        if image is not None:
            dest.write_bytes(f"{IMAGE_PREFIX}/{bin_id}.jpg", image)
        dest.write_bytes(f"{METADATA_PREFIX}/{bin_id}.json", metadata)
        records.append(record)
    return records


def make_bin(
    *,
    seed: int,
    ordinal: int,
    bin_id: str,
    max_count: int,
    defect_rate: float = 0.0,
    mismatch_rate: float = 0.0,
    exposure: float = 1.0,
) -> tuple[BinRecord, bytes | None, bytes]:
    """One bin's record, JPEG bytes (None when the image is withheld) and metadata bytes."""
    content_rng, scene_rng, defect_rng, mismatch_rng = (
        np.random.default_rng(s) for s in _seeds(seed, ordinal)[_CONTENT:]
    )
    count = bin_count(seed=seed, ordinal=ordinal, max_count=max_count)
    products = catalogue(seed)
    lines = pick_lines(content_rng, count=count, catalogue=products)
    document = metadata_document(lines, bin_id=bin_id)
    image = render_bin(scene_rng, lines, pools=texture_pools(seed), exposure=exposure).jpeg
    defect, rng = None, defect_rng
    if defect_rate > 0 and defect_rng.random() < defect_rate:
        defect = DEFECT_KINDS[int(defect_rng.integers(len(DEFECT_KINDS)))]
    elif mismatch_rate > 0 and mismatch_rng.random() < mismatch_rate:
        defect, rng = "record_mismatch", mismatch_rng
    metadata = encode_metadata(document)
    if defect is not None:
        document, metadata, image = inject_defect(rng, defect, document, image, catalogue=products)
    recorded = None if defect == "truncated_json" else document.get("EXPECTED_QUANTITY")
    record = BinRecord(
        bin_id=bin_id,
        count=count,
        defect=defect,
        recorded=recorded if type(recorded) is int else None,
        ordinal=ordinal,
    )
    return record, image, metadata


def _seeds(seed: int, ordinal: int) -> list[np.random.SeedSequence]:
    """Seeds of the bin's count, content, scene, defect and mismatch streams, independent of one
    another (a spawned child depends on its index alone, so adding a stream moves no other)."""
    return np.random.SeedSequence([seed, ordinal]).spawn(5)


# -- labels ------------------------------------------------------------------------------------
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


# -- ids ---------------------------------------------------------------------------------------
# Ordinals run in blocks of 20: slot 2 is an unpadded id ("121"), slots 6 and 13 six-digit ids
# ("100003"), the other 17 five-digit zero-padded ids ("00015"). Small buckets thus hold every
# kind of id the real bucket has, and the map inverts so an append can continue after it.
_BLOCK = 20
_UNPADDED_SLOT = 2
_SIX_DIGIT_SLOTS = (6, 13)
_FIVE_DIGIT_SLOTS = tuple(
    s for s in range(_BLOCK) if s != _UNPADDED_SLOT and s not in _SIX_DIGIT_SLOTS
)
_UNPADDED_BASE = 121  # the real unpadded objects start at 121.jpg


def bin_id(ordinal: int) -> str:
    """The file-name id of the ``ordinal``-th synthetic bin (0-based)."""
    if not 0 <= ordinal < MAX_BINS:
        raise ValueError(f"Expected a bin ordinal in 0..{MAX_BINS - 1}, but got {ordinal}")
    block, slot = divmod(ordinal, _BLOCK)
    if slot == _UNPADDED_SLOT:
        return str(_UNPADDED_BASE + block)
    if slot in _SIX_DIGIT_SLOTS:
        return str(100_000 + block * len(_SIX_DIGIT_SLOTS) + _SIX_DIGIT_SLOTS.index(slot))
    return f"{1 + block * len(_FIVE_DIGIT_SLOTS) + _FIVE_DIGIT_SLOTS.index(slot):05d}"


def ordinal_of(bin_id_: str) -> int | None:
    """The ordinal :func:`bin_id` maps to ``bin_id_``, or None for an id it never produces."""
    if not bin_id_.isdigit():
        return None
    number = int(bin_id_)
    if len(bin_id_) == 5:
        block, index = divmod(number - 1, len(_FIVE_DIGIT_SLOTS))
        ordinal = block * _BLOCK + _FIVE_DIGIT_SLOTS[index] if number >= 1 else -1
    elif len(bin_id_) == 6 and number >= 100_000:
        block, index = divmod(number - 100_000, len(_SIX_DIGIT_SLOTS))
        ordinal = block * _BLOCK + _SIX_DIGIT_SLOTS[index]
    elif len(bin_id_) < 5 and not bin_id_.startswith("0") and number >= _UNPADDED_BASE:
        ordinal = (number - _UNPADDED_BASE) * _BLOCK + _UNPADDED_SLOT
    else:
        return None
    return ordinal if 0 <= ordinal < MAX_BINS else None


def existing_ids(dest: Location) -> set[str]:
    """Ids that already have a metadata object or an image in ``dest``."""
    found: set[str] = set()
    for prefix, suffix in ((METADATA_PREFIX, ".json"), (IMAGE_PREFIX, ".jpg")):
        for key in dest.list(prefix).column("key").to_pylist():
            name = key.rsplit("/", 1)[-1]
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return found


def plan_ids(existing: set[str], *, bins: int) -> list[tuple[int, str]]:
    """(ordinal, id) for ``bins`` new bins after the last synthetic ordinal in ``existing``."""
    known = [o for o in map(ordinal_of, existing) if o is not None]
    ordinal = max(known) + 1 if known else 0
    plan: list[tuple[int, str]] = []
    while len(plan) < bins:
        if ordinal >= MAX_BINS:
            raise ValueError(
                f"Expected at most {MAX_BINS} synthetic bins in one bucket, but {bins} more after"
                f" {len(existing)} existing ones would pass that"
            )
        candidate = bin_id(ordinal)
        if candidate not in existing:  # a foreign object (e.g. a real one) keeps its id
            plan.append((ordinal, candidate))
        ordinal += 1
    return plan


# -- catalogue and metadata --------------------------------------------------------------------
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
_CM_TO_IN_ARTEFACT = 0.99999999898  # real dimensions read 10.49999998929 for 10.5
_KG_TO_LB_ARTEFACT = 0.9999999991613  # real weights read 2.4999999979035237 for 2.5


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


def _inches(value: float) -> float:
    return round(value, 1) * _CM_TO_IN_ARTEFACT


def _pounds(value: float) -> float:
    value = max(round(value, 2), 0.05)
    return value * _KG_TO_LB_ARTEFACT if int(value * 100) % 2 else value


def sku_document(product: Product, quantity: int) -> dict:
    """One BIN_FCSKU_DATA entry, shaped like the real ones."""
    entry: dict = {"asin": product.asin, "name": product.name, "quantity": quantity}
    if product.normalized:
        entry["normalizedName"] = product.name
    dims = product.dimensions
    for axis, index in (("length", 0), ("width", 1), ("height", 2)):
        entry[axis] = None if dims is None else {"unit": "IN", "value": _inches(dims[index])}
    entry["weight"] = (
        None if product.weight is None else {"unit": "pounds", "value": _pounds(product.weight)}
    )
    return entry


def metadata_document(lines: Sequence[tuple[Product, int]], *, bin_id: str) -> dict:
    """The metadata object of a bin; unpadded ids also name their image, as in ABID."""
    document: dict = {
        "BIN_FCSKU_DATA": {p.sku: sku_document(p, q) for p, q in lines},
        "EXPECTED_QUANTITY": sum(q for _, q in lines),
    }
    if len(bin_id) < 5:
        document["image_fname"] = f"{bin_id}.jpg"
    return document


def encode_metadata(document: dict) -> bytes:
    """Byte-for-byte the originals' format: sorted keys, 4-space indent, no final newline."""
    return json.dumps(document, indent=4, sort_keys=True).encode()


def inject_defect(
    rng: np.random.Generator,
    defect: str,
    document: dict,
    image: bytes | None,
    *,
    catalogue: Sequence[Product] = (),
) -> tuple[dict, bytes, bytes | None]:
    """The document, metadata bytes and image after injecting ``defect``."""
    document = dict(document)
    if defect == "label_noise":  # a miscount of a few units either way, never negative
        true = document["EXPECTED_QUANTITY"]
        wrong = [true + d for d in (-3, -2, -1, 1, 2, 3) if true + d >= 0]
        document["EXPECTED_QUANTITY"] = wrong[int(rng.integers(len(wrong)))]
    elif defect == "record_mismatch":
        document = mismatched_record(rng, document, catalogue=catalogue)
    elif defect == "missing_expected_quantity":
        del document["EXPECTED_QUANTITY"]
    elif defect == "string_expected_quantity":
        document["EXPECTED_QUANTITY"] = str(document["EXPECTED_QUANTITY"])
    if defect not in DEFECT_KINDS:
        raise ValueError(f"Expected a defect in {DEFECT_KINDS}, but got {defect!r}")
    metadata = encode_metadata(document)
    if defect == "truncated_json":
        metadata = metadata[: int(len(metadata) * rng.uniform(0.2, 0.9))]
    if defect == "missing_image":
        image = None
    return document, metadata, image


def mismatch_offset(rng: np.random.Generator, count: int) -> int:
    """How far a wrong record is from the photo's ``count``: never below zero items."""
    low, high = _SMALL_MISMATCH if rng.random() < 0.5 else _LARGE_MISMATCH
    size = int(rng.integers(low, high + 1))
    if size > count:  # cannot record fewer than none: the record holds more than the photo
        return size
    return size if rng.random() < 0.5 else -size


def mismatched_record(
    rng: np.random.Generator, document: dict, *, catalogue: Sequence[Product]
) -> dict:
    """A record that still adds up (sku quantities sum to ``EXPECTED_QUANTITY``) but counts
    another number of items than the photo shows: units missing from the record, or units
    (of a sku already there, or of one that is not) recorded but not in the bin."""
    skus = {sku: dict(entry) for sku, entry in document["BIN_FCSKU_DATA"].items()}
    offset = mismatch_offset(rng, document["EXPECTED_QUANTITY"])
    if offset > 0:
        if not skus or rng.random() < 0.3:
            product = catalogue[int(rng.integers(len(catalogue)))]
            entry = skus.get(product.sku) or sku_document(product, 0)
            skus[product.sku] = entry
        else:
            entry = skus[sorted(skus)[int(rng.integers(len(skus)))]]
        entry["quantity"] += offset
    for _ in range(-offset):  # take units away one at a time; a sku at zero leaves the record
        sku = sorted(skus)[int(rng.integers(len(skus)))]
        skus[sku]["quantity"] -= 1
        if skus[sku]["quantity"] == 0:
            del skus[sku]
    return {
        **document,
        "BIN_FCSKU_DATA": skus,
        "EXPECTED_QUANTITY": sum(e["quantity"] for e in skus.values()),
    }


# -- texture pools -----------------------------------------------------------------------------
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


# -- rendering ---------------------------------------------------------------------------------
def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like the originals' sizes and aspect ratios."""
    mean, sd = _ASPECTS[int(rng.choice(len(_ASPECTS), p=_ASPECT_WEIGHTS))]
    aspect = float(np.clip(rng.normal(mean, sd), 0.6, 1.85))
    low = max(MIN_WIDTH, MIN_HEIGHT * aspect)
    high = min(MAX_WIDTH, MAX_HEIGHT * aspect)
    width = int(low + (high - low) * rng.beta(1.6, 3.0))
    height = int(np.clip(round(width / aspect), MIN_HEIGHT, MAX_HEIGHT))
    return width, height


def _shade(colour: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> tuple[int, ...]:
    shifted = np.asarray(colour, float) + rng.normal(0, amount, len(colour))
    return tuple(int(c) for c in np.clip(shifted, 0, 255))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


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


def _crop(rng: np.random.Generator, tile: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A random window of ``tile`` of ``size`` (stretched when the tile is too small)."""
    w, h = size
    tw, th = tile.size
    if w > tw or h > th:
        scale = max(w / tw, h / th)
        return tile.resize((math.ceil(tw * scale), math.ceil(th * scale))).crop((0, 0, w, h))
    x, y = int(rng.integers(0, tw - w + 1)), int(rng.integers(0, th - h + 1))
    return tile.crop((x, y, x + w, y + h))


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


# ---- items
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
_SHADOW_LUT = [int(a * 0.65) for a in range(256)]


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


@dataclass
class _Placed:
    sprite: Image.Image
    cell: tuple[int, int]  # top-left grid cell
    size: tuple[int, int]  # footprint width and height in cells
    cells: int  # footprint cells
    visible: float  # footprint cells not covered by later units, those behind bands counted half


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
