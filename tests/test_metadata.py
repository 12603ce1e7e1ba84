"""Parsing metadata objects: the real shape, ids as strings, every malformed kind."""

from __future__ import annotations

import json

import pytest

from bincount.ingest import read_key_list
from bincount.metadata import MalformedMetadata, image_id_from_key, parse_metadata
from tests.builders import MALFORMED_OBJECTS, metadata_document


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
