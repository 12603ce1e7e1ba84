"""Every data contract loads, and the library stays free of the orchestrator."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from bincount.core.contracts import contract_names, expectation_suite, parse_type, table_contract

WRITTEN_TABLES = {"bins", "items", "quarantine", "manifest"}


def test_every_table_the_platform_writes_has_a_schema():
    assert set(contract_names("schemas")) >= WRITTEN_TABLES


@pytest.mark.parametrize("name", contract_names("schemas"))
def test_every_schema_loads_with_described_columns(name):
    contract = table_contract(name)
    assert contract.schema.names
    for field in contract.schema:
        assert field.metadata[b"description"], f"{name}.{field.name} has no description"
    assert set(contract.partitioning) <= set(contract.schema.names)


@pytest.mark.parametrize("name", contract_names("suites"))
def test_every_suite_round_trips_through_great_expectations(name):
    import great_expectations as gx

    suite = expectation_suite(name)
    built = gx.ExpectationSuite(name=suite["name"], expectations=suite["expectations"])
    round_trip = built.to_json_dict()
    assert [e["type"] for e in round_trip["expectations"]] == [
        e["type"] for e in suite["expectations"]
    ]
    assert [e["meta"]["code"] for e in round_trip["expectations"]] == [
        e["meta"]["code"] for e in suite["expectations"]
    ]
    json.dumps(round_trip)


def test_types_parse_and_unknown_types_are_refused():
    assert parse_type("timestamp[us, UTC]") == pa.timestamp("us", tz="UTC")
    assert parse_type("list<float32>") == pa.list_(pa.float32())
    with pytest.raises(ValueError, match="Expected a known column type"):
        parse_type("decimal")


def test_conform_names_missing_columns_and_nulls():
    contract = table_contract("manifest")
    lineage = {"label_source": ["record"], "review_verdict": [None], "review_outcome_id": [None]}
    with pytest.raises(ValueError, match=r"Expected table 'manifest' to have columns \['split'\]"):
        contract.conform(pa.table({"image_id": ["1"], "image_uri": ["u"], "label": [1], **lineage}))
    with pytest.raises(ValueError, match=r"Expected no nulls in manifest\.split"):
        contract.conform(
            pa.table(
                {"image_id": ["1"], "image_uri": ["u"], "label": [1], "split": [None], **lineage}
            )
        )


def test_library_never_imports_prefect():
    code = (
        "import pkgutil, importlib, sys, bincount\n"
        "for m in pkgutil.walk_packages(bincount.__path__, 'bincount.'):\n"
        "    if not m.name.startswith('bincount.testing'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'prefect'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
