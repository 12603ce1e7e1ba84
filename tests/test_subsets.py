"""Training subsets of a manifest (a learning curve's data): fewer train rows, nested by seed,
the val and test rows exactly the parent's, versioned by content, never the latest manifest."""

from __future__ import annotations

import pytest

from bincount.core.storage import Location
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest
from bincount.data.subsets import train_order, train_subset
from bincount.data.validate import validate_bins
from bincount.testing.pipeline import defaults
from tests.builders import write_clean_bucket


@pytest.fixture
def parent(tmp_path) -> tuple[Location, str]:
    root, output = tmp_path / "bucket", Location(str(tmp_path / "out"))
    write_clean_bucket(root, 120)
    ingest_metadata(Location(str(root)), output)
    validate_bins(
        Location(str(root)), output, max_expected_quantity=defaults().max_expected_quantity
    )
    summary = build_manifest(Location(str(root)), output, policy=CountPolicy.parse("moderate"))
    return output, summary.version


def _by_split(output: Location, version: str) -> dict[str, list[tuple[str, int]]]:
    rows = load_manifest(output, version)[0].to_pylist()
    return {
        split: [(r["image_id"], r["label"]) for r in rows if r["split"] == split]
        for split in ("train", "val", "test")
    }


def test_a_subset_keeps_the_first_train_bins_in_seed_order_and_every_held_out_bin(parent):
    output, version = parent
    whole = _by_split(output, version)
    small = train_subset(output, version, 10, seed=3)
    large = train_subset(output, version, 40, seed=3)

    ids = [image_id for image_id, _ in whole["train"]]
    for details in (small, large):
        kept = _by_split(output, details.version)
        size = details.train_subset["bins"]
        assert {i for i, _ in kept["train"]} == set(train_order(ids, seed=3)[:size])
        assert set(kept["train"]) <= set(whole["train"])  # labels as the parent's
        assert kept["val"] == whole["val"] and kept["test"] == whole["test"]
        assert sum(details.distribution["train"].values()) == size
        assert (
            details.distribution["test"] == load_manifest(output, version)[1].distribution["test"]
        )
        assert details.subset_of == version and details.rows == size + len(whole["val"]) + len(
            whole["test"]
        )
    assert set(_by_split(output, small.version)["train"]) < set(
        _by_split(output, large.version)["train"]
    )
    # Another seed draws other bins; the latest manifest is still the parent.
    other = train_subset(output, version, 10, seed=4)
    assert other.version != small.version
    assert load_manifest(output)[1].version == version


def test_a_subset_is_found_again_and_the_whole_train_split_is_the_parent(parent):
    output, version = parent
    first = train_subset(output, version, 25)
    assert train_subset(output, version, 25) == first
    train_bins = len(_by_split(output, version)["train"])
    assert train_subset(output, version, train_bins).version == version
    assert train_subset(output, version, 10 * train_bins).version == version
    with pytest.raises(ValueError, match="at least 1 train bin"):
        train_subset(output, version, 0)


def test_train_order_depends_on_each_id_and_the_seed_alone():
    ids = [f"{i:05d}" for i in range(200)]
    order = train_order(ids, seed=0)
    assert sorted(order) == ids and order != ids
    assert [i for i in train_order(ids[::-1], seed=0)] == order
    fewer = train_order(ids[50:], seed=0)
    assert fewer == [i for i in order if i in set(ids[50:])]
