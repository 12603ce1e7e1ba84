"""Defects injected into a bin: broken or wrong metadata, a withheld image, a mismatched record;
and faults of the camera that took a whole batch (blurred, resized photos)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from bincount.synth.metadata import encode_metadata, sku_document
from bincount.synth.products import Product

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
    rng: np.random.Generator,
    document: dict,
    *,
    catalogue: Sequence[Product],
    offset: int | None = None,
) -> dict:
    """A record that still adds up (sku quantities sum to ``EXPECTED_QUANTITY``) but counts
    another number of items than the photo shows: units missing from the record, or units
    (of a sku already there, or of one that is not) recorded but not in the bin.

    ``offset`` (default: drawn by :func:`mismatch_offset`) is how many units the record gains
    (or, negative, loses). With no ``catalogue`` the units gained are of a sku already there,
    so a real record can be changed without inventing a product."""
    skus = {sku: dict(entry) for sku, entry in document["BIN_FCSKU_DATA"].items()}
    if offset is None:
        offset = mismatch_offset(rng, document["EXPECTED_QUANTITY"])
    if -offset > sum(entry["quantity"] for entry in skus.values()):
        raise ValueError(
            f"Expected an offset the record's {document['EXPECTED_QUANTITY']} items can lose, "
            f"but got {offset}"
        )
    if offset > 0:
        if not catalogue and not skus:
            raise ValueError("Expected a catalogue to add units to an empty record, but got none")
        if not skus or (catalogue and rng.random() < 0.3):
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


# -- camera faults: every photo of a batch taken by a camera that went wrong --------------------
CAMERA_FAULTS = {
    # kind: (what strength means, its valid range)
    "blur": ("the Gaussian blur radius in pixels of the original (a lens out of focus)", 0.5, 20.0),
    "resize": ("the new resolution over the old (another camera or setting)", 0.2, 4.0),
}


@dataclass(frozen=True)
class CameraFault:
    """A fault of the camera: ``kind`` one of :data:`CAMERA_FAULTS` at ``strength`` (a darker
    lamp is ``exposure``, applied while the photo is rendered)."""

    kind: str
    strength: float

    def __post_init__(self) -> None:
        if self.kind not in CAMERA_FAULTS:
            raise ValueError(
                f"Expected a camera fault in {sorted(CAMERA_FAULTS)}, but got {self.kind!r}"
            )
        _, low, high = CAMERA_FAULTS[self.kind]
        if not low <= self.strength <= high:
            raise ValueError(
                f"Expected a {self.kind} strength in [{low:g}, {high:g}], but got {self.strength!r}"
            )

    @classmethod
    def parse(cls, text: str) -> CameraFault:
        """``"blur:2.5"`` → CameraFault("blur", 2.5)."""
        kind, _, strength = text.partition(":")
        try:
            return cls(kind, float(strength))
        except ValueError as error:
            raise ValueError(
                f"Expected a camera fault as KIND:STRENGTH, but got {text!r}: {error}"
            ) from None

    def apply(self, jpeg: bytes) -> bytes:
        """The photo as the faulty camera takes it, re-encoded as a JPEG of quality 92."""
        with Image.open(io.BytesIO(jpeg)) as opened:
            image = opened.convert("RGB")
        if self.kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(self.strength))
        else:
            width, height = image.size
            size = (max(1, round(width * self.strength)), max(1, round(height * self.strength)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()
