"""deployments/prefect.yaml as an operator deploys it, for the tests that deploy it to a real
Prefect API (the session's harness or a server of their own): the file as declared, a client's
environment, `prefect deploy`, and the deployments the API then holds."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
BIN = Path(sys.executable).parent


def declared_deployments() -> dict[str, dict]:
    """The file's deployments by name, as declared."""
    return {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


def environment(**extra: str) -> dict[str, str]:
    """A Prefect client's environment (the CLI, a worker) against the current API."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCOUNT_")}
    # The runner and the worker look for due runs every second instead of every 10 (Prefect's
    # defaults): the same code paths, less of the test spent waiting for a poll.
    polling = {"PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    return {**env, **polling, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def deployments() -> dict[str, object]:
    """Every deployment the current API holds, by ``flow/deployment`` name."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    return {f"{flows[d.flow_id]}/{d.name}": d for d in found}


def deploy_the_file(*names: str) -> dict[str, object]:
    """`prefect deploy` of the deployments ``names`` (all of them when none is named) to the
    current API, after the process work pools they name; returns :func:`deployments`. A pool
    that exists is kept: an earlier test of the session may have made it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    specs = declared_deployments()
    pools = sorted({specs[name]["work_pool"]["name"] for name in names or specs})
    with get_client(sync_client=True) as client:
        for pool in pools:
            with suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    chosen = [part for name in names for part in ("--name", name)] or ["--all"]
    deployed = subprocess.run(
        [BIN / "prefect", "--no-prompt", "deploy", *chosen, "--prefect-file", PREFECT_FILE],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return deployments()


def check_against_the_file(found: dict[str, object]) -> None:
    """Every declared deployment is among ``found`` with its schedules, parameters and
    concurrency limit as the file declares them."""
    by_name = {key.split("/")[1]: d for key, d in found.items()}
    assert set(declared_deployments()) <= set(by_name)
    for name, spec in declared_deployments().items():
        deployment = by_name[name]
        schedules = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
        assert schedules == [(s["cron"], s["timezone"], True) for s in spec["schedules"]]
        assert deployment.parameters == (spec["parameters"] or {})
        limit = deployment.global_concurrency_limit
        assert (limit and limit.limit) == spec.get("concurrency_limit")
