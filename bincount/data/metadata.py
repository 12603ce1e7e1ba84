"""Parse one ABID metadata object into a bin row and its item rows, or say why it is malformed.

The object shape (``metadata/<id>.json``)::

    {"BIN_FCSKU_DATA": {<sku>: {"asin", "name", "normalizedName", "quantity",
                                "height"/"length"/"width": {"unit": "IN", "value"},
                                "weight": {"unit": "pounds", "value"}}},
     "EXPECTED_QUANTITY": <int>}

plus ``image_fname`` on the few unpadded ids. Ids are file-name strings: ``01057`` and ``1057``
are different bins, so an id is never converted to a number.

Every way an object can be bad ends in :class:`MalformedMetadata` with a stable code, within
stated limits: the object's size and nesting depth (:class:`MetadataLimits`) and the integer
range of the table columns each count lands in (:func:`count_ranges`).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from bincount.core.contracts import table_contract
from bincount.core.limits import MetadataLimits

METADATA_PREFIX = "metadata"
IMAGE_PREFIX = "bin-images"

# Conversion factors to the units the tables use (inches, pounds).
_LENGTH_TO_INCHES = {"IN": 1.0, "INCHES": 1.0, "CM": 1 / 2.54, "MM": 1 / 25.4, "M": 100 / 2.54}
_WEIGHT_TO_POUNDS = {
    "POUNDS": 1.0,
    "LB": 1.0,
    "LBS": 1.0,
    "KILOGRAMS": 2.2046226218,
    "KG": 2.2046226218,
    "GRAMS": 0.0022046226218,
    "G": 0.0022046226218,
    "OUNCES": 1 / 16,
    "OZ": 1 / 16,
}


class MalformedMetadata(ValueError):
    """A metadata object that cannot become a bin row; ``code`` is a stable reason code and
    ``exception_type`` names the error that decided it (this class for the parser's checks)."""

    def __init__(self, code: str, reason: str, *, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.exception_type = type(cause if cause is not None else self).__name__

    def __reduce__(self):  # crosses Dask workers with its fields, not its message
        return _malformed, (self.code, self.reason, self.exception_type)


def _malformed(code: str, reason: str, exception_type: str) -> MalformedMetadata:
    error = MalformedMetadata(code, reason)
    error.exception_type = exception_type
    return error


@dataclass(frozen=True, slots=True)
class ParsedBin:
    """What one metadata object says about its bin."""

    image_id: str
    image_key: str
    expected_quantity: int
    items: list[dict[str, Any]]

    @property
    def sku_count(self) -> int:
        return len(self.items)

    @property
    def sku_quantity_sum(self) -> int:
        return sum(item["quantity"] for item in self.items)


def image_id_from_key(key: str) -> str:
    """``metadata/01057.json`` → ``"01057"`` (kept as a string, padding and all)."""
    name = posixpath.basename(key)
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or extension.lower() not in ("json", "jpg", "jpeg"):
        raise MalformedMetadata(
            "bad_key", f"Expected a key like metadata/<id>.json, but got {key!r}"
        )
    return stem


def metadata_key(image_id: str) -> str:
    return f"{METADATA_PREFIX}/{image_id}.json"


@cache
def count_ranges() -> dict[str, tuple[int, int]]:
    """The integers each count may be: what every table column it lands in can hold.

    ``EXPECTED_QUANTITY`` goes to ``bins`` (int64) and ``scores`` (int32), a sku ``quantity``
    to ``items``, their sum to ``bins.sku_quantity_sum``. A value outside is quarantined at
    ingest; one inside but beyond the contract's range fails validation (BC-EQ-003) instead.
    """

    def common(*columns: tuple[str, str]) -> tuple[int, int]:
        ranges = [table_contract(table).integer_range(column) for table, column in columns]
        return max(low for low, _ in ranges), min(high for _, high in ranges)

    return {
        "EXPECTED_QUANTITY": common(("bins", "expected_quantity"), ("scores", "expected_quantity")),
        "quantity": common(("items", "quantity")),
        "quantity_sum": common(("bins", "sku_quantity_sum")),
    }


def json_nesting_depth(payload: bytes) -> int:
    """How deep arrays and objects nest in JSON text, found without parsing (no recursion).

    Brackets inside strings do not count; a quote after an odd run of backslashes is escaped.
    Vectorised, so a hostile megabyte costs milliseconds.
    """
    data = np.frombuffer(payload, dtype=np.uint8)
    if not data.size:
        return 0
    backslash = data == ord("\\")
    index = np.arange(data.size)
    last_other = np.maximum.accumulate(np.where(backslash, -1, index))
    backslashes_before = np.zeros(data.size, dtype=np.int64)
    backslashes_before[1:] = index[:-1] - last_other[:-1]
    quote = (data == ord('"')) & (backslashes_before % 2 == 0)
    in_string = np.cumsum(quote) % 2 == 1
    step = ((data == ord("[")) | (data == ord("{"))).astype(np.int64)
    step -= (data == ord("]")) | (data == ord("}"))
    step[in_string] = 0
    return max(0, int(np.cumsum(step).max()))


def parse_metadata(key: str, payload: bytes, limits: MetadataLimits | None = None) -> ParsedBin:
    """Parse and type-check one metadata object; raise :class:`MalformedMetadata` if it is bad."""
    limits = limits or MetadataLimits()
    image_id = image_id_from_key(key)
    if len(payload) > limits.max_bytes:
        raise MalformedMetadata(
            "too_large",
            f"Expected a metadata object of at most {limits.max_bytes:,} bytes, "
            f"but got {len(payload):,}",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedMetadata(
            "bad_encoding", f"Expected UTF-8 JSON, but {error}", cause=error
        ) from None
    # Only text with more brackets than the limit can nest deeper than it.
    if payload.count(b"[") + payload.count(b"{") > limits.max_depth:
        depth = json_nesting_depth(payload)
        if depth > limits.max_depth:
            raise MalformedMetadata(
                "too_deep",
                f"Expected JSON nested at most {limits.max_depth} levels deep, but got {depth}",
            )
    document = _decode_json(text)
    if not isinstance(document, dict):
        raise MalformedMetadata(
            "wrong_type", f"Expected a JSON object, but got {type(document).__name__}"
        )

    expected = _require(document, "EXPECTED_QUANTITY", "")
    if not _is_int(expected):
        raise MalformedMetadata(
            "wrong_type",
            f"Expected EXPECTED_QUANTITY to be an integer, but got {_describe(expected)}",
        )
    ranges = count_ranges()
    _check_range(expected, "EXPECTED_QUANTITY", ranges["EXPECTED_QUANTITY"])
    skus = _require(document, "BIN_FCSKU_DATA", "")
    if not isinstance(skus, dict):
        raise MalformedMetadata(
            "wrong_type", f"Expected BIN_FCSKU_DATA to be an object, but got {_describe(skus)}"
        )

    image_name = document.get("image_fname", f"{image_id}.jpg")
    if not isinstance(image_name, str) or not image_name or "/" in image_name:
        raise MalformedMetadata(
            "wrong_type",
            f"Expected image_fname to be a file name, but got {_describe(image_name)}",
        )
    _check_text(image_name, "image_fname")
    items = [_parse_sku(image_id, sku, record) for sku, record in skus.items()]
    _check_range(
        sum(item["quantity"] for item in items),
        "the sum of the BIN_FCSKU_DATA quantities",
        ranges["quantity_sum"],
    )
    return ParsedBin(
        image_id=image_id,
        image_key=f"{IMAGE_PREFIX}/{image_name}",
        expected_quantity=expected,
        items=items,
    )


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedMetadata(
            "bad_json", f"Expected valid JSON, but {error}", cause=error
        ) from None
    except RecursionError as error:  # the depth check keeps this from happening
        raise MalformedMetadata(
            "too_deep", "Expected JSON the parser can nest, but it is too deep", cause=error
        ) from None
    except ValueError as error:  # an integer literal of more digits than Python converts
        raise MalformedMetadata(
            "out_of_range", f"Expected numbers a table can hold, but {error}", cause=error
        ) from None


def _parse_sku(image_id: str, sku: str, record: Any) -> dict[str, Any]:
    where = f"BIN_FCSKU_DATA[{sku!r}]"
    _check_text(sku, f"a key of BIN_FCSKU_DATA ({sku!r})")
    if not isinstance(record, dict):
        raise MalformedMetadata(
            "wrong_type", f"Expected {where} to be an object, but got {_describe(record)}"
        )
    quantity = _require(record, "quantity", where)
    if not _is_int(quantity) or quantity < 0:
        raise MalformedMetadata(
            "wrong_type" if not _is_int(quantity) else "bad_value",
            f"Expected {where}.quantity to be a non-negative integer, "
            f"but got {_describe(quantity)}",
        )
    _check_range(quantity, f"{where}.quantity", count_ranges()["quantity"])
    asin = _require(record, "asin", where)
    if not isinstance(asin, str):
        raise MalformedMetadata(
            "wrong_type", f"Expected {where}.asin to be a string, but got {_describe(asin)}"
        )
    _check_text(asin, f"{where}.asin")
    return {
        "image_id": image_id,
        "sku": sku,
        "asin": asin,
        "name": _optional_str(record, "name", where),
        "normalized_name": _optional_str(record, "normalizedName", where),
        "quantity": quantity,
        "height_in": _measure(record, "height", where, _LENGTH_TO_INCHES),
        "length_in": _measure(record, "length", where, _LENGTH_TO_INCHES),
        "width_in": _measure(record, "width", where, _LENGTH_TO_INCHES),
        "weight_lb": _measure(record, "weight", where, _WEIGHT_TO_POUNDS),
    }


def _measure(record: dict, field: str, where: str, factors: dict[str, float]) -> float | None:
    """A ``{"unit", "value"}`` measure in the table's unit; absent measures are null."""
    measure = record.get(field)
    if measure is None:
        return None
    if not isinstance(measure, dict):
        raise MalformedMetadata(
            "wrong_type",
            f"Expected {where}.{field} to be {{unit, value}}, but got {_describe(measure)}",
        )
    value, unit = measure.get("value"), measure.get("unit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMetadata(
            "wrong_type", f"Expected {where}.{field}.value to be a number, but got {value!r}"
        )
    factor = factors.get(str(unit).upper())
    if factor is None:
        raise MalformedMetadata(
            "bad_value",
            f"Expected {where}.{field}.unit to be one of {sorted(factors)}, but got {unit!r}",
        )
    try:
        return float(value) * factor
    except OverflowError as error:  # an integer beyond the largest float
        raise MalformedMetadata(
            "out_of_range",
            f"Expected {where}.{field}.value to fit a float64, but got {_describe(value)}",
            cause=error,
        ) from None


def _require(record: dict, field: str, where: str) -> Any:
    if field not in record:
        place = f"{where}.{field}" if where else field
        raise MalformedMetadata("missing_key", f"Expected key {place}, but it is missing")
    return record[field]


def _optional_str(record: dict, field: str, where: str) -> str | None:
    value = record.get(field)
    if value is not None and not isinstance(value, str):
        raise MalformedMetadata(
            "wrong_type", f"Expected {where}.{field} to be a string, but got {_describe(value)}"
        )
    if value is not None:
        _check_text(value, f"{where}.{field}")
    return value


def _check_text(value: str, where: str) -> None:
    """JSON escapes can spell lone surrogates, which no UTF-8 table column can hold."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MalformedMetadata(
            "bad_encoding",
            f"Expected {where} to be valid Unicode text, but it holds a lone surrogate "
            f"at position {error.start}",
            cause=error,
        ) from None


def _check_range(value: int, where: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise MalformedMetadata(
            "out_of_range",
            f"Expected {where} within {low}..{high} (what its table columns hold), "
            f"but got {_describe(value)}",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
