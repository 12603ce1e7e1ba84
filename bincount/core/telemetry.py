"""The one place the platform's telemetry switches are set: no usage analytics from Prefect or
Great Expectations. The deployments' workers get the same from ``deployments/prefect.yaml``
(their environment)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

QUIET_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


def quiet(environ: MutableMapping[str, str] | None = None, *, force: bool = False) -> None:
    """Set the switches (before Prefect or GX is imported); a user's own values win unless
    ``force``."""
    environ = os.environ if environ is None else environ
    for name, value in QUIET_ENVIRONMENT.items():
        if force:
            environ[name] = value
        else:
            environ.setdefault(name, value)
