"""deployments/prefect.yaml against a real Prefect API: deployed with `prefect deploy`, its
schedules as declared, a run executed by a process worker; and `bincount serve`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from tests.builders import write_clean_bucket
from tests.deployhelpers import (
    BIN,
    check_against_the_file,
    declared_deployments,
    deploy_the_file,
    deployments,
    environment,
)


def test_the_deployments_file_declares_the_three_schedules_on_two_pools():
    declared = declared_deployments()
    assert {spec["entrypoint"] for spec in declared.values()} == {
        "flows/score.py:score",
        "flows/labels.py:refresh_labels",
        "flows/retrain.py:retrain",
        "flows/review.py:review",  # on demand: no schedule
        "flows/quarantine.py:quarantine",  # on demand: no schedule
    }
    pools = {name: spec["work_pool"]["name"] for name, spec in declared.items()}
    assert pools["weekly-retrain"] == "bincount-gpu"
    assert pools["nightly-scoring"] == pools["daily-ingest-validate"] == "bincount-cpu"
    assert declared["review-queue"]["schedules"] == declared["quarantine-view"]["schedules"] == []
    for spec in (spec for spec in declared.values() if spec["schedules"]):
        (schedule,) = spec["schedules"]
        assert schedule["timezone"] == "America/Los_Angeles" and schedule["cron"]


def test_serve_registers_every_deployment_and_runs_them(prefect_api, trained, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    started = datetime.now(UTC)
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [BIN / "bincount", "serve"],
        cwd=tmp_path,
        env=environment(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300  # it imports every flow: slow on a loaded machine
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            served = {k: d for k, d in deployments().items() if d.updated >= started}
            if len(served) == len(declared_deployments()):
                break
            time.sleep(1)
        check_against_the_file(served)

        shutil.copytree(trained, tmp_path / "data", dirs_exist_ok=True)
        write_clean_bucket(tmp_path / "data" / "bucket", 3, start=400)
        output = str(tmp_path / "data" / "out")
        run = run_deployment(
            "refresh-labels/daily-ingest-validate",
            parameters={"source": str(tmp_path / "data" / "bucket"), "output": output},
            timeout=400,
            poll_interval=1,
        )
        assert run.state.is_completed(), log.read_text()[-5000:]
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).state.is_completed()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert read_table(Location(output), "bins").num_rows == 43


def test_deploy_then_a_process_worker_runs_nightly_scoring(prefect_api, trained, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    found = deploy_the_file()
    assert {
        "score/nightly-scoring",
        "refresh-labels/daily-ingest-validate",
        "retrain/weekly-retrain",
    } <= set(found)
    check_against_the_file(found)
    assert found["retrain/weekly-retrain"].work_pool_name == "bincount-gpu"
    assert found["score/nightly-scoring"].work_pool_name == "bincount-cpu"

    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    write_clean_bucket(tmp_path / "bucket", 5, start=300)
    source, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    run = run_deployment(
        "score/nightly-scoring",
        parameters={"source": source, "output": output, "batch_size": 8},
        timeout=0,
    )
    worker = subprocess.run(
        [BIN / "prefect", "worker", "start", "--pool", "bincount-cpu", "--run-once"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    scores = read_table(Location(output), "scores")
    assert scores.num_rows == 45  # the 40 bins it was trained on and the 5 that arrived
    assert set(scores.column("run_id").to_pylist()) == {str(run.id)}


def test_every_declared_parameter_validates_against_its_flow():
    import importlib
    import inspect

    for name, spec in declared_deployments().items():
        path, _, function = spec["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        declared = spec["parameters"] or {}
        validated = flow.validate_parameters(declared)  # raises on an unknown or invalid one
        assert set(declared) <= set(inspect.signature(flow.fn).parameters), name
        assert set(declared) <= set(validated), name


def test_the_weekly_retrain_trains_the_gpu_recipe_and_refuses_a_cpu(prefect_api, tmp_path):
    import torch

    from bincount.model.config import TrainConfig
    from bincount.model.recipes import RECIPES
    from flows.retrain import retrain

    declared = declared_deployments()["weekly-retrain"]
    parameters = retrain.validate_parameters(declared["parameters"])
    config = parameters["config"]
    assert config == TrainConfig(recipe="gpu")  # every field the measured recipe's
    assert config.model_dump(include=set(RECIPES["gpu"])) == RECIPES["gpu"]
    assert config.for_device("cpu") == config  # no device swaps it for the cpu recipe
    assert parameters["require_gpu"] is True and declared["work_pool"]["name"] == "bincount-gpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal shows only where there is none")

    output = tmp_path / "out"
    state = retrain(**{**parameters, "output": str(output)}, return_state=True)
    assert state.is_failed(), state
    with pytest.raises(RuntimeError, match=r"Expected a CUDA GPU .*require_gpu=true.*refusing"):
        state.result()
    assert not output.exists()  # failed before any work: no manifest, no model
