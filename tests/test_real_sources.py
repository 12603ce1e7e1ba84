"""Real ABID bins from two folders into one output, as docs/training/real-data.md writes it
(``pipeline --source .../sample``, then ``--source .../resized224``), and a short training of
the ``real`` recipe on them. A few dozen bins of each folder are copied, so the test stays short;
the commands are the documented ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.manifest import load_manifest
from bincount.model.config import TrainConfig
from bincount.model.recipes import RECIPES

pytestmark = pytest.mark.real_data


def copy_bins(folder: Path, target: Path, count: int) -> list[str]:
    """The first ``count`` bins of ``folder`` with 0-5 items, photo and metadata, in its layout."""
    chosen = []
    for metadata in sorted((folder / "metadata").glob("*.json")):
        if json.loads(metadata.read_text())["EXPECTED_QUANTITY"] <= 5:
            chosen.append(metadata.stem)
        if len(chosen) == count:
            break
    for sub in ("metadata", "bin-images"):
        (target / sub).mkdir(parents=True)
    for image_id in chosen:
        shutil.copy(folder / "metadata" / f"{image_id}.json", target / "metadata")
        shutil.copy(folder / "bin-images" / f"{image_id}.jpg", target / "bin-images")
    return chosen


def run(capsys, *argv: str) -> dict:
    from flows.cli import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_two_real_folders_make_one_manifest_and_the_real_recipe_trains_on_it(
    shared_abid, prefect_api, settings_env, tmp_path, capsys
):
    abid = tmp_path / "abid"
    sample = copy_bins(shared_abid / "sample", abid / "sample", 30)
    resized = copy_bins(shared_abid / "resized224", abid / "resized224", 30)
    output = str(tmp_path / "O")

    first = run(capsys, "pipeline", "--source", str(abid / "sample"), "--output", output,
                "--policy", "moderate")  # fmt: skip
    first_manifest, _ = load_manifest(Location(output), first["manifest"]["version"])
    first_ids, splits = first_manifest["image_id"], first_manifest["split"]
    first_splits = dict(zip(first_ids.to_pylist(), splits.to_pylist(), strict=True))
    assert set(first_splits) == set(sample)

    second = run(capsys, "pipeline", "--source", str(abid / "resized224"), "--output", output,
                 "--policy", "moderate")  # fmt: skip
    manifest, _ = load_manifest(Location(output), second["manifest"]["version"])
    assert second["manifest"]["version"] != first["manifest"]["version"]
    ids = manifest["image_id"].to_pylist()
    assert sorted(ids) == sorted(sample + resized)
    # Each bin keeps its source: its photo is read from the folder its record came from.
    for image_id, uri in zip(ids, manifest["image_uri"].to_pylist(), strict=True):
        folder = "sample" if image_id in sample else "resized224"
        assert uri.startswith(Location(str(abid / folder)).url + "/bin-images/")
    sources = set(read_table(Location(output), "bins").column("source").to_pylist())
    assert sources == {Location(str(abid / "sample")).url, Location(str(abid / "resized224")).url}
    # A bin already in a split keeps it when the second source arrives.
    for image_id, split in zip(ids, manifest["split"].to_pylist(), strict=True):
        if image_id in first_splits:
            assert split == first_splits[image_id]

    # The real recipe resolves with its budget and trains on the two folders' bins (one epoch
    # at its 160 px, the frozen stem and first blocks run on every augmented batch), after an
    # epoch on a few of its synthetic bins.
    assert TrainConfig(recipe="real").max_minutes == RECIPES["real"]["max_minutes"]
    trained = run(capsys, "train", "--output", output, "--recipe", "real", "--epochs", "1",
                  "--batch-size", "8", "--synthetic-bins", "32",
                  "--synthetic-epochs", "1")  # fmt: skip
    assert trained["best_epoch"] == 1
    assert 0 <= trained["val_accuracy"] <= 1
    evaluated = run(capsys, "evaluate", "--output", output, "--model", trained["version"])
    assert evaluated["metrics"]["n"] == manifest.to_pandas().split.eq("test").sum()
