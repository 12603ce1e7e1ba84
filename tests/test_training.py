"""The model half end to end on a few dozen real JPEG bins with a tiny model: cache (with a
corrupt image), train, evaluate, the promotion gate both ways, resume after a kill. Training
under torchrun is in test_torchrun.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.manifest import load_manifest
from bincount.model.config import TrainConfig
from bincount.model.metrics import counting_metrics
from bincount.model.registry import champion, decide_promotion, list_models
from bincount.testing.pipeline import run_pipeline, tiny_config
from bincount.testing.processes import kill_midway
from tests.builders import evaluation_report, write_bin, write_clean_bucket


@pytest.fixture
def manifest_output(tmp_path):
    """60 bins of real JPEGs (one of them corrupt), ingested, validated and in a manifest."""
    root = tmp_path / "bucket"
    write_clean_bucket(root, 60)
    write_bin(root, "70001", {"B1": 2})
    (root / "bin-images" / "70001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    source, output = Location(str(root)), Location(str(tmp_path / "out"))
    run = run_pipeline(source, output, policy="max:5", until="manifest")
    return str(tmp_path / "out"), run.manifest_version


def test_train_evaluate_promote_through_the_flows(prefect_api, settings_env, manifest_output):
    from flows.evaluate import evaluate
    from flows.promote import promote
    from flows.train import train

    output, manifest = manifest_output
    first = train(output=output, config=tiny_config(epochs=2, lr=1e-3))
    assert first["created"] and len(first["history"]) == 2
    for epoch in first["history"]:
        assert {"train_loss", "val_accuracy", "val_rmse", "images_per_second"} <= set(epoch)
        assert 0 <= epoch["data_wait_share"] <= 1

    quarantine = read_table(Location(output), "quarantine").to_pylist()
    assert [(r["stage"], r["image_id"], r["reason_code"]) for r in quarantine] == [
        ("images", "70001", "undecodable_image")
    ]

    decision = promote(output=output, model=first["version"])
    assert decision["promote"] and decision["reason"] == "no champion yet"
    assert champion(Location(output)).version == first["version"]
    # The new champion's input-drift reference, computed once at promotion, kept with it.
    kept = Location(output).read_parquet(f"models/{first['version']}/input-reference.parquet")
    assert kept.num_rows > 0 and kept.column("brightness").null_count == 0

    report = evaluate(output=output, model="champion")
    assert report.evaluation_set.manifest_version == manifest
    predictions = pq.read_table(report.predictions_uri).to_pylist()
    recomputed = counting_metrics(
        [p["predicted_count"] for p in predictions],
        [p["label"] for p in predictions],
        num_classes=6,
    )
    assert recomputed.accuracy == pytest.approx(report.metrics.accuracy)
    assert recomputed.rmse == pytest.approx(report.metrics.rmse)
    assert report.evaluation_set.size == len(predictions)

    again = train(output=output, config=tiny_config(epochs=2, lr=1e-3))
    assert again["version"] == first["version"] and not again["created"]

    second = train(output=output, config=tiny_config(lr=1e-3, seed=1))
    gate = promote(output=output, model=second["version"])
    expected = (gate["challenger_figures"]["accuracy"], -gate["challenger_figures"]["rmse"]) > (
        gate["champion_figures"]["accuracy"],
        -gate["champion_figures"]["rmse"],
    )
    assert gate["promote"] == expected
    assert champion(Location(output)).version == (
        second["version"] if expected else first["version"]
    )
    assert {m["version"] for m in list_models(Location(output))} == {
        first["version"],
        second["version"],
    }


def _report(version, accuracy, rmse, set_id="s1"):
    return evaluation_report(version, accuracy=accuracy, rmse=rmse, set_id=set_id)


def test_the_gate_both_ways():
    assert decide_promotion(_report("b", 0.8, 0.5), _report("a", 0.7, 0.4)).promote
    assert not decide_promotion(_report("b", 0.7, 0.5), _report("a", 0.8, 0.4)).promote
    tie_better = decide_promotion(_report("b", 0.8, 0.4), _report("a", 0.8, 0.5))
    assert tie_better.promote and "tied" in tie_better.reason
    assert not decide_promotion(_report("b", 0.8, 0.5), _report("a", 0.8, 0.5)).promote
    with pytest.raises(ValueError, match="same set"):
        decide_promotion(_report("b", 0.9, 0.1), _report("a", 0.1, 0.9, set_id="other"))


KILLABLE_TRAINING = """
import sys
from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.testing.pipeline import run_pipeline, tiny_config
output = Location(sys.argv[1])
source = Location(load_manifest(output, sys.argv[2])[1].source)
config = tiny_config(batch_size=4, epochs=int(sys.argv[3]))
run = run_pipeline(source, output, config=config, manifest_version=sys.argv[2], until="train",
                   workers=1)
print(run.training.resumed_from_epoch, len(run.training.history))
"""


def test_a_killed_training_resumes_where_it_stopped(manifest_output):
    output, manifest = manifest_output
    command = [sys.executable, "-c", KILLABLE_TRAINING, output, manifest, "6"]
    config = tiny_config(batch_size=4, epochs=6)
    version = config.for_manifest(load_manifest(Location(output), manifest)[1]).fingerprint(
        manifest
    )
    checkpoint = os.path.join(output, "models", version, "checkpoint.pt")
    kill_midway(
        command, progress=lambda: int(os.path.exists(checkpoint)), at_least=1, timeout_s=240
    )
    assert not os.path.exists(os.path.join(output, "models", version, "_complete.json"))

    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    resumed_from, epochs = map(int, finished.stdout.split())
    assert resumed_from >= 1 and epochs == 6
    history = json.loads(Path(output, "models", version, "metrics.json").read_text())
    assert [e["epoch"] for e in history["history"]] == [1, 2, 3, 4, 5, 6]


def test_search_space_parsing_and_sampling():
    from bincount.model.tuning import SearchSpace

    space = SearchSpace.parse("lr=0.001,0.003;loss=ce,ordinal;image_size=32")
    assert space.values == {"lr": [0.001, 0.003], "loss": ["ce", "ordinal"], "image_size": [32]}
    assert SearchSpace.parse('{"lr": [0.1]}').values == {"lr": [0.1]}
    base = TrainConfig(arch="mobilenet_v3_small")
    grid = space.trials(base, limit=None, seed=0)
    assert len(grid) == 4 and {(c.lr, c.loss) for c in grid} == {
        (0.001, "ce"),
        (0.001, "ordinal"),
        (0.003, "ce"),
        (0.003, "ordinal"),
    }
    assert space.trials(base, limit=2, seed=0) == space.trials(base, limit=2, seed=0)
    with pytest.raises(ValueError, match="Expected hyperparameters among"):
        SearchSpace.parse("momentum=0.9")


def test_tune_records_every_trial_and_promotes_the_best(prefect_api, settings_env, manifest_output):
    from flows.tune import tune

    output, _ = manifest_output
    result = tune(
        output=output,
        space="lr=0.001,0.004;loss=ce,ordinal",
        trials=3,
        config=tiny_config(),
    )
    table = pq.read_table(
        os.path.join(output, "tuning", f"study={result['study']}", "trials.parquet")
    )
    assert table.num_rows == 3 and set(table["status"].to_pylist()) == {"completed"}
    best = max(table.to_pylist(), key=lambda r: (r["val_accuracy"], -r["val_rmse"]))
    assert result["best"]["model_version"] == best["model_version"]
    assert result["promotion"]["challenger"] == best["model_version"]
    assert champion(Location(output)).version == best["model_version"]


def test_the_library_epoch_lines_reach_the_runs_logs():
    # Prefect attaches its handlers to the "bincount" logger but sets no level: without one
    # the epoch and progress lines (INFO) would never reach a run's log or the console.
    import tasks.runtime  # noqa: F401  (every task imports it)

    assert logging.getLogger("bincount.model.training").isEnabledFor(logging.INFO)


def test_the_rig_reads_the_shipped_defaults_and_one_tiny_config(monkeypatch):
    from bincount.core.settings import Settings
    from bincount.testing.pipeline import defaults

    monkeypatch.setenv("BINCOUNT_CHUNK_SIZE", "7")  # the environment never moves "the default"
    for name in ("chunk_size", "max_concurrency", "list_partitions", "max_expected_quantity"):
        assert getattr(defaults(), name) == Settings.model_fields[name].default
    assert defaults().chunk_size != 7
    assert tiny_config(seed=3) == TrainConfig(
        arch="mobilenet_v3_small", image_size=32, batch_size=16, epochs=1, seed=3
    )
    with pytest.raises(ValueError, match="Expected until to be one of manifest, cache"):
        run_pipeline(Location("unused-source"), Location("unused-output"), until="deploy")


def test_the_rig_imports_without_the_dev_extras():
    # The dev extras (moto's server, boto3, psutil) are refused as if not installed.
    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'moto', 'boto3', 'psutil', 'pytest', 'prefect'}:\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from bincount.testing.pipeline import run_pipeline, tiny_config\n"
        "print(tiny_config().arch)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["mobilenet_v3_small"]


def test_the_rig_promotes_only_a_first_champion(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    source, output = Location(str(tmp_path / "bucket")), Location(str(tmp_path / "out"))
    before = champion(output)
    manifest = load_manifest(output)[1].version
    with pytest.raises(ValueError, match="Expected an output without a champion"):
        run_pipeline(source, output, manifest_version=manifest)
    assert champion(output) == before  # the refusal moved nothing
    run = run_pipeline(source, output, manifest_version=manifest, until="evaluate")
    assert run.model_version == before.version and not run.training.created
    assert run.evaluation is not None and run.decision is None
    assert set(run.seconds) == {"cache", "train", "evaluate"}
