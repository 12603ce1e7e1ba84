"""deployments/prefect.yaml against a real Prefect API: deployed with `prefect deploy`, its
schedules as declared, a run executed by a process worker; and `bincount serve`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bincount.core.storage import Location
from bincount.core.tables import read_table
from tests.builders import write_clean_bucket

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
BIN = Path(sys.executable).parent


def _declared() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


def _environment(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCOUNT_")}
    # The runner and the worker look for due runs every second instead of every 10 (Prefect's
    # defaults): the same code paths, less of the test spent waiting for a poll.
    polling = {"PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    return {**env, **polling, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def _deployments() -> dict[str, object]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    return {f"{flows[d.flow_id]}/{d.name}": d for d in found}


def _check_against_the_file(deployments: dict[str, object]) -> None:
    declared = _declared()
    by_name = {key.split("/")[1]: d for key, d in deployments.items()}
    assert set(declared) <= set(by_name)
    for name, spec in declared.items():
        deployment = by_name[name]
        schedules = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
        assert schedules == [(s["cron"], s["timezone"], True) for s in spec["schedules"]]
        assert deployment.parameters == (spec["parameters"] or {})
        limit = deployment.global_concurrency_limit
        assert (limit and limit.limit) == spec.get("concurrency_limit")


def test_the_deployments_file_declares_the_three_schedules_on_two_pools():
    declared = _declared()
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
        env=_environment(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            served = {k: d for k, d in _deployments().items() if d.updated >= started}
            if len(served) == len(_declared()):
                break
            time.sleep(1)
        _check_against_the_file(served)

        shutil.copytree(trained, tmp_path / "data", dirs_exist_ok=True)
        write_clean_bucket(tmp_path / "data" / "bucket", 3, start=400)
        output = str(tmp_path / "data" / "out")
        run = run_deployment(
            "refresh-labels/daily-ingest-validate",
            parameters={"source": str(tmp_path / "data" / "bucket"), "output": output},
            timeout=180,
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
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        for pool in ("bincount-cpu", "bincount-gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployed = subprocess.run(
        [BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE],
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployments = _deployments()
    assert {
        "score/nightly-scoring",
        "refresh-labels/daily-ingest-validate",
        "retrain/weekly-retrain",
    } <= set(deployments)
    _check_against_the_file(deployments)
    assert deployments["retrain/weekly-retrain"].work_pool_name == "bincount-gpu"
    assert deployments["score/nightly-scoring"].work_pool_name == "bincount-cpu"

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
        env=_environment(),
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

    for name, spec in _declared().items():
        path, _, function = spec["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        declared = spec["parameters"] or {}
        validated = flow.validate_parameters(declared)  # raises on an unknown or invalid one
        assert set(declared) <= set(inspect.signature(flow.fn).parameters), name
        assert set(declared) <= set(validated), name


def test_the_weekly_retrain_trains_the_gpu_recipe_and_refuses_a_cpu(prefect_api, tmp_path):
    import torch

    from bincount.model.config import RECIPES, TrainConfig
    from flows.retrain import retrain

    declared = _declared()["weekly-retrain"]
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
