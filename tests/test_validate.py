"""Label validation: every expectation quarantines its failing rows; thresholds fail the run."""

from __future__ import annotations

import json
import os

import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.ingest import ingest_metadata
from bincount.data.validate import ContractViolation, latest_validation, validate_bins
from bincount.reports.validation import validation_markdown
from bincount.testing.pipeline import defaults
from tests.builders import write_bin, write_clean_bucket

MAX = defaults().max_expected_quantity  # the contract's maximum when none is set


@pytest.fixture
def noisy_bucket(tmp_path):
    """200 clean bins plus one of each label fault, ingested into an output folder."""
    root = tmp_path / "bucket"
    write_clean_bucket(root, 200)
    write_bin(root, "80001", {"B1": 2, "B2": 3}, expected=4)  # label noise: 4 != 5
    write_bin(root, "80002", {"B1": 1}, image=False)  # metadata without its image
    write_bin(root, "80003", {"B1": MAX + 50})  # past the configured maximum
    (root / "bin-images" / "70001.jpg").write_bytes(b"an image without metadata")
    output = Location(str(tmp_path / "out"))
    ingest_metadata(Location(str(root)), output)
    return Location(str(root)), output


def test_each_failing_row_is_quarantined_with_its_expectation(noisy_bucket):
    source, output = noisy_bucket
    report = validate_bins(source, output, max_expected_quantity=MAX)

    quarantine = read_table(output, "quarantine").to_pylist()
    by_id = {row["image_id"]: row for row in quarantine}
    assert {i: r["reason_code"] for i, r in by_id.items()} == {
        "80001": "BC-EQ-004",
        "80002": "BC-IMG-001",
        "80003": "BC-EQ-003",
    }
    assert by_id["80001"]["reason"].endswith("got expected_quantity=4, sku_quantity_sum=5")
    assert by_id["80003"]["expectation"] == "expect_column_values_to_be_between"
    assert all(row["stage"] == "validate" for row in quarantine)

    outcomes = {o.code: o for o in report.outcomes}
    assert report.rows == 203 and report.quarantined_rows == 3
    assert {code: o.failed for code, o in outcomes.items()} == {
        "BC-ID-001": 0,
        "BC-EQ-001": 0,
        "BC-EQ-002": 0,
        "BC-EQ-003": 1,
        "BC-EQ-004": 1,
        "BC-IMG-001": 1,
    }
    assert outcomes["BC-EQ-004"].failed_percent == pytest.approx(100 / 203)
    assert report.images_without_metadata == 1
    # 1/203 = 0.49 % passes BC-EQ-003's 0.1 % threshold: the run must fail on it, and only it.
    assert not report.passed
    with pytest.raises(ContractViolation, match="BC-EQ-003") as caught:
        report.raise_for_thresholds()
    assert "BC-EQ-004" not in str(caught.value)
    markdown = validation_markdown(report)
    assert "| BC-EQ-004 |" in markdown and "| 203 | 1 | 0.49 | 2 | yes |" in markdown


def test_thresholds_come_from_the_contract_and_parameters(noisy_bucket):
    source, output = noisy_bucket
    report = validate_bins(source, output, max_expected_quantity=400)
    assert report.passed, validation_markdown(report)
    codes = {r["reason_code"] for r in read_table(output, "quarantine").to_pylist()}
    assert codes == {"BC-EQ-004", "BC-IMG-001"}


def test_a_rerun_replaces_the_snapshot_instead_of_adding_rows(noisy_bucket):
    source, output = noisy_bucket
    validate_bins(source, output, max_expected_quantity=MAX)
    validate_bins(source, output, max_expected_quantity=MAX)
    assert read_table(output, "quarantine").num_rows == 3
    record = latest_validation(output)
    assert record["rows"] == 203 and record["passed"] is False
    assert json.loads(output.read_bytes(f"validation/report-{record['bins_fingerprint']}.json"))


def test_duplicate_current_ids_fail_uniqueness(tmp_path):
    root = tmp_path / "bucket"
    write_clean_bucket(root, 3)
    output = Location(str(tmp_path / "out"))
    ingest_metadata(Location(str(root)), output)
    # A second prefix mapping to the same id, as a broken writer could produce.
    os.makedirs(root / "metadata" / "old", exist_ok=True)
    (root / "metadata" / "old" / "00001.json").write_bytes(
        (root / "metadata" / "00001.json").read_bytes()
    )
    ingest_metadata(Location(str(root)), output)
    report = validate_bins(Location(str(root)), output, max_expected_quantity=MAX)
    unique = next(o for o in report.outcomes if o.code == "BC-ID-001")
    assert unique.failed == 2 and not report.passed
