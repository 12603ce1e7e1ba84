"""Serve every deployment of ``deployments/prefect.yaml`` from one process (one machine).

The YAML file stays the one place schedules and parameters are declared: ``prefect deploy``
reads it for work pools and workers, and :func:`served_deployments` reads it for ``serve``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

DEFAULT_PREFECT_FILE = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"


def served_deployments(prefect_file: str | Path | None = None) -> list[RunnerDeployment]:
    """The deployments of the file as runner deployments, with their schedules and limits."""
    path = Path(prefect_file or DEFAULT_PREFECT_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a deployments file at {path}")
    declared = yaml.safe_load(path.read_text(encoding="utf-8")).get("deployments") or []
    if not declared:
        raise ValueError(f"Expected deployments in {path}, but it declares none")
    return [_runner_deployment(spec) for spec in declared]


def _runner_deployment(spec: dict) -> RunnerDeployment:
    file_path, _, name = spec["entrypoint"].partition(":")
    module = importlib.import_module(file_path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    return flow.to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters") or {},
        schedules=[
            Cron(schedule["cron"], timezone=schedule.get("timezone"))
            for schedule in spec.get("schedules") or []
        ],
        concurrency_limit=spec.get("concurrency_limit"),
    )


def serve_deployments(prefect_file: str | Path | None = None) -> None:
    """Register the deployments and run their scheduled flow runs here until stopped."""
    serve(*served_deployments(prefect_file))
