"""A bin's metadata object, byte for byte in the originals' JSON shape and format."""

from __future__ import annotations

import json
from collections.abc import Sequence

from bincount.synth.products import Product

_CM_TO_IN_ARTEFACT = 0.99999999898  # real dimensions read 10.49999998929 for 10.5
_KG_TO_LB_ARTEFACT = 0.9999999991613  # real weights read 2.4999999979035237 for 2.5


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
