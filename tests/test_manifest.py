"""Manifests: only validated bins, count policies, stable splits, the benchmark as test split."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from bincount.core.storage import Location
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import (
    CountPolicy,
    StaleValidation,
    build_manifest,
    load_manifest,
    read_benchmark_split,
    split_of,
)
from bincount.data.validate import validate_bins
from bincount.testing.pipeline import defaults
from tests.builders import write_bin, write_clean_bucket

MAX = defaults().max_expected_quantity  # the contract's maximum when none is set


def _prepare(root, output, count, start=1):
    write_clean_bucket(root, count, start=start)
    ingest_metadata(Location(str(root)), output)
    validate_bins(Location(str(root)), output, max_expected_quantity=MAX)


def test_policy_parsing():
    assert CountPolicy.parse("moderate") == CountPolicy("moderate", 5)
    assert CountPolicy.parse("hard") == CountPolicy("hard", None)
    assert CountPolicy.parse("MAX:12") == CountPolicy("max:12", 12)
    with pytest.raises(ValueError, match="Expected a count policy"):
        CountPolicy.parse("easy")


def test_labels_equal_the_metadata_and_quarantined_bins_are_left_out(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    write_bin(root, "80001", {"B1": 2}, expected=3)  # quarantined by validation
    write_bin(root, "80002", {"B1": 7})  # outside the moderate policy
    _prepare(root, output, 60)

    summary = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("moderate"))
    rows, details = load_manifest(output)

    metadata = {
        p.stem: json.loads(p.read_bytes())["EXPECTED_QUANTITY"]
        for p in (root / "metadata").glob("*.json")
    }
    assert summary.rows == rows.num_rows == 60
    assert all(metadata[r["image_id"]] == r["label"] for r in rows.to_pylist())
    assert summary.excluded == {"quarantined_by_validation": 1, "outside_policy": 1}
    assert details.version == summary.version
    assert rows.column("image_uri")[0].as_py() == str(root / "bin-images" / "00001.jpg")
    assert set(rows.column("split").to_pylist()) == {"train", "val", "test"}


def test_same_inputs_give_the_same_version_and_nothing_is_rewritten(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    _prepare(root, output, 30)
    first = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("hard"))
    again = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("hard"))
    other = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("max:2"))
    assert first.version == again.version and first.created and not again.created
    assert other.version != first.version


def test_splits_are_stable_as_the_data_grows(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    _prepare(root, output, 150)
    before = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("hard"))
    old = {r["image_id"]: r["split"] for r in load_manifest(output, before.version)[0].to_pylist()}
    _prepare(root, output, 150, start=151)
    after = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("hard"))
    new = {r["image_id"]: r["split"] for r in load_manifest(output, after.version)[0].to_pylist()}
    assert len(new) == 300 and all(new[i] == split for i, split in old.items())


def test_hash_split_proportions_hold_in_every_class():
    ids = [f"{i:06d}" for i in range(30000)]
    splits = [split_of(i, val_percent=10, test_percent=10) for i in ids]
    for label in range(3):  # a label-independent hash: each class split alike
        chosen = [s for i, s in enumerate(splits) if i % 3 == label]
        assert chosen.count("test") / len(chosen) == pytest.approx(0.10, abs=0.01)
        assert chosen.count("val") / len(chosen) == pytest.approx(0.10, abs=0.01)


def test_benchmark_bins_are_the_test_split_and_never_trained_on(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    _prepare(root, output, 80)
    # The challenge names image idx as "%05d.jpg" % (idx + 1): idx 9 is bin 00010.
    benchmark = read_benchmark_split(json.dumps([[9, 1], [19, 2], [29, 1], [99998, 3]]))
    assert set(benchmark) == {"00010", "00020", "00030", "99999"}

    summary = build_manifest(
        Location(str(root)),
        output,
        policy=CountPolicy.parse("moderate"),
        benchmark=benchmark,
        benchmark_name="counting_val_hard.json",
    )
    rows = load_manifest(output, summary.version)[0].to_pylist()
    test = {r["image_id"] for r in rows if r["split"] == "test"}
    assert test == {"00010", "00020", "00030"}
    assert summary.benchmark["listed"] == 4 and summary.benchmark["in_manifest"] == 3
    labels = {r["image_id"]: r["label"] for r in rows}
    assert summary.benchmark["label_mismatches"] == sum(
        labels[i] != benchmark[i] for i in ("00010", "00020", "00030")
    )


def test_real_benchmark_split_file_maps_to_padded_ids(shared_abid):
    split = read_benchmark_split((shared_abid / "splits" / "counting_val_hard.json").read_text())
    assert len(split) == 53523
    assert split["00004"] == 5  # the first pair is [3, 5]


def test_unvalidated_bins_cannot_make_a_manifest(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    _prepare(root, output, 10)
    write_clean_bucket(root, 5, start=11)
    ingest_metadata(Location(str(root)), output)
    with pytest.raises(StaleValidation, match="run validate first"):
        build_manifest(Location(str(root)), output, policy=CountPolicy.parse("moderate"))


def test_a_description_loads_as_a_record_and_writes_back_the_same_bytes(tmp_path):
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    _prepare(root, output, 30)
    summary = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("open:3"))
    text = (tmp_path / "out" / "manifests" / summary.version / "_manifest.json").read_text()

    details = load_manifest(output)[1]
    assert json.dumps(details.model_dump(mode="json"), indent=2) == text
    assert details.open_top is True and details.max_count == 3 and details.rows == 30
    assert details.distribution == summary.distribution
    assert details.labels.from_records == 30 and details.excluded.outside_policy == 0


def test_a_description_written_before_sources_and_review_labels_still_loads(tmp_path):
    # A manifest built before open_top, sources and labels were recorded, re-split by a bench
    # (which adds keys of its own): as it sits in older outputs.
    old = {
        "version": "0123456789ab",
        "policy": "moderate",
        "max_count": 5,
        "rows": 2,
        "bins_fingerprint": "00ff00ff00ff00ff",
        "source": "s3://abid/",
        "val_percent": 10.0,
        "test_percent": 10.0,
        "distribution": {"train": {"0": 1, "10": 1}, "val": {}, "test": {}},
        "excluded": {"quarantined_by_validation": 0, "outside_policy": 3},
        "benchmark": None,
        "created_at": "2026-11-20T08:00:00.000001+00:00",
        "split_seed": 7,
    }
    folder = tmp_path / "manifests" / old["version"]
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps(old, indent=2))
    pq.write_table(pa.table({"image_id": ["00001", "00002"]}), folder / "part-0.parquet")

    _, details = load_manifest(Location(str(tmp_path)), old["version"])

    assert details.open_top is False and details.sources == [] and details.labels is None
    assert details.all_sources == ["s3://abid/"]
    assert details.distribution["train"] == {0: 1, 10: 1}
    assert details.created_at == old["created_at"]  # as written, not re-rendered
    assert details.model_dump(mode="json")["split_seed"] == 7  # keys it does not name are kept


def test_a_description_missing_a_field_is_refused_when_loaded(tmp_path):
    folder = tmp_path / "manifests" / "0123456789ab"
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps({"version": "0123456789ab", "rows": 2}))

    with pytest.raises(ValidationError, match="bins_fingerprint"):
        load_manifest(Location(str(tmp_path)), "0123456789ab")
