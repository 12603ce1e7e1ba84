"""Small real buckets for tests: ABID-shaped metadata JSON and real JPEGs."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

from PIL import Image


def metadata_document(quantities: dict[str, int], *, expected: object = None, **extra) -> dict:
    """An ABID metadata document with one sku per entry of ``quantities``."""
    skus = {
        sku: {
            "asin": sku if not sku.startswith("X") else "B00" + sku[1:],
            "height": {"unit": "IN", "value": 2.5},
            "length": {"unit": "IN", "value": 4.0},
            "name": f"Product {sku}",
            "normalizedName": f"product {sku}",
            "quantity": quantity,
            "weight": {"unit": "pounds", "value": 0.75},
            "width": {"unit": "IN", "value": 3.0},
        }
        for sku, quantity in quantities.items()
    }
    document = {
        "BIN_FCSKU_DATA": skus,
        "EXPECTED_QUANTITY": sum(quantities.values()) if expected is None else expected,
    }
    document.update(extra)
    return document


def jpeg_bytes(width: int = 64, height: int = 48, shade: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, shade // 2, shade // 3)).save(buffer, "JPEG")
    return buffer.getvalue()


def flat_jpeg(width: int, height: int) -> bytes:
    """A valid baseline greyscale JPEG of any size, every 8x8 block flat: 4 bits a block, so
    20000 x 12000 pixels take 1.9 MB, written without ever holding the pixels."""
    blocks = -(-width // 8) * -(-height // 8)

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    one_code = bytes([0, 1] + [0] * 14)  # a single Huffman code, "00", for symbol 0
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xDB, bytes([0]) + bytes([1] * 64)),  # quantisation table 0
            segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])),
            segment(0xC4, bytes([0x00]) + one_code + bytes([0])),  # DC: difference 0
            segment(0xC4, bytes([0x10]) + one_code + bytes([0])),  # AC: end of block
            segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])),
            bytes(-(-blocks // 2)),  # "00" "00" a block: two blocks a zero byte
            b"\xff\xd9",
        ]
    )


def flat_png(width: int, height: int) -> bytes:
    """A valid black greyscale PNG of any size, compressed a row at a time (never held)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_bin(
    root: Path,
    image_id: str,
    quantities: dict[str, int],
    *,
    expected: object = None,
    image: bool = True,
    raw: bytes | None = None,
) -> None:
    """Write ``metadata/<id>.json`` (or ``raw`` bytes) and, unless told not to, its image."""
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "bin-images").mkdir(parents=True, exist_ok=True)
    payload = raw
    if payload is None:
        payload = json.dumps(metadata_document(quantities, expected=expected), indent=4).encode()
    (root / "metadata" / f"{image_id}.json").write_bytes(payload)
    if image:
        (root / "bin-images" / f"{image_id}.jpg").write_bytes(jpeg_bytes())


def write_clean_bucket(root: Path, count: int, *, start: int = 1) -> list[str]:
    """``count`` well-formed bins with ids ``%05d`` from ``start``; returns the ids."""
    ids = [f"{i:05d}" for i in range(start, start + count)]
    for number, image_id in enumerate(ids):
        quantities = {f"B{number:08d}": number % 4, f"X{number:08d}": number % 3}
        write_bin(root, image_id, quantities)
    return ids


def nested(depth: int) -> list:
    """A list nested ``depth`` levels deep: ``[[[0]]]`` for 3."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


# Every kind of malformed metadata object, with the reason code ingest must give it.
MALFORMED_OBJECTS: dict[str, tuple[bytes, str]] = {
    "90001": (b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUAN', "bad_json"),
    "90002": (b"\xff\xfe not utf-8", "bad_encoding"),
    "90003": (b"[1, 2, 3]", "wrong_type"),
    "90004": (json.dumps({"BIN_FCSKU_DATA": {}}).encode(), "missing_key"),
    "90005": (json.dumps({"EXPECTED_QUANTITY": 1}).encode(), "missing_key"),
    "90006": (json.dumps({"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": "3"}).encode(), "wrong_type"),
    "90007": (json.dumps({"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 2.5}).encode(), "wrong_type"),
    "90008": (json.dumps({"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": True}).encode(), "wrong_type"),
    "90009": (json.dumps({"BIN_FCSKU_DATA": [], "EXPECTED_QUANTITY": 0}).encode(), "wrong_type"),
    "90010": (
        json.dumps({"BIN_FCSKU_DATA": {"A": {"asin": "A"}}, "EXPECTED_QUANTITY": 1}).encode(),
        "missing_key",
    ),
    "90011": (
        json.dumps(
            {"BIN_FCSKU_DATA": {"A": {"asin": "A", "quantity": "1"}}, "EXPECTED_QUANTITY": 1}
        ).encode(),
        "wrong_type",
    ),
    "90012": (
        json.dumps(
            {"BIN_FCSKU_DATA": {"A": {"asin": "A", "quantity": -1}}, "EXPECTED_QUANTITY": 1}
        ).encode(),
        "bad_value",
    ),
    "90013": (
        json.dumps(
            {
                "BIN_FCSKU_DATA": {
                    "A": {"asin": "A", "quantity": 1, "weight": {"unit": "stone", "value": 1}}
                },
                "EXPECTED_QUANTITY": 1,
            }
        ).encode(),
        "bad_value",
    ),
    "90014": (b"", "bad_json"),
    "90015": (b"null", "wrong_type"),
    # Hostile objects: each used to stop a whole run.
    "90016": (b"[" * 200_000 + b"]" * 200_000, "too_deep"),
    "90017": (
        b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": ' + b"1" + b"0" * 30 + b"}",
        "out_of_range",
    ),
    "90018": (json.dumps(metadata_document({"B1": 10**30}, expected=1)).encode(), "out_of_range"),
    "90019": (json.dumps(metadata_document({}, expected=2**40)).encode(), "out_of_range"),
    "90020": (
        json.dumps(metadata_document({"B1": 2**62, "B2": 2**62}, expected=1)).encode(),
        "out_of_range",
    ),
    "90021": (b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": ' + b"7" * 5000 + b"}", "out_of_range"),
    "90022": (
        json.dumps(
            {
                "BIN_FCSKU_DATA": {
                    "A": {"asin": "A", "quantity": 1, "height": {"unit": "IN", "value": 10**400}}
                },
                "EXPECTED_QUANTITY": 1,
            }
        ).encode(),
        "out_of_range",
    ),
    "90023": (json.dumps(metadata_document({"\ud800": 1})).encode(), "bad_encoding"),
    "90024": (json.dumps(metadata_document({"B1": 1}, note=nested(40))).encode(), "too_deep"),
    "90025": (json.dumps(metadata_document({"B1": 1}, note="x" * (1 << 20))).encode(), "too_large"),
    "90026": (b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": NaN}', "wrong_type"),
    "90027": (b"\xef\xbb\xbf" + json.dumps(metadata_document({"B1": 1})).encode(), "bad_json"),
    "90028": ('{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 1}'.encode("utf-16"), "bad_encoding"),
}


def write_malformed(root: Path) -> dict[str, str]:
    """Write every malformed object (with images); returns ``{image_id: reason_code}``."""
    for image_id, (payload, _) in MALFORMED_OBJECTS.items():
        write_bin(root, image_id, {}, raw=payload)
    return {image_id: code for image_id, (_, code) in MALFORMED_OBJECTS.items()}


def evaluation_report(
    version: str = "m1", *, accuracy: float = 0.4, rmse: float = 1.2, set_id: str = "set1"
):
    """A small evaluation report as ``evaluate_model`` writes one: an open-top model of counts
    0, 1 and "more than 1", six bins, none "more than 1" (its per-class figures NaN)."""
    from bincount.model.records import EvaluationReport

    metrics = {
        "n": 6,
        "accuracy": accuracy,
        "rmse": rmse,
        "per_class_accuracy": [0.5, 0.25, math.nan],
        "per_class_rmse": [0.5, 1.0, math.nan],
        "per_class_n": [2, 4, 0],
        "confusion": [[1, 1, 0], [2, 1, 1], [0, 0, 0]],
    }
    return EvaluationReport.model_validate(
        {
            "model_version": version,
            "model": {
                "arch": "a",
                "loss": "ce",
                "max_count": 1,
                "image_size": 32,
                "open_top": True,
            },
            "evaluation_set": {
                "id": set_id,
                "manifest_version": "v1",
                "split": "test",
                "size": 6,
                "source": "s3://b/",
                "policy": "open:1",
                "max_count": 1,
                "open_top": True,
                "labels": {"0": 2, "1": 4},
                "is_abid_benchmark": False,
            },
            "images_left_out": 0,
            "metrics": metrics,
            "majority_baseline": {**metrics, "accuracy": 0.66},
            "abid_baseline": {
                "accuracy": 0.55,
                "rmse": 0.9,
                "per_class_accuracy": [0.9],
                "per_class_rmse": [0.3],
            },
            "predictions_uri": f"file:///out/models/{version}/evaluations/{set_id}.parquet",
        }
    )
