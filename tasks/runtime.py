"""What every task needs from the orchestrator: the run id and the resolved locations."""

from __future__ import annotations

import uuid

from prefect.runtime import flow_run

from bincount.settings import Settings, get_settings
from bincount.storage import Location


def current_run_id() -> str:
    """The Prefect flow run id, so every row written can be traced to its run in the UI."""
    return str(flow_run.id or uuid.uuid4())


def locations(source: str | None, output: str | None) -> tuple[Settings, Location, Location]:
    """Settings plus the source and output locations, with flow parameters taking precedence."""
    settings = get_settings()
    return settings, Location.source(settings, source), Location.output(settings, output)


def resolve_output(output: str | None) -> Location:
    """The output location alone, for steps that do not read the source bucket."""
    return Location.output(get_settings(), output)


def retry_unless(*permanent: type[BaseException]):
    """A retry condition that does not retry errors a retry cannot fix."""

    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except Exception:
            return True
        return False

    return condition
