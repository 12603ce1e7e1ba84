"""The documented commands run through the CLI on synthetic buckets: the source is given to
``ingest`` alone, and an output fed from two sources reads each bin from its own. (The docs'
own code blocks run verbatim in tests/test_doc_blocks.py.)

The settings point S3 at the moto server, so a step that fell back to the default source
(``s3://aft-vbi-pds``) would fail at once instead of passing by accident.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.manifest import load_manifest
from tests.builders import write_clean_bucket

# A model trained in seconds: the commands are under test, not the model.
TINY = ["--arch", "mobilenet_v3_small", "--image-size", "32", "--epochs", "1"]
TINY += ["--batch-size", "16"]


def _run(capsys, *argv: str):
    from flows.cli import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_the_command_table_needs_the_source_at_ingest_alone(
    prefect_api, settings_env, tmp_path, capsys
):
    bucket, output = str(tmp_path / "B"), str(tmp_path / "O")
    _run(capsys, "synth", bucket, "--bins", "30", "--seed", "5", "--max-count", "5")
    assert _run(capsys, "ingest", "--source", bucket, "--output", output)["ingested"] == 30
    assert _run(capsys, "validate", "--output", output)["images_listed"] == 30
    built = _run(capsys, "manifest", "--output", output)
    assert built["rows"] == 30
    trained = _run(capsys, "train", "--output", output, *TINY)
    promoted = _run(capsys, "promote", "--output", output, "--model", trained["version"])
    assert promoted["promote"] is True
    scored = _run(capsys, "score", "--output", output)
    assert scored["scored"] == 30 and scored["source"] == Location(bucket).url

    bins = read_table(Location(output), "bins")
    assert set(bins.column("source").to_pylist()) == {Location(bucket).url}
    uris = read_table(Location(output), "scores").column("image_uri").to_pylist()
    assert all(uri.startswith(Location(bucket).url + "/bin-images/") for uri in uris)


def test_one_output_fed_from_two_sources_reads_each_bin_from_its_own(
    prefect_api, settings_env, tmp_path, capsys
):
    synthetic, second, output = str(tmp_path / "synth"), tmp_path / "second", str(tmp_path / "O")
    _run(capsys, "synth", synthetic, "--bins", "20", "--seed", "2", "--max-count", "5")
    # Ids 00001.. exist in both: a bin is its source and its id.
    write_clean_bucket(second, 16)
    _run(capsys, "ingest", "--source", synthetic, "--output", output)
    _run(capsys, "ingest", "--source", str(second), "--output", output)
    validated = _run(capsys, "validate", "--output", output)
    assert validated["passed"] and validated["rows"] == 36
    assert validated["images_listed"] == 36 and validated["images_without_metadata"] == 0
    built = _run(capsys, "manifest", "--output", output, "--policy", "open:3")
    assert built["rows"] == 36
    retrained = _run(capsys, "retrain", "--output", output, "--policy", "open:3", *TINY)
    assert retrained["promotion"]["promote"] is True
    scored = _run(capsys, "score", "--output", output)
    assert scored["scored"] == 36 and scored["unknown_expected"] == 0

    scores = read_table(Location(output), "scores")
    uris = scores.column("image_uri").to_pylist()
    assert sum(uri.startswith(Location(synthetic).url + "/") for uri in uris) == 20
    assert sum(uri.startswith(Location(str(second)).url + "/") for uri in uris) == 16
    # Each bin's record comes from its own source, though the ids overlap.
    bins = read_table(Location(output), "bins")
    recorded = {
        (source, image_id): quantity
        for source, image_id, quantity in zip(
            bins.column("source").to_pylist(),
            bins.column("image_id").to_pylist(),
            bins.column("expected_quantity").to_pylist(),
            strict=True,
        )
    }
    for uri, image_id, expected in zip(
        uris,
        scores.column("image_id").to_pylist(),
        scores.column("expected_quantity").to_pylist(),
        strict=True,
    ):
        source = uri.rsplit("/bin-images/", 1)[0]
        assert expected == recorded[(source, image_id)]
    assert pc.sum(pc.is_null(bins.column("source"))).as_py() == 0


def test_scoring_an_output_without_bins_asks_for_a_source(
    prefect_api, settings_env, tmp_path, capsys
):
    from flows.cli import main

    with pytest.raises(ValueError, match="Expected a source to list"):
        main(["score", "--output", str(tmp_path / "empty")])


def test_the_abid_benchmark_commands_hold_the_challenge_list_out_and_evaluate_on_it(
    prefect_api, settings_env, tmp_path, capsys
):
    """docs/training/real-data.md, "The ABID benchmark on a GPU": pipeline and retrain with
    --benchmark-split, the baseline's recipe (shrunk), evaluate --split benchmark; the public
    bucket replaced by a synthetic one and the challenge's list by one naming some of its
    bins."""
    bucket, output = tmp_path / "B", str(tmp_path / "O")
    _run(capsys, "synth", str(bucket), "--bins", "40", "--seed", "9", "--max-count", "8")
    records = {
        path.stem: json.loads(path.read_text())["EXPECTED_QUANTITY"]
        for path in (bucket / "metadata").glob("*.json")
    }
    # The challenge names image idx as "%05d.jpg" % (idx + 1): five-digit ids only. One listed
    # image is not in the bucket at all.
    listed = sorted(i for i in records if len(i) == 5)[::3]
    split_file = tmp_path / "counting_val_hard.json"
    split_file.write_text(json.dumps([[int(i) - 1, records[i]] for i in listed] + [[99990, 1]]))
    in_policy = {i for i in listed if records[i] <= 5}
    assert len(in_policy) >= 3 and len(in_policy) < len(listed)  # both kinds are listed
    benchmark = ["--policy", "moderate", "--benchmark-split", str(split_file)]

    built = _run(capsys, "pipeline", "--source", str(bucket), "--output", output, *benchmark)
    details = built["manifest"]["benchmark"]
    assert details["listed"] == len(listed) + 1 and details["in_manifest"] == len(in_policy)
    assert details["label_mismatches"] == 0
    retrained = _run(
        capsys, "retrain", "--output", output, *benchmark, "--recipe", "abid-baseline", *TINY
    )
    assert retrained["manifest"]["version"] == built["manifest"]["version"]  # found, not rebuilt
    assert retrained["promotion"]["promote"] is True
    saved = Location(output).read_bytes(f"models/{retrained['train']['version']}/config.json")
    assert json.loads(saved)["recipe"] == "abid-baseline"

    evaluated = _run(
        capsys, "evaluate", "--output", output, "--model", "champion", "--split", "benchmark"
    )
    assert evaluated["evaluation_set"]["is_abid_benchmark"] is True
    assert evaluated["metrics"]["n"] == len(in_policy)
    assert evaluated["abid_baseline"]["accuracy"] == pytest.approx(0.5567)
    # Nothing on the list is trained on: the test split is the list, and only the list.
    manifest, _ = load_manifest(Location(output), built["manifest"]["version"])
    splits = dict(
        zip(
            manifest.column("image_id").to_pylist(),
            manifest.column("split").to_pylist(),
            strict=True,
        )
    )
    assert {i for i, split in splits.items() if split == "test"} == in_policy
