"""The model half end to end on a few dozen real JPEG bins with a tiny model: cache (with a
corrupt image), train, evaluate, the promotion gate both ways, resume after a kill, and DDP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest
from bincount.data.validate import validate_bins
from bincount.model.config import TrainConfig
from bincount.model.metrics import counting_metrics
from bincount.model.registry import champion, decide_promotion, list_models
from tests.builders import evaluation_report, write_bin, write_clean_bucket

TINY = {"arch": "mobilenet_v3_small", "image_size": 32, "batch_size": 16}


@pytest.fixture
def manifest_output(tmp_path):
    """60 bins of real JPEGs (one of them corrupt), ingested, validated and in a manifest."""
    root = tmp_path / "bucket"
    write_clean_bucket(root, 60)
    write_bin(root, "70001", {"B1": 2})
    (root / "bin-images" / "70001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    source, output = Location(str(root)), Location(str(tmp_path / "out"))
    ingest_metadata(source, output)
    validate_bins(source, output, max_expected_quantity=250)
    summary = build_manifest(source, output, policy=CountPolicy.parse("max:5"))
    return str(tmp_path / "out"), summary.version


def test_train_evaluate_promote_through_the_flows(prefect_api, settings_env, manifest_output):
    from flows.evaluate import evaluate
    from flows.promote import promote
    from flows.train import train

    output, manifest = manifest_output
    first = train(output=output, config=TrainConfig(epochs=2, lr=1e-3, **TINY))
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

    again = train(output=output, config=TrainConfig(epochs=2, lr=1e-3, **TINY))
    assert again["version"] == first["version"] and not again["created"]

    second = train(output=output, config=TrainConfig(epochs=1, lr=1e-3, seed=1, **TINY))
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
from bincount.model.config import TrainConfig
from bincount.images.cache import build_image_cache
from bincount.data.manifest import load_manifest
from bincount.core.storage import Location
from bincount.model.training import train_model
output = Location(sys.argv[1])
rows, details = load_manifest(output, sys.argv[2])
build_image_cache(Location(details.source), output, rows, manifest_version=sys.argv[2],
                  size=32, workers=1)
config = TrainConfig(
    arch="mobilenet_v3_small", image_size=32, batch_size=4, epochs=int(sys.argv[3])
)
result = train_model(output, config, manifest_version=sys.argv[2])
print(result.resumed_from_epoch, len(result.history))
"""


def test_a_killed_training_resumes_where_it_stopped(manifest_output):
    output, manifest = manifest_output
    command = [sys.executable, "-c", KILLABLE_TRAINING, output, manifest, "6"]
    process = subprocess.Popen(command)
    config = TrainConfig(arch="mobilenet_v3_small", image_size=32, batch_size=4, epochs=6)
    version = config.for_manifest(load_manifest(Location(output), manifest)[1]).fingerprint(
        manifest
    )
    checkpoint = os.path.join(output, "models", version, "checkpoint.pt")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not os.path.exists(checkpoint):
        assert process.poll() is None, "training ended before the kill"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(output, "models", version, "_complete.json"))

    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    resumed_from, epochs = map(int, finished.stdout.split())
    assert resumed_from >= 1 and epochs == 6
    history = json.loads(Path(output, "models", version, "metrics.json").read_text())
    assert [e["epoch"] for e in history["history"]] == [1, 2, 3, 4, 5, 6]


def test_distributed_data_parallel_with_two_cpu_processes(manifest_output):
    output, _ = manifest_output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BINCOUNT_OUTPUT": output}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "flows.cli",
        "train",
        "--arch=mobilenet_v3_small",
        "--image-size=32",
        "--batch-size=8",
        "--epochs=1",
        "--device=cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (model,) = list_models(Location(output))
    lineage = json.loads(Path(output, "models", model["version"], "lineage.json").read_text())
    assert lineage["world_size"] == 2 and lineage["device"] == "cpu"


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
        config=TrainConfig(epochs=1, arch="mobilenet_v3_small", image_size=32, batch_size=16),
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
