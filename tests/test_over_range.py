"""Bins above a manifest's top count as a training-only class: the ``open:K`` companion keeps
the manifest's rows and splits, and the model trained on it is registered and served over 0..K
alone (``over_range_class``)."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import torch

from bincount.core.storage import Location
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest, split_of
from bincount.data.overrange import CompanionMismatch, companion_manifest
from bincount.data.subsets import train_order, train_subset
from bincount.data.validate import validate_bins
from bincount.model.config import TrainConfig
from bincount.model.networks import CountingModel
from bincount.model.overrange import close_top
from bincount.model.registry import load_model
from bincount.synth import synthesize
from bincount.testing.pipeline import defaults, run_pipeline, tiny_config
from tests.builders import write_bin

TOP = 3  # max:3: counts 0..3 in the manifest, 4..8 above it


@pytest.fixture
def bucket(tmp_path) -> Location:
    source = Location(str(tmp_path / "bucket"))
    synthesize(source, bins=60, seed=11, max_count=8, workers=1)
    return source


def _manifest(source: Location, output: Location, **options) -> str:
    ingest_metadata(source, output)
    validate_bins(source, output, max_expected_quantity=defaults().max_expected_quantity)
    policy = CountPolicy.parse(f"max:{TOP}")
    return build_manifest(source, output, policy=policy, **options).version


def test_the_companion_keeps_the_manifests_rows_and_adds_the_bins_above_its_top(bucket, tmp_path):
    output = Location(str(tmp_path / "out"))
    version = _manifest(bucket, output)
    rows, _ = load_manifest(output, version)

    found = companion_manifest(bucket, output, version)
    companion, details = load_manifest(output, found.version)

    assert details == found and details.policy == f"open:{TOP}" and details.open_top
    within = companion.filter(pc.less_equal(companion["label"], TOP))
    columns = ["image_id", "image_uri", "label", "split"]
    assert within.select(columns).to_pylist() == rows.select(columns).to_pylist()
    above = companion.filter(pc.greater(companion["label"], TOP)).to_pylist()
    records = {
        p.stem: json.loads(p.read_bytes())["EXPECTED_QUANTITY"]
        for p in (tmp_path / "bucket" / "metadata").glob("*.json")
    }
    assert {row["image_id"] for row in above} == {i for i, n in records.items() if n > TOP}
    assert above and all(row["label"] == TOP + 1 for row in above)
    for row in above:  # the same split rule as the manifest's: a hash of the id alone
        assert row["split"] == split_of(row["image_id"], val_percent=10.0, test_percent=10.0)

    # The manifest stays the output's latest; the companion is found again, not rebuilt.
    assert load_manifest(output)[1].version == version
    assert companion_manifest(bucket, output, version) == found


def test_the_companion_keeps_a_benchmark_test_split(bucket, tmp_path):
    output = Location(str(tmp_path / "out"))
    ingest_metadata(bucket, output)
    validate_bins(bucket, output, max_expected_quantity=defaults().max_expected_quantity)
    records = {
        p.stem: json.loads(p.read_bytes())["EXPECTED_QUANTITY"]
        for p in (tmp_path / "bucket" / "metadata").glob("*.json")
    }
    listed = {i: n for i, n in sorted(records.items()) if n <= TOP}
    benchmark = dict(list(listed.items())[:6])
    version = build_manifest(
        bucket, output, policy=CountPolicy.parse(f"max:{TOP}"), benchmark=benchmark,
        benchmark_name="counting_val.json",
    ).version  # fmt: skip

    companion, details = load_manifest(output, companion_manifest(bucket, output, version).version)

    test = companion.filter(pc.equal(companion["split"], "test"))
    assert sorted(test["image_id"].to_pylist()) == sorted(benchmark)
    assert details.benchmark.name == "counting_val.json" and details.test_percent is None


def test_a_train_subsets_companion_has_its_bins_and_the_same_share_above_the_top(bucket, tmp_path):
    output = Location(str(tmp_path / "out"))
    version = _manifest(bucket, output)
    subset = train_subset(output, version, 10, seed=3)
    rows, _ = load_manifest(output, subset.version)

    found = companion_manifest(bucket, output, subset.version)
    companion, _ = load_manifest(output, found.version)
    parent, _ = load_manifest(output, companion_manifest(bucket, output, version).version)

    columns = ["image_id", "label", "split"]
    within = companion.filter(pc.less_equal(companion["label"], TOP))
    assert within.select(columns).to_pylist() == rows.select(columns).to_pylist()
    train = pc.equal(parent["split"], "train")
    above = parent.filter(pc.and_(train, pc.greater(parent["label"], TOP)))["image_id"]
    share = 10 / sum(1 for split in load_manifest(output, version)[0]["split"].to_pylist()
                     if split == "train")  # fmt: skip
    kept = train_order(above.to_pylist(), seed=3)[: round(len(above) * share)]
    assert kept
    assert found.distribution["train"].get(TOP + 1, 0) == len(kept)
    train_above = companion.filter(
        pc.and_(pc.equal(companion["split"], "train"), pc.greater(companion["label"], TOP))
    )
    assert sorted(train_above["image_id"].to_pylist()) == sorted(kept)
    # Validation and test: the parent companion's, above the top included.
    for split in ("val", "test"):
        assert companion.filter(pc.equal(companion["split"], split)).to_pylist() == (
            parent.filter(pc.equal(parent["split"], split)).to_pylist()
        )


def test_a_companion_is_refused_for_an_open_manifest_and_for_changed_bins(bucket, tmp_path):
    output = Location(str(tmp_path / "out"))
    ingest_metadata(bucket, output)
    validate_bins(bucket, output, max_expected_quantity=defaults().max_expected_quantity)
    open_version = build_manifest(bucket, output, policy=CountPolicy.parse("open:5")).version
    with pytest.raises(ValueError, match="holds every bin already"):
        companion_manifest(bucket, output, open_version)

    version = build_manifest(bucket, output, policy=CountPolicy.parse(f"max:{TOP}")).version
    write_bin(tmp_path / "bucket", "77777", {"B1": 2})  # a new bin within 0..3
    ingest_metadata(bucket, output)
    validate_bins(bucket, output, max_expected_quantity=defaults().max_expected_quantity)
    with pytest.raises(CompanionMismatch, match="build the manifest again"):
        companion_manifest(bucket, output, version)


def test_closing_the_top_renormalises_the_open_models_counts():
    torch.manual_seed(0)
    model = CountingModel("mobilenet_v3_small", head="ce", max_count=TOP, open_top=True).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        open_probabilities = model.probabilities(model(images))
        closed = close_top(model)
        closed_probabilities = closed.probabilities(closed(images))

    assert closed.num_classes == TOP + 1 and not closed.open_top
    expected = open_probabilities[:, : TOP + 1] / open_probabilities[:, : TOP + 1].sum(1, True)
    torch.testing.assert_close(closed_probabilities, expected)
    with pytest.raises(ValueError, match="open-top softmax"):
        close_top(closed)


def test_over_range_class_needs_the_softmax_head():
    with pytest.raises(ValueError, match="softmax head"):
        TrainConfig(over_range_class=True, loss="ordinal")


@pytest.mark.parametrize("ensemble", [1, 2])
def test_a_model_trained_with_the_over_range_class_is_served_over_0_to_k(
    bucket, tmp_path, ensemble
):
    output = Location(str(tmp_path / "out"))
    config = tiny_config(over_range_class=True, ensemble=ensemble, epochs=2)

    run = run_pipeline(bucket, output, policy=f"max:{TOP}", config=config, until="evaluate")

    model, record = load_model(output, run.model_version)
    companion = record.lineage.model_extra["train_manifest"]
    _, details = load_manifest(output, companion)
    assert details.policy == f"open:{TOP}" and details.distribution["train"][TOP + 1] > 0
    assert record.lineage.manifest_version == run.manifest_version != companion
    assert record.config.over_range_class and not record.config.open_top
    assert model.num_classes == TOP + 1
    for member in getattr(model, "members", [model]):
        assert member.classifier().out_features == TOP + 1
    # Evaluated on the manifest's own test split, counts 0..3.
    rows, _ = load_manifest(output, run.manifest_version)
    assert run.evaluation.metrics.n == rows.to_pandas().split.eq("test").sum()
    # The same config on the manifest alone would be another model version.
    alone = config.for_manifest(load_manifest(output, run.manifest_version)[1])
    assert run.model_version != alone.fingerprint(run.manifest_version)


def test_training_with_the_over_range_class_needs_the_companion(bucket, tmp_path):
    from bincount.model.training import train_model

    output = Location(str(tmp_path / "out"))
    version = _manifest(bucket, output)
    with pytest.raises(ValueError, match="open:K companion"):
        train_model(output, tiny_config(over_range_class=True), manifest_version=version)


def test_the_train_command_trains_on_the_companion_and_evaluate_reads_the_manifest(
    bucket, prefect_api, settings_env, tmp_path, capsys
):
    from flows.cli import main

    def run(*argv: str) -> dict:
        assert main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    output = str(tmp_path / "out")
    built = run("pipeline", "--source", bucket.url, "--output", output, "--policy", f"max:{TOP}")
    trained = run("train", "--output", output, "--arch", "mobilenet_v3_small", "--image-size",
                  "32", "--batch-size", "16", "--epochs", "1", "--over-range-class")  # fmt: skip
    evaluated = run("evaluate", "--output", output, "--model", trained["version"])

    _, record = load_model(Location(output), trained["version"])
    _, companion = load_manifest(Location(output), record.lineage.model_extra["train_manifest"])
    assert companion.policy == f"open:{TOP}" and companion.distribution["train"][TOP + 1] > 0
    assert record.lineage.manifest_version == built["manifest"]["version"]
    assert evaluated["metrics"]["n"] == sum(built["manifest"]["distribution"]["test"].values())
    assert len(evaluated["metrics"]["per_class_n"]) == TOP + 1
