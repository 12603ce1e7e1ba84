"""Parsing metadata objects: the real shape, ids as strings, every malformed and hostile kind,
and properties over any bytes (Hypothesis)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bincount.core.contracts import table_contract
from bincount.core.limits import MetadataLimits
from bincount.data.ingest import read_key_list
from bincount.data.metadata import (
    MalformedMetadata,
    count_ranges,
    image_id_from_key,
    json_nesting_depth,
    parse_metadata,
)
from bincount.data.records import rows_from_objects
from tests.builders import MALFORMED_OBJECTS, metadata_document

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_real_sample_objects_parse_with_sums_equal_to_expected_quantity(shared_abid):
    folder = shared_abid / "sample" / "metadata"
    paths = sorted(folder.glob("*.json"))
    assert len(paths) == 1304
    for path in paths:
        document = json.loads(path.read_bytes())
        parsed = parse_metadata(f"metadata/{path.name}", path.read_bytes())
        assert parsed.image_id == path.stem
        assert parsed.expected_quantity == document["EXPECTED_QUANTITY"]
        assert parsed.sku_count == len(document["BIN_FCSKU_DATA"])
        assert parsed.sku_quantity_sum == sum(
            sku["quantity"] for sku in document["BIN_FCSKU_DATA"].values()
        )
        assert parsed.image_key == f"bin-images/{document.get('image_fname', path.stem + '.jpg')}"


def test_ids_stay_strings_with_their_padding():
    assert image_id_from_key("metadata/01057.json") == "01057"
    assert image_id_from_key("metadata/1057.json") == "1057"
    assert image_id_from_key("metadata/100313.json") == "100313"
    with pytest.raises(MalformedMetadata, match="Expected a key like"):
        image_id_from_key("metadata/README")


def test_unpadded_object_uses_its_image_fname():
    payload = json.dumps({"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0, "image_fname": "121.jpg"})
    parsed = parse_metadata("metadata/121.json", payload.encode())
    assert (parsed.image_id, parsed.image_key, parsed.items) == ("121", "bin-images/121.jpg", [])


def test_units_are_converted_to_inches_and_pounds():
    document = metadata_document({"B1": 2})
    document["BIN_FCSKU_DATA"]["B1"]["height"] = {"unit": "CM", "value": 2.54}
    document["BIN_FCSKU_DATA"]["B1"]["weight"] = {"unit": "kilograms", "value": 1.0}
    del document["BIN_FCSKU_DATA"]["B1"]["width"]
    (item,) = parse_metadata("metadata/00001.json", json.dumps(document).encode()).items
    assert item["height_in"] == pytest.approx(1.0)
    assert item["weight_lb"] == pytest.approx(2.2046226218)
    assert item["width_in"] is None
    assert item["sku"] == "B1" and item["quantity"] == 2


@pytest.mark.parametrize("image_id", sorted(MALFORMED_OBJECTS))
def test_every_malformed_kind_is_rejected_with_a_reason(image_id):
    payload, code = MALFORMED_OBJECTS[image_id]
    with pytest.raises(MalformedMetadata) as caught:
        parse_metadata(f"metadata/{image_id}.json", payload)
    assert caught.value.code == code
    assert caught.value.reason.startswith("Expected")


def test_capstone_file_list_becomes_metadata_keys(shared_abid):
    text = (shared_abid / "splits" / "udacity_file_list.json").read_text()
    keys = read_key_list(text)
    groups = json.loads(text)
    assert len(keys) == sum(len(v) for v in groups.values()) == 10441
    assert "metadata/100313.json" in keys
    assert all(k.startswith("metadata/") and k.endswith(".json") for k in keys)


def test_key_lists_in_other_shapes():
    assert read_key_list("01057\n1057\n") == ["metadata/01057.json", "metadata/1057.json"]
    assert read_key_list('["metadata/00015.json"]') == ["metadata/00015.json"]
    with pytest.raises(ValueError, match="Expected a key list"):
        read_key_list("  ")


# -- properties: any bytes end as a row or a quarantine row; valid documents parse exactly ---
PARSER_CODES = {
    "too_large",
    "bad_encoding",
    "bad_json",
    "too_deep",
    "wrong_type",
    "missing_key",
    "bad_value",
    "out_of_range",
}
BOUNDARY_INTEGERS = [
    -(2**63) - 1,
    -(2**63),
    -(2**31) - 1,
    -1,
    0,
    2**31 - 1,
    2**31,
    2**63 - 1,
    2**63,
    10**30,
]
# Any text Python can hold, lone surrogates included (JSON escapes can spell them).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(BOUNDARY_INTEGERS)
    | st.floats()
    | ANY_TEXT
    | st.sampled_from(['"', "\\", "[", "]{", '\\"[', "IN", "pounds"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=25,
)
MEASURE = (
    st.none() | st.fixed_dictionaries({"unit": JSON_VALUES, "value": JSON_VALUES}) | JSON_VALUES
)
SKU = st.fixed_dictionaries(
    {},
    optional={
        "asin": ANY_TEXT | JSON_VALUES,
        "quantity": st.integers() | st.sampled_from(BOUNDARY_INTEGERS) | JSON_VALUES,
        "name": ANY_TEXT | JSON_VALUES,
        "normalizedName": ANY_TEXT | st.none(),
        "height": MEASURE,
        "weight": MEASURE,
    },
)
ABID_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "BIN_FCSKU_DATA": st.dictionaries(ANY_TEXT, SKU | JSON_VALUES, max_size=4) | JSON_VALUES,
        "EXPECTED_QUANTITY": st.integers() | st.sampled_from(BOUNDARY_INTEGERS) | JSON_VALUES,
        "image_fname": ANY_TEXT | JSON_VALUES,
    },
)


@st.composite
def payloads(draw) -> bytes:
    """Bytes of every kind: random, JSON of any shape, ABID-like JSON, and mangled JSON."""
    kind = draw(st.sampled_from(["bytes", "json", "abid", "mangled"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    document = draw(JSON_VALUES if kind == "json" else ABID_LIKE)
    text = json.dumps(
        document, ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.just(2))
    )
    data = text.encode("utf-8", "surrogatepass")
    if kind == "mangled" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at + draw(st.integers(0, 3)) :]
    return data


LIMITS = st.just(MetadataLimits()) | st.builds(
    MetadataLimits, max_bytes=st.integers(1, 400), max_depth=st.integers(1, 6)
)


@settings(max_examples=400, deadline=None)
@given(payload=payloads(), limits=LIMITS)
def test_any_bytes_become_one_bin_row_or_one_quarantine_row(payload, limits):
    obj = {"key": "metadata/00001.json", "etag": "e", "size": len(payload), "last_modified": NOW}

    bins, items, rejects = rows_from_objects([obj], [payload], run_id="r", now=NOW, limits=limits)

    assert len(bins) + len(rejects) == 1
    if rejects:
        (row,) = rejects
        assert row["reason_code"] in PARSER_CODES, row  # never the nets: the parser foresaw it
        assert row["reason"].startswith("Expected") and row["exception_type"]
        assert not items
    else:
        assert len(items) == bins[0]["sku_count"]
    for table, rows in (("bins", bins), ("items", items), ("quarantine", rejects)):
        contract = table_contract(table)
        contract.conform(pa.Table.from_pylist(rows, schema=contract.schema))


LENGTH_UNITS = {"IN": 1.0, "INCHES": 1.0, "CM": 1 / 2.54, "MM": 1 / 25.4, "M": 100 / 2.54}
WEIGHT_UNITS = {
    "POUNDS": 1.0,
    "LB": 1.0,
    "KG": 2.2046226218,
    "GRAMS": 0.0022046226218,
    "OZ": 1 / 16,
}
VALID_TEXT = st.text(max_size=12)  # no lone surrogates
NUMBERS = st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False)


def _measure(units: dict[str, float]):
    unit = st.sampled_from(sorted(units)).flatmap(
        lambda u: st.sampled_from([u, u.lower(), u.title()])
    )
    return st.fixed_dictionaries({"unit": unit, "value": NUMBERS | st.none()})


VALID_SKU = st.fixed_dictionaries(
    {"asin": VALID_TEXT, "quantity": st.integers(0, 2**40)},
    optional={
        "name": VALID_TEXT | st.none(),
        "normalizedName": VALID_TEXT,
        "height": _measure(LENGTH_UNITS),
        "length": _measure(LENGTH_UNITS),
        "width": _measure(LENGTH_UNITS) | st.none(),
        "weight": _measure(WEIGHT_UNITS),
    },
)
VALID_DOCUMENT = st.fixed_dictionaries(
    {
        "BIN_FCSKU_DATA": st.dictionaries(VALID_TEXT, VALID_SKU, max_size=5),
        "EXPECTED_QUANTITY": st.integers(-(2**31), 2**31 - 1),
    },
    optional={"image_fname": VALID_TEXT.filter(lambda name: name and "/" not in name)},
)


def _converted(measure: dict | None, units: dict[str, float]) -> float | None:
    if measure is None or measure["value"] is None:
        return None
    return measure["value"] * units[measure["unit"].upper()]


@settings(max_examples=200, deadline=None)
@given(document=VALID_DOCUMENT, ascii_only=st.booleans(), indent=st.none() | st.integers(0, 4))
def test_any_valid_document_parses_to_what_it_says(document, ascii_only, indent):
    payload = json.dumps(document, ensure_ascii=ascii_only, indent=indent).encode()

    parsed = parse_metadata("metadata/0042.json", payload)

    assert parsed.image_id == "0042"
    assert parsed.image_key == f"bin-images/{document.get('image_fname', '0042.jpg')}"
    assert parsed.expected_quantity == document["EXPECTED_QUANTITY"]
    skus = document["BIN_FCSKU_DATA"]
    assert [item["sku"] for item in parsed.items] == list(skus)
    assert parsed.sku_quantity_sum == sum(sku["quantity"] for sku in skus.values())
    for item, sku in zip(parsed.items, skus.values(), strict=True):
        assert (item["asin"], item["quantity"]) == (sku["asin"], sku["quantity"])
        assert (item["name"], item["normalized_name"]) == (
            sku.get("name"),
            sku.get("normalizedName"),
        )
        for column, field, units in (
            ("height_in", "height", LENGTH_UNITS),
            ("length_in", "length", LENGTH_UNITS),
            ("width_in", "width", LENGTH_UNITS),
            ("weight_lb", "weight", WEIGHT_UNITS),
        ):
            expected = _converted(sku.get(field), units)
            if expected is None:
                assert item[column] is None
            else:
                assert item[column] == pytest.approx(expected, rel=1e-12)


def _depth(value) -> int:
    """The reference: nesting depth by recursion over the parsed value."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans(), indent=st.none() | st.just(1))
def test_nesting_depth_without_parsing_equals_the_parsed_depth(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert json_nesting_depth(text.encode("utf-8", "surrogatepass")) == _depth(value)


def test_the_hostile_objects_are_refused_quickly_and_say_why():
    deep = b"[" * 200_000 + b"]" * 200_000
    # This thread's CPU time, not the wall clock: the same on a busy machine as on a quiet one.
    started = time.thread_time()
    with pytest.raises(MalformedMetadata) as caught:
        parse_metadata("metadata/1.json", deep)
    assert time.thread_time() - started < 1.0
    assert (caught.value.code, caught.value.reason) == (
        "too_deep",
        "Expected JSON nested at most 32 levels deep, but got 200000",
    )
    with pytest.raises(MalformedMetadata) as caught:
        parse_metadata("metadata/1.json", b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 1e30}')
    assert caught.value.code == "wrong_type"  # a float, not an integer
    with pytest.raises(MalformedMetadata) as caught:
        parse_metadata(
            "metadata/1.json",
            b'{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 10000000000000000000000000000000}',
        )
    assert caught.value.code == "out_of_range"
    assert caught.value.reason == (
        "Expected EXPECTED_QUANTITY within -2147483648..2147483647 (what its table columns "
        "hold), but got int 10000000000000000000000000000000"
    )
    with pytest.raises(MalformedMetadata) as caught:
        parse_metadata("metadata/1.json", b'{"a": ')
    assert caught.value.exception_type == "JSONDecodeError"


def test_within_the_tables_but_beyond_the_contract_is_left_to_validation():
    payload = json.dumps(metadata_document({"B1": 3}, expected=-5)).encode()
    assert parse_metadata("metadata/1.json", payload).expected_quantity == -5  # BC-EQ-003's
    assert count_ranges()["EXPECTED_QUANTITY"] == (-(2**31), 2**31 - 1)  # scores is int32
    assert count_ranges()["quantity"] == (-(2**63), 2**63 - 1)
